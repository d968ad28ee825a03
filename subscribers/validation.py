"""Cleaning what people type: addresses, names, locales and tags.

Every function here either returns the canonical form that gets stored or raises a
:class:`SubscriberDataError` whose text says, in plain words, what is wrong. Nothing here touches
the database, so the CSV import can validate 100,000 rows before it opens a transaction.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from newsletter.errors import NewsletterError

DEFAULT_LOCALE = "zh-CN"
MAX_NAME_LENGTH = 200
MAX_TAG_LENGTH = 100  # the width of ``tags.name``
MAX_TAGS = 50
MAX_LOCALE_LENGTH = 16  # the width of ``subscribers.locale``

# language ("zh", "en", "yue"), then optional script ("Hans"), region ("CN", "419") and variants.
# Deliberately a short BCP-47 subset: enough to pick a template language, nothing more.
_LOCALE = re.compile(
    r"(?P<language>[A-Za-z]{2,3})"
    r"(?:[-_](?P<script>[A-Za-z]{4}))?"
    r"(?:[-_](?P<region>[A-Za-z]{2}|[0-9]{3}))?"
    r"(?P<variants>(?:[-_][A-Za-z0-9]{5,8})*)"
)
_LINE_BREAKS = frozenset("\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029")
_TAG_SEPARATORS = re.compile(r"[;,]")
# A subset of RFC 5322 dot-atom @ an ASCII host name: what nearly every real address looks like.
_SIMPLE_ADDRESS = re.compile(
    r"([A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*)@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)"
)
_EMAIL_MAX_LENGTH = 254  # RFC 5321 path limit, as email-validator applies it
_INVISIBLE = frozenset("\ufeff\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class SubscriberDataError(NewsletterError):
    """A value for a subscriber (address, name, locale, tag) was refused."""


class InvalidEmail(SubscriberDataError):
    """The text is not an e-mail address we can send to."""


class InvalidName(SubscriberDataError):
    """A display name holds line breaks or control characters, or is too long."""


class InvalidLocale(SubscriberDataError):
    """A locale is not of the form ``zh-CN`` / ``en``."""


class InvalidTag(SubscriberDataError):
    """A tag is empty, too long, or holds control characters."""


def normalise_email(raw: str) -> str:
    """The canonical, stored form of an address, used to fold duplicates.

    Syntax is checked by email-validator without any DNS lookup (imports must work offline and
    fast). The domain comes back lowercased (and IDNA-normalised) by email-validator; we lowercase
    the local part too. RFC 5321 allows a mailbox to be case-sensitive, but no provider our
    subscribers use is, while people type ``Zhang.Wei@`` and ``zhang.wei@`` for the same mailbox:
    treating them as two subscribers would mail one person twice, which SPEC forbids.

    Raises :class:`InvalidEmail` with a message such as
    ``'foo@' is not a valid address: there must be something after the @-sign``.
    """
    text = raw.strip()
    if not text:
        raise InvalidEmail("the address is empty")
    # Fast path, same answer (tests compare it with the full check): for a plain ASCII address,
    # email-validator returns a dot-atom local part unchanged, and two thirds of its work is
    # the domain, which it checks independently of the local part. An import of 100,000 rows
    # has a few hundred distinct domains, so checking each domain once saves seconds.
    simple = _SIMPLE_ADDRESS.fullmatch(text)
    if simple is not None:
        local, domain = simple.group(1, 2)
        checked_domain = _checked_domain(domain)
        if checked_domain is not None:
            normal_domain, domain_bytes = checked_domain
            if max(len(text), len(local) + 1 + domain_bytes) <= _EMAIL_MAX_LENGTH:
                return f"{local.lower()}@{normal_domain}"
    return _validated(text)


def _validated(text: str) -> str:
    """``normalise_email`` by email-validator alone (the reference for the fast path)."""
    try:
        checked = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidEmail(f"{text!r} is not a valid address: {_plain(str(exc))}") from None
    return f"{checked.local_part.lower()}@{checked.domain}"


@lru_cache(maxsize=4096)
def _checked_domain(domain: str) -> tuple[str, int] | None:
    """A domain email-validator accepts, normalised, with the UTF-8 length of its longer form
    (Unicode or IDNA ASCII: email-validator limits both); None if it does not accept it."""
    try:
        probe = validate_email(f"x@{domain}", check_deliverability=False)
    except EmailNotValidError:
        return None  # the full check of the real address produces the exact message
    return probe.domain, max(len(probe.domain.encode()), len(probe.ascii_domain))


def _plain(message: str) -> str:
    """email-validator's sentence, lowercased at the start and without the final period."""
    message = message.strip().rstrip(".")
    return message[:1].lower() + message[1:] if message else "unknown reason"


