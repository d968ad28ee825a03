"""DKIM signatures on every outgoing mail (RFC 6376; Ed25519 per RFC 8463), made by dkimpy.

With ``NEWSLETTER_DKIM_SELECTOR`` and ``NEWSLETTER_DKIM_PRIVATE_KEY`` (a PEM file) both set,
:func:`signer_for` gives the process's :class:`DkimSigner`; the transports sign each message
as they hand it over (:class:`newsletter.mail.transports.SigningTransport`), the one place
every outgoing message's bytes pass, whichever builder made them. ``d=`` is the mail domain
(``settings.sender_domain``: the From address's domain unless ``MAIL_DOMAIN`` says
otherwise), so the signature aligns with From for DMARC.

The key is read and checked once per process (:func:`signer_for` is cached), by whoever
first asks: commands that send ask before they change anything, so a missing, unreadable,
encrypted or too-short key is a one-line :class:`ConfigurationError` naming the file, never a
campaign paused at its first message. The check ends with a test signature verified against
the public key that :meth:`DkimSigner.dns_record` publishes.

Cost (benchmarks/README.md, "Signing"): dkimpy is pure Python. Its relaxed body
canonicalization runs two regular expressions over the ~70 KB body, and its RSA is Python's
``pow``, a few milliseconds per message; Ed25519 goes through libsodium and costs little
beside the body. The message is parsed here, not by dkimpy: only the header block is split
into fields, the body is handed over as it is (our builders write CRLF line ends), which saves
dkimpy's split and re-join of every body line.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import dkim  # type: ignore[import-untyped]  # dkimpy ships no type hints
import nacl.signing
from dkim.crypto import UnparsableKeyError, parse_private_key  # type: ignore[import-untyped]

from newsletter.config import Settings
from newsletter.errors import ConfigurationError

__all__ = ["SIGNED_HEADERS", "DkimSigner", "load_signer", "signer_for"]

#: The header fields signed when present, in this order; each is signed once more than it
#: occurs ("oversigned"), so that nobody can add a second From or Subject after signing.
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

# PKCS#8 of an Ed25519 key is always these 16 bytes and the 32-byte seed (RFC 8410 §7).
_ED25519_PKCS8 = bytes.fromhex("302e020100300506032b657004220420")
_RSA_OID = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1, rsaEncryption
_PEM = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)\r?\n-----END \1-----", re.DOTALL)
_SELECTOR = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*")
_quiet = logging.getLogger("newsletter.mail.dkim.dkimpy")  # dkimpy logs per call at debug


def _der(tag: int, content: bytes) -> bytes:
    """One DER element (dkimpy's asn1_build cannot write lengths over 127 bytes)."""
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(length))) + length + content


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


@dataclass(frozen=True)
class DkimSigner:
    """Signs finished messages for one selector and domain with one key (made by
    :func:`load_signer`); thread-safe: each call builds its own dkimpy object."""

    selector: str
    domain: str
    algorithm: Algorithm
    key_bits: int
    _private: bytes  # what dkimpy's sign takes: the PEM (RSA) or the base64 seed (Ed25519)
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
        """The ``DKIM-Signature:`` field (ending in CRLF) for the message ``data``."""
        end = data.find(b"\r\n\r\n")
        if end < 0:
            raise ValueError("a message to sign needs a header block and a body")
        signer = dkim.DKIM(logger=_quiet, linesep=b"\r\n")
        # The header block alone goes through dkimpy's parser; the body is already CRLF.
        signer.headers, _ = dkim.rfc822_parse(data[: end + 4])
        signer.body = data[end + 4 :]
        present = [name.lower() for name, _ in signer.headers]
        include = [name for name in SIGNED_HEADERS if name in present]
        include += include  # the oversigning (see SIGNED_HEADERS)
        field: bytes = signer.sign(
            self.selector.encode("ascii"),
            self.domain.encode("ascii"),
            self._private,
            signature_algorithm=b"rsa-sha256" if self.algorithm == "rsa" else b"ed25519-sha256",
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=include,
        )
        return field

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
    found = _PEM.search(text)
    if found is None:
        raise ConfigurationError(f"{where}: not a PEM file (no -----BEGIN … KEY----- block)")
    label, body = found.group(1).decode("ascii"), found.group(2)
    if b"ENCRYPTED" in found.group(1) or b"Proc-Type:" in body:
        raise ConfigurationError(
            f"{where}: the key is encrypted; write it without a passphrase"
            " (openssl pkey -in KEY -out PLAIN.pem) and protect the file (chmod 600)"
        )
    if label not in ("PRIVATE KEY", "RSA PRIVATE KEY"):
        raise ConfigurationError(f"{where}: a {label} block, not an RSA or Ed25519 private key")
    try:
        der = base64.b64decode(b"".join(body.split()), validate=True)
    except binascii.Error:
        raise ConfigurationError(f"{where}: the PEM block is not valid base64") from None
    if label == "PRIVATE KEY" and der.startswith(_ED25519_PKCS8) and len(der) == 48:
        seed = der[16:]
        public = nacl.signing.SigningKey(seed).verify_key.encode()
        signer = DkimSigner(
            selector, domain, "ed25519", 256, base64.b64encode(seed),
            base64.b64encode(public).decode("ascii"),
        )  # fmt: skip
    else:
        if label == "PRIVATE KEY" and _RSA_OID not in der[:32]:
            raise ConfigurationError(
                f"{where}: neither an RSA nor an Ed25519 key (EC keys cannot sign DKIM)"
            )
        try:
            key = parse_private_key(der)
        except UnparsableKeyError:
            raise ConfigurationError(f"{where}: not a readable RSA private key") from None
        modulus, exponent = int(key["modulus"]), int(key["publicExponent"])
        bits = modulus.bit_length()
        if bits < 2048:
            raise ConfigurationError(
                f"{where}: an RSA key of {bits} bits; DKIM needs at least 2048"
                " (openssl genrsa -out KEY 2048)"
            )
        rsa_public = _der(0x30, _der_int(modulus) + _der_int(exponent))
        spki = _der(
            0x30,
            _der(0x30, _der(0x06, _RSA_OID) + _der(0x05, b"")) + _der(0x03, b"\x00" + rsa_public),
        )
        # dkimpy's PEM reader wants "\n" line ends and the block alone.
        pem = found.group(0).replace(b"\r\n", b"\n")
        signer = DkimSigner(
            selector, domain, "rsa", bits, pem, base64.b64encode(spki).decode("ascii")
        )
    _self_test(signer, where)
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
