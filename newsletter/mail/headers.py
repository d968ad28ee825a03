"""Header encoding for the message builder: RFC 5322 folding and RFC 2047 encoded-words.

We write headers ourselves instead of using ``email.header.Header`` / ``email.policy``
because those run per recipient far too slowly and CPython's folder has had bugs with long
CJK headers (lines over 78 characters, words split inside a character). The rules here:

* Every value is first *cleaned*: control characters, CR and LF above all, become spaces,
  so no value (a subscriber's name, say) can end a header line and start another one.
* ASCII values stay readable: an unstructured value (Subject) is written as is, a display
  name as atoms or, when it holds specials (``,``, ``"``, ``.``, …), as a quoted-string.
* Anything else — non-ASCII text, text that looks like an encoded-word, a word too long to
  fold — becomes ``=?utf-8?b?…?=`` encoded-words: each at most 75 characters, each holding
  whole UTF-8 characters only, each on a line of at most 78 characters.
* Lines are folded with CRLF + space at existing spaces only (between encoded-words the
  space is not part of the value, so folding there is free).
"""

from __future__ import annotations

import binascii
import re

MAX_LINE = 78  # RFC 5322 2.1.1: lines SHOULD be at most 78 characters, CRLF excluded
MAX_ENCODED_WORD = 75  # RFC 2047 2
_EW_PREFIX = "=?utf-8?b?"
_EW_OVERHEAD = len(_EW_PREFIX) + len("?=")

# C0 controls (CR, LF, TAB, NUL, …), DEL, C1 controls (NEL) and the Unicode line and paragraph
# separators: any of them could break a header line or confuse a reader, so all become spaces.
_CONTROLS = {c: " " for c in (*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029)}
_SPACES = re.compile(" {2,}")
# RFC 5322 atext: what a display-name word may hold without quoting.
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\- ]*")
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*")
# RFC 6531 3.3: atext extended with any non-ASCII character (controls and separators excepted).
_UTF8_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u00a0-\u2027\u202a-\U0010ffff]"
_UTF8_LOCAL_PART = re.compile(rf"{_UTF8_ATEXT}+(?:\.{_UTF8_ATEXT}+)*")
_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
)


def clean(value: str) -> str:
    """``value`` with every control character (CR and LF included) replaced by a space, stripped.

    This is what makes header injection through a subscriber's name impossible.
    """
    return value.translate(_CONTROLS).strip()


def _capacity(room: int) -> int:
    """How many UTF-8 bytes fit into one encoded-word of at most ``room`` characters."""
    return (min(room, MAX_ENCODED_WORD) - _EW_OVERHEAD) // 4 * 3


def _encoded_word(text: str) -> str:
    return _EW_PREFIX + binascii.b2a_base64(text.encode("utf-8"), newline=False).decode() + "?="


def encoded_words(text: str, first_room: int = MAX_ENCODED_WORD) -> list[str]:
    """``text`` as B-encoded-words, greedily filled, never splitting a UTF-8 character.

    The first word is at most ``first_room`` characters long (what is left on the header's
    first line), or a full word meant for the next line when not even one character fits
    there; the following ones are at most 75 characters, to sit after a folding space.
    Adjacent encoded-words decode to the concatenation of their texts (RFC 2047 6.2), so
    the split points carry no meaning.
    """
    if not text:
        return []
    capacity = _capacity(first_room)
    words: list[str] = []
    start = 0
    size = 0
    for index, char in enumerate(text):
        code = ord(char)
        width = 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
        if size + width > capacity:
            if size:  # else not even this character fits the first line: start on the next
                words.append(_encoded_word(text[start:index]))
            start, size, capacity = index, 0, _capacity(MAX_ENCODED_WORD)
        size += width
    words.append(_encoded_word(text[start:]))
    return words


def fold(name: str, tokens: list[str]) -> str:
    """``Name: token token …`` folded into lines of at most 78 characters (CRLF between).

    Tokens are separated by one space, which is where a line may be folded; an empty token
    stands for a run of spaces and is never folded before (a line of spaces only is
    forbidden). A token longer than a line stays whole on its own line: callers avoid that
    by encoding such values.
    """
    lines: list[str] = []
    head = name + ":"
    line = head
    for token in tokens:
        if (
            token
            and len(line) + 1 + len(token) > MAX_LINE
            # Right after "Name:" fold only if that makes the token fit on its own line.
            and (line != head or len(token) < MAX_LINE)
        ):
            lines.append(line)
            line = ""
        line += " " + token
    lines.append(line)
    return "\r\n".join(lines)


def _fits(tokens: list[str], first_room: int) -> bool:
    return bool(tokens) and len(tokens[0]) <= first_room and all(len(t) < MAX_LINE for t in tokens)


def unstructured(name: str, value: str) -> str:
    """An unstructured header (``Subject``) with ``value`` cleaned, folded and encoded as needed."""
    text = clean(value)
    first_room = MAX_LINE - len(name) - 2
    if text.isascii() and "=?" not in text:
        tokens = text.split(" ")
        if _fits(tokens, first_room):
            return fold(name, tokens)
    # "=?" in plain text would be decoded by readers as an encoded-word: encode it instead.
    return fold(name, encoded_words(text, first_room))


def phrase(display_name: str, first_room: int) -> list[str]:
    """A display name as header tokens: atoms, a quoted-string, or encoded-words.

    Runs of spaces collapse to one (they carry no meaning in a name), so that what a reader
    decodes is exactly ``clean(display_name)`` with single spaces.
    """
    text = _SPACES.sub(" ", clean(display_name))
    if not text:
        return []
    if text.isascii() and "=?" not in text:
        if _ATOM_PHRASE.fullmatch(text):
            tokens = text.split(" ")
        else:
            # RFC 5322 specials (",", ".", "<", "@", quotes, …): a quoted-string, in which
            # backslash and double quote are escaped; its spaces are still folding points.
            quoted = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
            tokens = quoted.split(" ")
        if _fits(tokens, first_room):
            return tokens
    return encoded_words(text, first_room)


def addr_spec(address: str, *, utf8: bool = False) -> str:
    """``address`` checked to be a plain ``local@domain`` usable in headers and SMTP.

    The domain is IDNA-encoded when it is not ASCII. A non-ASCII local part needs SMTPUTF8
    (RFC 6531) and UTF-8 headers (RFC 6532): accepted only with ``utf8=True``, and then the
    result is not ASCII (see :func:`needs_smtputf8`). Raises ``ValueError`` with a reason
    that does not repeat the address (error texts end up in logs, addresses must not).
    """
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain:
        raise ValueError("not an address of the form local@domain")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError("the domain is not a valid international domain name") from None
    if not (_UTF8_LOCAL_PART if utf8 else _LOCAL_PART).fullmatch(local):
        raise ValueError(
            "the local part holds characters this sender cannot put in a header"
            " (spaces, quotes, line breaks or non-ASCII)"
        )
    if not _DOMAIN.fullmatch(domain) or len(local) + 1 + len(domain) > 254:
        raise ValueError("the domain is not a valid host name")
    return f"{local}@{domain}"


def needs_smtputf8(address: str) -> bool:
    """Whether an address from :func:`addr_spec` can travel only with SMTPUTF8."""
    return not address.isascii()


def address_header(name: str, display_name: str, address: str) -> str:
    """``From:``/``To:`` header for one mailbox; ``address`` must come from :func:`addr_spec`."""
    tokens = phrase(display_name, MAX_LINE - len(name) - 2)
    if not tokens:
        return fold(name, [address])
    return fold(name, [*tokens, f"<{address}>"])
