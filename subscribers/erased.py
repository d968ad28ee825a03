"""Keyed hashes of erased addresses: what keeps an erased person from coming back by import.

GDPR erasure removes the address itself, so an organizer's next CSV import would add the
person again. What is kept instead is HMAC-SHA256 of the normalised address under a key
derived from the secret key: without the secret the hash cannot be tested against a list of
guessed addresses. An import skips a hashed address; only the person signing up again (and
confirming) lifts it.

With several secret keys (rotation) the hash is written with the newest and looked up under
each, so an erasure made before a rotation still holds after it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from newsletter.db import utcnow
from subscribers.models import ErasedAddress

# The hash key is derived, not the secret itself: the same secret signs links, and one use
# must never be able to stand in for another.
_KEY_LABEL = b"newsletter.erased-address"


def address_hash(email: str, key: str) -> str:
    """The hex HMAC of the (already normalised) address under one secret key."""
    derived = hmac.new(key.encode(), _KEY_LABEL, hashlib.sha256).digest()
    return hmac.new(derived, email.encode(), hashlib.sha256).hexdigest()


def _hashes(email: str, keys: Sequence[str]) -> list[str]:
    return [address_hash(email, key) for key in keys]


def is_erased(db: Session, email: str, keys: Sequence[str]) -> bool:
    """Whether this normalised address was erased (under any of the keys)."""
    found = db.scalar(
        select(ErasedAddress.address_hash)
        .where(ErasedAddress.address_hash.in_(_hashes(email, keys)))
        .limit(1)
    )
    return found is not None


def erased_among(db: Session, emails: Sequence[str], keys: Sequence[str]) -> set[str]:
    """Which of these normalised addresses were erased: one query for an import's chunk."""
    by_hash = {h: email for email in emails for h in _hashes(email, keys)}
    if not by_hash:
        return set()
    rows = db.scalars(
        select(ErasedAddress.address_hash).where(ErasedAddress.address_hash.in_(list(by_hash)))
    )
    return {by_hash[h] for h in rows}


def record_erasure(db: Session, email: str, keys: Sequence[str]) -> None:
    """Remember that this address was erased (idempotent); the caller commits."""
    newest = address_hash(email, keys[0])
    if db.get(ErasedAddress, newest) is None:
        db.add(ErasedAddress(address_hash=newest, erased_at=utcnow()))


def forget_erasure(db: Session, email: str, keys: Sequence[str]) -> None:
    """The person signed up again and confirmed: imports may include them again."""
    db.execute(delete(ErasedAddress).where(ErasedAddress.address_hash.in_(_hashes(email, keys))))
