"""The keyed hashes of erased addresses: keyed by the secret, found across a key rotation."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from subscribers.erased import (
    address_hash,
    erased_among,
    forget_erasure,
    is_erased,
    record_erasure,
)
from subscribers.models import ErasedAddress

OLD, NEW = "old-secret-key", "new-secret-key"


def test_the_hash_is_keyed_by_the_secret() -> None:
    address = "ann@example.org"
    assert address_hash(address, OLD) == address_hash(address, OLD)
    assert address_hash(address, OLD) != address_hash(address, NEW)
    assert address_hash(address, OLD) != address_hash("bob@example.org", OLD)
    assert address not in address_hash(address, OLD) and len(address_hash(address, OLD)) == 64


def test_an_erasure_is_found_only_with_the_key_it_was_made_with(db: Session) -> None:
    record_erasure(db, "ann@example.org", [OLD])
    db.commit()
    assert is_erased(db, "ann@example.org", [OLD])
    assert not is_erased(db, "ann@example.org", ["another-secret"])  # no guessing without it
    assert not is_erased(db, "bob@example.org", [OLD])


def test_an_erasure_made_before_a_key_rotation_still_holds_after_it(db: Session) -> None:
    record_erasure(db, "ann@example.org", [OLD])
    db.commit()
    rotated = [NEW, OLD]  # newest first: NEW signs, both verify
    assert is_erased(db, "ann@example.org", rotated)
    assert erased_among(db, ["ann@example.org", "bob@example.org"], rotated) == {"ann@example.org"}
    record_erasure(db, "bob@example.org", rotated)  # written under the newest key
    record_erasure(db, "bob@example.org", rotated)  # idempotent
    db.commit()
    assert db.get(ErasedAddress, address_hash("bob@example.org", NEW)) is not None
    assert db.scalar(select(func.count()).select_from(ErasedAddress)) == 2
    forget_erasure(db, "ann@example.org", rotated)  # signed up again: lifted under any key
    db.commit()
    assert not is_erased(db, "ann@example.org", rotated)
    assert is_erased(db, "bob@example.org", rotated)
