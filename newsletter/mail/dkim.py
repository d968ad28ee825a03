"""DKIM signatures on every outgoing mail (RFC 6376; Ed25519 per RFC 8463).

With ``NEWSLETTER_DKIM_SELECTOR`` and ``NEWSLETTER_DKIM_PRIVATE_KEY`` (a PEM file) both set,
:func:`signer_for` gives the process's :class:`DkimSigner`; the transports sign each message
as they hand it over (:class:`newsletter.mail.transports.SigningTransport`), the one place
every outgoing message's bytes pass, whichever builder made them. ``d=`` is the mail domain
(``settings.sender_domain``: the From address's domain unless ``MAIL_DOMAIN`` says
otherwise), so the signature aligns with From for DMARC.

The key is read and checked once per process (:func:`signer_for` is cached), by whoever
first asks: commands that send ask before they change anything, so a missing, unreadable,
encrypted or too-short key is a one-line :class:`ConfigurationError` naming the file, never a
campaign paused at its first message. The check ends with a test signature verified by
dkimpy's verifier against the public key that :meth:`DkimSigner.dns_record` publishes.

Who does what: dkimpy parses the header block, canonicalizes the signed fields (relaxed),
selects them for ``h=`` and folds the DKIM-Signature field, exactly as its ``DKIM.sign``
does (tests/test_dkim.py compares our field with ``dkim.sign``'s byte for byte). The key and
the signature are the ``cryptography`` package's (OpenSSL): the PEM is loaded once with
``load_pem_private_key`` and the SHA-256 of the signed fields is signed with RSA PKCS#1 v1.5
(``Prehashed``) or Ed25519 (RFC 8463 signs that same hash). dkimpy's own RSA is Python's
``pow`` (two 1024-bit exponentiations, CRT), ~8 ms a signature for 2048 bits and not
constant-time, with no blinding; OpenSSL's takes ~0.3 ms and is blinded. One loader and
one signing path for both algorithms, so no hand-written key parsing; PyNaCl stays only as
dkimpy's Ed25519 verifier.

Cost (benchmarks/README.md, "Signing"), on the 2-core development VM: RSA-2048 ~0.5 ms a
message (OpenSSL's signature ~0.3 ms of it; dkimpy's own RSA took ~8 ms), Ed25519 ~0.2 -
0.3 ms (the signature 35 µs). The rest, ~175 µs for either, is the body's SHA-256 (~55 µs
for 87 KB) and dkimpy's Python: the header parse, the relaxed canonicalization of the signed
fields and two folds. A million RSA-signed mails cost ~9 core-minutes of signing.

The body hash: relaxed body canonicalization (RFC 6376 3.4.4) changes only runs of spaces and
tabs and trailing empty lines. Our bodies are base64 lines and MIME headers with single
spaces, so when the body holds no tab, no space followed by a space or a line end, and ends
in exactly one CRLF, it *is* its relaxed form and is hashed as it is; any other body goes
through dkimpy's canonicalization (two regular expressions over the whole body, ~2 ms).
Only the header block goes through dkimpy's parser (its ``sign`` splits the whole ~70 KB
body into lines and joins them again).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import dkim  # type: ignore[import-untyped]  # dkimpy ships no type hints
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import (  # type: ignore[import-untyped]
    CanonicalizationPolicy,
    Relaxed,
)

from newsletter.config import Settings
from newsletter.errors import ConfigurationError

__all__ = ["SIGNED_HEADERS", "DkimSigner", "load_signer", "relaxed_body", "signer_for"]

#: The header fields signed when present, in this order. Each is listed twice in ``h=``: its
#: one occurrence (our builders write each once) and once more ("oversigned", RFC 6376
#: 8.15), so that nobody can add a second From or Subject after signing.
SIGNED_HEADERS: tuple[bytes, ...] = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"mime-version",
    b"content-type",
    b"auto-submitted",
)

Algorithm = Literal["rsa", "ed25519"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*")
_FIELD_NAME = b"DKIM-Signature"
_PKCS1 = padding.PKCS1v15()
_PREHASHED = Prehashed(hashes.SHA256())  # we hash the fields; OpenSSL only signs the hash
log = logging.getLogger(__name__)
_quiet = logging.getLogger("newsletter.mail.dkim.dkimpy")  # dkimpy logs per call at debug


_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


def relaxed_body(body: bytes) -> bytes:
    """``body`` in relaxed canonical form (RFC 6376 3.4.4): itself when nothing would change
    (no tab, no space followed by a space or a line end, one CRLF at the end), else dkimpy's
    canonicalization of it."""
    if _is_relaxed(body):
        return body
    canonical: bytes = Relaxed.canonicalize_body(body)
    return canonical


def _is_relaxed(body: bytes) -> bool:
    if not body.endswith(b"\r\n") or body == b"\r\n" or body.endswith(b"\r\n\r\n"):
        return False  # an empty body's relaxed form is empty; trailing empty lines go
    if b"\t" in body:
        return False
    # Spaces are rare in our bodies (base64 has none; a few in the MIME part headers): going
    # from one to the next with find (memchr) is ~5 µs for 90 KB, where searching for the
    # two-byte patterns "  " and " \r" costs ~375 µs.
    find = body.find
    at = find(b" ")
    while at >= 0:
        after = body[at + 1 : at + 2]
        if after == b" " or after == b"\r":
            return False
        at = find(b" ", at + 1)
    return True


@dataclass(frozen=True)
class DkimSigner:
    """Signs finished messages for one selector and domain with one key (made by
    :func:`load_signer`); thread-safe: the key object is immutable and OpenSSL signs with
    it from any thread, everything else is built per call."""

    selector: str
    domain: str
    algorithm: Algorithm
    key_bits: int
    _key: PrivateKey
    _public: str  # the p= of the DNS record, base64

    def __repr__(self) -> str:
        return (
            f"DkimSigner(selector={self.selector!r}, domain={self.domain!r},"
            f" algorithm={self.algorithm!r})"
        )

    @property
    def record_name(self) -> str:
        """Where the public key is published: ``{selector}._domainkey.{domain}``."""
        return f"{self.selector}._domainkey.{self.domain}"

    def dns_record(self) -> str:
        """The TXT record's text (one string; DNS splits it in 255-byte pieces)."""
        return f"v=DKIM1; k={self.algorithm}; p={self._public}"

    def signature(self, data: bytes) -> bytes:
        """The ``DKIM-Signature:`` field (ending in CRLF) for the message ``data``.

        The field dkimpy's ``DKIM.sign`` writes for relaxed/relaxed and our ``h=`` (the same
        tags in the same order, folded by dkimpy), its signature made by OpenSSL.
        """
        end = data.find(b"\r\n\r\n")
        if end < 0:
            raise ValueError("a message to sign needs a header block and a body")
        algorithm = b"rsa-sha256" if self.algorithm == "rsa" else b"ed25519-sha256"
        headers, _ = dkim.rfc822_parse(data[: end + 4])
        present = {name.lower() for name, _ in headers}
        include = [name for name in SIGNED_HEADERS if name in present]
        include += include  # the oversigning (see SIGNED_HEADERS)
        domain = self.domain.encode("ascii")
        fields = [
            (b"v", b"1"),
            (b"a", algorithm),
            (b"c", b"relaxed/relaxed"),
            (b"d", domain),
            (b"i", b"@" + domain),
            (b"q", b"dns/txt"),
            (b"s", self.selector.encode("ascii")),
            (b"t", str(int(time.time())).encode("ascii")),
            (b"h", b" : ".join(include)),
            (b"bh", base64.b64encode(hashlib.sha256(relaxed_body(data[end + 4 :])).digest())),
            (b"b", b"0" * 60),  # dkimpy's placeholder: b= folds onto lines of its own
        ]
        # What dkimpy's DKIM.gen_header does, with the signature made by OpenSSL: the field
        # is folded with the placeholder, hashed with b= empty after the signed fields (each
        # relaxed, h= order, the last occurrence first), then b= is filled and folded again.
        folded = dkim.fold(b"; ".join(b"=".join(f) for f in fields), namelen=len(_FIELD_NAME))
        unsigned = (_FIELD_NAME, b" " + dkim.RE_BTAG.sub(b"\\1", folded))
        hasher = hashlib.sha256()
        canonical = _RELAXED.canonicalize_headers(headers)
        dkim.hash_headers(hasher, _RELAXED, canonical, include, unsigned, dict(fields))
        fields[-1] = (b"b", base64.b64encode(self._sign_digest(hasher.digest())))
        value: bytes = dkim.fold(
            b"; ".join(b"=".join(f) for f in fields) + b"\r\n", namelen=len(_FIELD_NAME)
        )
        return _FIELD_NAME + b": " + value

    def _sign_digest(self, digest: bytes) -> bytes:
        """The signature of the SHA-256 ``digest`` of the signed header fields."""
        if isinstance(self._key, rsa.RSAPrivateKey):
            return self._key.sign(digest, _PKCS1, _PREHASHED)
        return self._key.sign(digest)  # RFC 8463 3: Ed25519 (PureEdDSA) of the SHA-256 hash

    def sign(self, data: bytes) -> bytes:
        """``data`` with its DKIM-Signature field put first."""
        return self.signature(data) + data


