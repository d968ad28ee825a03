"""Secrets kept out of messages and logs: URLs rendered without their passwords.

Two functions, one rule:

* :func:`redact_url` renders one URL (mail, database, broker) with its password replaced by
  ``***`` and the values of secret-looking query parameters (``password=``, ``token=``,
  ``key=``, …) replaced too;
* :func:`redact_text` does the same for every URL found inside a text (an exception's message,
  a log line).

Both work on *malformed* URLs as well, because that is exactly when a URL ends up in an error
message: a password holding an unencoded ``/``, ``#``, ``?`` or ``@`` makes ``urllib`` see a
different host, port or path, and its ``.password`` is then wrong or ``None``. Whenever the
text after the authority still holds an ``@``, the whole user-info up to the last ``@`` is
hidden (``smtp://***@host``): showing too little is a nuisance, showing a password is a leak.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "redact_text", "redact_url", "userinfo_is_malformed"]

MASK = "***"

# scheme "://" — RFC 3986 scheme characters.
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://")

# A well-formed host[:port]: a name or address, or a bracketed IPv6 literal, and digits.
_HOST_PORT = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[^:@\[\]]*)(?::\d*)?$")

# Query parameters whose values are secrets, matched on the lower-cased name.
_SECRET_NAME = re.compile(
    r"(pass|pwd|secret|token|key|auth|credential|signature|sig$|session)", re.IGNORECASE
)

# A URL inside a text: a scheme, "://", then everything up to white space. Trailing
# punctuation that usually closes a quotation or a sentence is given back afterwards.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S+")
_TRAILING = "'\"`,;:.!?)]}>"


def redact_url(url: str) -> str:
    """``url`` fit for a message or a log: no password, no secret query values.

    ``smtp://user:secret@host:587`` becomes ``smtp://user:***@host:587``; a URL whose password
    holds an unencoded ``/ # ? @`` (so that parsers misread it) becomes ``smtp://***@host…``,
    the whole user-info hidden. ``?password=…&token=…&key=…`` values become ``***``. A URL
    without credentials is returned unchanged; the function never raises.
    """
    match = _SCHEME.match(url)
    if match is None:
        return _redact_query(url)
    scheme, rest = match.group("scheme"), url[match.end() :]
    authority, after = _split_authority(rest)

    if "@" in after and scheme.lower() != "file":
        # An "@" past the authority: a password (or user name) held a "/", "?" or "#" that
        # was not percent-encoded. The real separator is the last "@"; hide everything
        # before it.
        cut = rest.rindex("@")
        host_and_more = rest[cut + 1 :]
        host, tail = _split_authority(host_and_more)
        return f"{scheme}://{MASK}@{host}{_redact_query(tail)}"

    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        # A user name alone (redis://token@host) may itself be the secret; only the
        # "user:password" form lets us show who without showing how.
        shown = f"{user}:{MASK}" if colon else MASK
        return f"{scheme}://{shown}@{host}{_redact_query(after)}"

    if not _HOST_PORT.match(authority):
        # "user:pa" with no "@" at all: a password cut short by a "/" or "#", with no host.
        name, _, _ = authority.partition(":")
        return f"{scheme}://{name}:{MASK}"

    return f"{scheme}://{authority}{_redact_query(after)}"


def userinfo_is_malformed(url: str) -> bool:
    """True when ``url``'s user name or password holds an unencoded ``/ # ? @`` (or its
    host part cannot be a ``host:port``), so that URL parsers misread where the host is.

    Such a URL must be refused with its own message: the parser's complaint ("port could not
    be cast to integer value as 'pa'") would quote a piece of the password.
    """
    match = _SCHEME.match(url)
    if match is None or match.group("scheme").lower() == "file":
        return False
    authority, after = _split_authority(url[match.end() :])
    if "@" in after:
        return True
    return "@" not in authority and not _HOST_PORT.match(authority)


def redact_text(text: str) -> str:
    """``text`` with every URL in it passed through :func:`redact_url`.

    For exception messages and log lines, which may quote a URL (``'smtp://u:p@h'``) in the
    middle of other words.
    """
    if "://" not in text:
        return text  # the common case, kept cheap for a log filter
    return _URL_IN_TEXT.sub(_redact_match, text)


def _redact_match(match: re.Match[str]) -> str:
    found = match.group(0)
    stripped = found.rstrip(_TRAILING)
    return redact_url(stripped) + found[len(stripped) :]


def _split_authority(rest: str) -> tuple[str, str]:
    """``rest`` (what follows ``scheme://``) split where the authority ends."""
    end = len(rest)
    for stop in "/?#":
        position = rest.find(stop)
        if position != -1:
            end = min(end, position)
    return rest[:end], rest[end:]


def _redact_query(tail: str) -> str:
    """``tail`` (path, query, fragment) with the values of secret query parameters hidden."""
    path, question, query = tail.partition("?")
    if not question:
        return tail
    query, hash_, fragment = query.partition("#")
    pairs = []
    for pair in query.split("&"):
        name, equals, value = pair.partition("=")
        if equals and value and _SECRET_NAME.search(name):
            value = MASK
        pairs.append(f"{name}{equals}{value}")
    return f"{path}?{'&'.join(pairs)}{hash_}{fragment}"
