"""This installation's identity: a random id made once, when the database is created.

Message-IDs carry it, so two installations (or one database reset and migrated again) never
make the same Message-ID for their delivery no. 1: RFC 5322 wants them unique worldwide, and
receivers drop a message whose Message-ID they have seen before.
"""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from newsletter.db import Base, get_sessionmaker


class Installation(Base):
    """The one row that names this database (made by migration 0004)."""

    __tablename__ = "installation"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # 16 hex digits of randomness (64 bits): two installations colliding is not a concern.
    token: Mapped[str] = mapped_column(String(32))


def installation_token(db: Session) -> str:
    """The installation id of the database ``session`` talks to."""
    token = db.scalar(select(Installation.token).where(Installation.id == 1))
    if token is None:  # only a database not made by the migrations lacks it
        raise LookupError("the database has no installation id: run `newsletter db upgrade`")
    return token


def installation_token_for(url: str) -> str:
    """The installation id of the database at ``url`` (one small query).

    Not cached: a database reset and migrated again under a running process gets a new id,
    and that id must be used from then on (its delivery ids start at 1 again).
    """
    with get_sessionmaker(url)() as db:
        return installation_token(db)