def load_signer(selector: str, domain: str, path: Path) -> DkimSigner:
    """Read the PEM key at ``path`` and check it; ConfigurationError naming the file.

    Accepted: RSA of at least 2048 bits (PKCS#1 ``RSA PRIVATE KEY`` or PKCS#8 ``PRIVATE
    KEY``, as ``openssl genrsa`` / ``genpkey`` write them) and Ed25519 (PKCS#8, ``openssl
    genpkey -algorithm ed25519``), unencrypted.
    """
    where = f"NEWSLETTER_DKIM_PRIVATE_KEY={str(path)!r}"
    if not _SELECTOR.fullmatch(selector) or len(selector) > 63:
        raise ConfigurationError(
            f"NEWSLETTER_DKIM_SELECTOR {selector!r} is not a DNS label (letters, digits, -)"
        )
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"{where}: cannot read the DKIM key: {exc.strerror or exc}"
        ) from None
    found = _PEM_LABEL.search(text)
    if found is None:
        raise ConfigurationError(f"{where}: not a PEM file (no -----BEGIN … KEY----- block)")
    try:
        key = serialization.load_pem_private_key(text, password=None)
    except TypeError:  # cryptography's word for "encrypted, and no password given"
        raise ConfigurationError(
            f"{where}: the key is encrypted; write it without a passphrase"
            " (openssl pkey -in KEY -out PLAIN.pem) and protect the file (chmod 600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        label = found.group(1).decode("ascii")
        if "PRIVATE KEY" not in label:
            raise ConfigurationError(
                f"{where}: a {label} block, not an RSA or Ed25519 private key"
            ) from None
        raise ConfigurationError(f"{where}: not a readable private key ({label})") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise ConfigurationError(
                f"{where}: an RSA key of {key.key_size} bits; DKIM needs at least 2048"
                " (openssl genrsa -out KEY 2048)"
            )
        # p= for RSA: the SubjectPublicKeyInfo DER, what `openssl pkey -pubout` writes.
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        signer = DkimSigner(
            selector, domain, "rsa", key.key_size, key, base64.b64encode(public).decode()
        )
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        # p= for Ed25519: the 32 raw bytes of the public key (RFC 8463 4.2).
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        signer = DkimSigner(selector, domain, "ed25519", 256, key, base64.b64encode(raw).decode())
    else:
        raise ConfigurationError(
            f"{where}: neither an RSA nor an Ed25519 key (EC keys cannot sign DKIM)"
        )
    _self_test(signer, where)
    try:
        if path.stat().st_mode & 0o077:
            log.warning(
                "the DKIM key %s can be read by other users of this machine: chmod 600 it", path
            )
    except OSError:
        pass  # it was read a moment ago; a stat that fails now changes nothing
    return signer


def _self_test(signer: DkimSigner, where: str) -> None:
    """Sign a small message and verify it against the signer's own DNS record."""
    sample = (
        f"From: check@{signer.domain}\r\nTo: check@{signer.domain}\r\nSubject: check\r\n"
        "\r\nDKIM self-test\r\n"
    ).encode("ascii")
    record = signer.dns_record().encode("ascii")
    try:
        signed = signer.sign(sample)
        good = dkim.verify(signed, logger=_quiet, dnsfunc=lambda name, timeout=5: record)
    except dkim.DKIMException as exc:
        raise ConfigurationError(f"{where}: the key cannot sign: {exc}") from None
    if not good:
        raise ConfigurationError(f"{where}: a test signature with the key does not verify")


def signer_for(settings: Settings) -> DkimSigner | None:
    """The process's signer from settings, or None when DKIM is not configured (neither
    setting); ConfigurationError when only one of the two is set or the key is unusable."""
    selector, path = settings.dkim_selector, settings.dkim_private_key
    if not selector and not path:
        return None
    if not selector or not path:
        missing = "NEWSLETTER_DKIM_SELECTOR" if not selector else "NEWSLETTER_DKIM_PRIVATE_KEY"
        raise ConfigurationError(
            f"DKIM is half configured: {missing} is not set (set both, or neither to send"
            " unsigned mail)"
        )
    return _cached_signer(selector.strip(), settings.sender_domain, Path(path).absolute())


@lru_cache(maxsize=4)
def _cached_signer(selector: str, domain: str, path: Path) -> DkimSigner:
    """The key is read once per process (and per selector, domain and file)."""
    try:
        domain = domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise ConfigurationError(f"the mail domain {domain!r} cannot sign DKIM") from None
    return load_signer(selector, domain, path)
