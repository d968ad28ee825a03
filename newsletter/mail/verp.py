"""VERP return paths: each delivery's envelope sender is the bounce address with
``+<delivery id>`` after its local part (``bounces+1234@example.org``), so a bounce that
reaches the bounce domain names the delivery it is about, whatever the bounce's own format.

Both directions live here: :class:`newsletter.mail.message.MessageFactory` writes the
address with :func:`verp_address`, ``newsletter inbound`` reads it back with
:func:`verp_delivery_id`.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"[0-9]{1,18}")


def verp_address(bounce_address: str, delivery_id: int) -> str:
    """The envelope sender of one delivery: ``local+<delivery id>@domain``."""
    local, _, domain = bounce_address.rpartition("@")
    return f"{local}+{delivery_id}@{domain}"


def verp_delivery_id(address: str, bounce_address: str) -> int | None:
    """The delivery id in ``address`` if it is a VERP form of ``bounce_address``, else None.

    Local part and domain compare case-insensitively (receivers and pipes change case);
    only digits after the ``+`` count, so ``bounces+x@…`` or the bare address give None.
    """
    local, at, domain = address.strip().strip("<>").rpartition("@")
    base_local, base_at, base_domain = bounce_address.strip().rpartition("@")
    if not at or not base_at or domain.lower() != base_domain.lower():
        return None
    prefix = base_local.lower() + "+"
    if not local.lower().startswith(prefix):
        return None
    tail = local[len(prefix) :]
    return int(tail) if _DIGITS.fullmatch(tail) else None


def is_bounce_mailbox(address: str, bounce_address: str) -> bool:
    """Whether ``address`` is the bounce address itself or one of its VERP forms (what the
    receiver accepts mail for)."""
    clean = address.strip().strip("<>").lower()
    if clean == bounce_address.strip().lower():
        return True
    return verp_delivery_id(address, bounce_address) is not None