def _control_characters(text: str) -> list[str]:
    """Characters that have no business in a name or tag: C0/C1 controls (tab excepted, it
    counts as a space), lone surrogates, stray byte-order marks and bidi overrides (used to
    make text display differently from what it is).

    Other format characters stay allowed: zero-width joiners are part of emoji and of scripts.
    """
    if text.isprintable():  # the common case, checked in C: no Cc/Cf/Cs/line separators at all
        return []
    return [
        ch
        for ch in text
        if (ch != "\t" and unicodedata.category(ch) in {"Cc", "Cs"}) or ch in _INVISIBLE
    ]


def _collapse_spaces(text: str) -> str:
    # str.split() with no argument splits on every Unicode space, including U+3000 (ideographic).
    return " ".join(text.split())


def normalise_name(raw: str | None) -> str:
    """A display name: trimmed, inner runs of spaces collapsed to one; may be empty.

    Names end up in the ``To:`` header and in the greeting, so a line break (header injection,
    or a spreadsheet cell with Alt+Enter) or another control character is refused rather than
    silently rewritten: the organizer should see and fix such a row.
    """
    if raw is None:
        return ""
    text = raw.strip()
    if not text.isprintable() and any(ch in _LINE_BREAKS for ch in text):
        raise InvalidName(f"the name {text!r} contains a line break")
    bad = _control_characters(text)
    if bad:
        raise InvalidName(f"the name {text!r} contains a control character ({bad[0]!r})")
    name = _collapse_spaces(text)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(
            f"the name is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed"
        )
    return name


@lru_cache(maxsize=256)
def normalise_locale(raw: str | None, default: str = DEFAULT_LOCALE) -> str:
    """A locale like ``zh-CN`` or ``en`` in canonical case; ``default`` when ``raw`` is blank.

    ``zh_cn`` becomes ``zh-CN`` and ``zh-hans-cn`` becomes ``zh-Hans-CN`` (BCP 47 case
    conventions), so templates can be chosen by exact match.
    """
    text = (raw or "").strip()
    if not text:
        return default
    match = _LOCALE.fullmatch(text)
    if match is None or len(text) > MAX_LOCALE_LENGTH:
        raise InvalidLocale(f"{text!r} is not a locale (expected something like 'zh-CN' or 'en')")
    parts = [match["language"].lower()]
    if match["script"]:
        parts.append(match["script"].title())
    if match["region"]:
        parts.append(match["region"].upper())
    parts.extend(v.lower() for v in re.split(r"[-_]", match["variants"]) if v)
    return "-".join(parts)


def normalise_tag(raw: str) -> str:
    """One tag: trimmed, spaces collapsed, lowercased.

    Tags pick a campaign's audience (``campaign create --tag zju``), so ``ZJU`` and ``zju`` must be
    the same tag; lowercasing on the way in is simpler and safer than case-insensitive lookups in
    every query. Callers filtering by tag should pass their input through this function too.
    """
    text = raw.strip()
    if not text.isprintable() and (
        _control_characters(text) or any(ch in _LINE_BREAKS for ch in text)
    ):
        raise InvalidTag(f"the tag {text!r} contains a control character or line break")
    tag = _collapse_spaces(text).lower()
    if not tag:
        raise InvalidTag("a tag is empty")
    if _TAG_SEPARATORS.search(tag):
        raise InvalidTag(f"the tag {tag!r} contains ';' or ',' (they separate tags)")
    if len(tag) > MAX_TAG_LENGTH:
        raise InvalidTag(f"the tag {tag[:20]!r}… is longer than {MAX_TAG_LENGTH} characters")
    return tag


def parse_tags(raw: str | Iterable[str] | None) -> list[str]:
    """Tags from a cell such as ``"zju; federated,CV"`` or from several ``--tag`` options.

    Splits on ``;`` and ``,``, skips empty pieces (a trailing ``;`` is common), normalises each
    with :func:`normalise_tag` and drops repeats, keeping the first-seen order.
    """
    if raw is None:
        return []
    if isinstance(raw, str):
        return list(_parse_tag_cell(raw))
    return list(_parse_tag_cell(";".join(raw)))


@lru_cache(maxsize=4096)
def _parse_tag_cell(cell: str) -> tuple[str, ...]:
    # Cached: a list of 100,000 rows repeats a few dozen distinct tag cells.
    tags: dict[str, None] = {}  # an ordered set
    for part in _TAG_SEPARATORS.split(cell):
        if part.strip():
            tags.setdefault(normalise_tag(part), None)
    if len(tags) > MAX_TAGS:
        raise InvalidTag(f"{len(tags)} tags given; at most {MAX_TAGS} are allowed")
    return tuple(tags)
