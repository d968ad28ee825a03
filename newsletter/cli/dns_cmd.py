"""``newsletter dns``: the SPF, DKIM and DMARC records to publish for the mail domain.

The DKIM record comes from the configured key (:mod:`newsletter.mail.dkim`), so what is
printed is exactly what the signatures verify against. Records are printed one a line in
zone-file form, ``NAME TXT "text" …``, the text cut into strings of at most 255 bytes (a
TXT string's limit; resolvers join them again). Lines starting with ``;`` are comments.
"""

from __future__ import annotations

from email.utils import parseaddr

from newsletter.cli.common import console, err_console, handles_errors
from newsletter.config import Settings, get_settings
from newsletter.mail.dkim import signer_for

#: The longest string a TXT record may hold (RFC 1035 3.3.14: one length byte).
TXT_STRING = 255


def txt_strings(text: str) -> str:
    """``text`` as one or more quoted TXT strings of at most 255 bytes each."""
    data = text.encode("ascii")
    pieces = [data[i : i + TXT_STRING] for i in range(0, len(data), TXT_STRING)] or [b""]
    return " ".join(f'"{piece.decode("ascii")}"' for piece in pieces)


def _aligned(from_domain: str, domain: str) -> bool:
    """Relaxed DMARC alignment, roughly: one domain is the other or a subdomain of it."""
    return (
        from_domain == domain
        or from_domain.endswith("." + domain)
        or domain.endswith("." + from_domain)
    )


def records(settings: Settings) -> tuple[list[str], str | None]:
    """The record lines, and a note for stderr when DKIM is not configured."""
    domain = settings.sender_domain.lower()
    from_domain = parseaddr(settings.from_address)[1].rpartition("@")[2].lower()
    lines = [f"; DNS records for {domain} (From: {from_domain})"]
    envelope_domains = [from_domain]
    if settings.bounce_address:
        bounce_domain = settings.bounce_address.rpartition("@")[2].lower()
        if bounce_domain and bounce_domain not in envelope_domains:
            envelope_domains.append(bounce_domain)
    lines.append(
        "; SPF: the hosts that may send for the envelope sender's domain; add your relay's"
        " own 'include:' if it asks for one"
    )
    for name in envelope_domains:
        lines.append(f"{name}. TXT {txt_strings('v=spf1 mx a ~all')}")
    note = None
    signer = signer_for(settings)  # ConfigurationError for a bad key: a clean error
    if signer is None:
        note = (
            "DKIM is not configured: no DKIM record. Make a key (openssl genpkey -algorithm"
            " ed25519 -out dkim.pem, or openssl genrsa -out dkim.pem 2048) and set"
            " NEWSLETTER_DKIM_SELECTOR and NEWSLETTER_DKIM_PRIVATE_KEY"
        )
    else:
        lines.append(
            f"; DKIM: {signer.algorithm} key of {signer.key_bits} bits, selector"
            f" {signer.selector}, from {settings.dkim_private_key}"
        )
        lines.append(f"{signer.record_name}. TXT {txt_strings(signer.dns_record())}")
    dmarc = f"v=DMARC1; p=none; rua=mailto:dmarc-reports@{from_domain}; adkim=r; aspf=r"
    lines.append(
        "; DMARC: start with p=none and read the reports; then p=quarantine, then p=reject"
    )
    lines.append(f"_dmarc.{from_domain}. TXT {txt_strings(dmarc)}")
    if not _aligned(from_domain, domain):
        lines.append(
            f"; warning: the signing domain {domain} is not the From domain {from_domain}"
            " nor related to it: DMARC will not count the DKIM signature (set"
            " NEWSLETTER_MAIL_DOMAIN to the From domain)"
        )
    return lines, note


@handles_errors
def dns() -> None:
    """Print the SPF, DKIM and DMARC records to publish for the mail domain."""
    lines, note = records(get_settings())
    for line in lines:
        console.print(line, soft_wrap=True, markup=False, highlight=False)
    if note:
        err_console.print(f"note: {note}", soft_wrap=True, markup=False)
