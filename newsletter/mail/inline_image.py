"""An image shown inside a mail's HTML (RFC 2387 ``multipart/related``, RFC 2392 ``cid:``).

A check-in QR code travels in the message instead of as a remote image: clients that block
remote images (most, by default) still show it, and no request tells anyone the mail was
opened. The HTML refers to it as ``<img src="cid:{content_id}">``; the message becomes
``multipart/related`` around the usual ``multipart/alternative``, the image its second part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A Content-ID is a msg-id (RFC 5322 3.6.4): dot-atom text, "@", dot-atom text.
_CONTENT_ID = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")


@dataclass(frozen=True, slots=True)
class InlineImage:
    """A PNG the HTML part shows as ``cid:{content_id}`` (no angle brackets here)."""

    content_id: str
    png: bytes
    filename: str = "checkin-qr.png"

    def __post_init__(self) -> None:
        if not _CONTENT_ID.fullmatch(self.content_id):
            raise ValueError(f"{self.content_id!r} is not a Content-ID (local@domain)")
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,60}", self.filename):
            raise ValueError("an inline image's file name: letters, digits, dots and dashes")


def related_content_type(boundary: str) -> str:
    """The top-level Content-Type of a message whose HTML shows inline images."""
    # Folded: one line would pass the 78 characters RFC 5322 asks for.
    return (
        f'Content-Type: multipart/related; type="multipart/alternative";\r\n boundary="{boundary}"'
    )


def image_part(boundary: str, image: InlineImage) -> list[bytes]:
    """The lines of ``image`` as a part of the related ``boundary``, and its closing line."""
    # Here, not at the top: newsletter.mail.message builds these parts and imports this module.
    from newsletter.mail.message import base64_lines

    head = (
        f"--{boundary}\r\n"
        "Content-Type: image/png\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        f"Content-ID: <{image.content_id}>\r\n"
        f'Content-Disposition: inline; filename="{image.filename}"\r\n'
    )
    return [head.encode("ascii"), *base64_lines(image.png), f"--{boundary}--".encode("ascii")]
