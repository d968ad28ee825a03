"""The corpus of real returned mail (tests/inbound_corpus, see its README) through
``newsletter inbound``, against a campaign really sent to every address the messages name.

Each message must be classified as its folder says and matched to the delivery of the
address its README row names (by the address it carries, or, where the feedback loop
redacted it, by the VERP envelope recipient a pipe transport passes); no auto-reply may
change anyone. The counts per kind are printed (``pytest -s``) for the notes.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from newsletter.cli import app as cli
from newsletter.db import session_scope
from newsletter.inbound.models import InboundEvent
from subscribers.models import Subscriber
from subscribers.validation import normalise_email
from tests.conftest import Configure
from tests.test_inbound_service import inbound_settings, sent_campaign

CORPUS = Path(__file__).parent / "inbound_corpus"
KINDS = ("hard_bounce", "soft_bounce", "complaint", "auto_reply")
_ROW = re.compile(r"^\| (\w+/[^ |]+\.eml) \| ([^ |]+) \|", re.M)
REDACTED = "redacted-{n}@example.org"  # who the test says a redacted report was about


def manifest() -> list[tuple[str, str, str]]:
    """(kind, file, address) for every corpus file, from the README's table."""
    rows = _ROW.findall((CORPUS / "README.md").read_text(encoding="utf-8"))
    files = sorted(p.relative_to(CORPUS).as_posix() for p in CORPUS.glob("*/*.eml"))
    assert sorted(f for f, _ in rows) == files, "README and folders list different files"
    return [
        (f.split("/")[0], f, REDACTED.format(n=n) if address == "-" else address)
        for n, (f, address) in enumerate(rows)
    ]


def test_corpus_is_classified_and_matched(
    configure: Configure, db_url: str, tmp_path: Path
) -> None:
    rows = manifest()
    assert len(rows) >= 30 and {kind for kind, _, _ in rows} == set(KINDS)
    settings = inbound_settings(configure, db_url)
    sent = sent_campaign(settings, tmp_path, [address for _, _, address in rows])
    right: Counter[str] = Counter()
    matched: Counter[str] = Counter()
    total = Counter(kind for kind, _, _ in rows)
    wrong: list[str] = []
    runner = CliRunner()
    for kind, name, address in rows:
        args = ["inbound"]
        if address.startswith("redacted-"):
            args += ["--recipient", sent.verp(address)]
        result = runner.invoke(cli, [*args, str(CORPUS / name)])
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output
        line = result.stdout.strip()
        # "<file>: <kind>, matched by <how> (delivery <id>, campaign <id>): <changes>"
        if f": {kind}, " in line:
            right[kind] += 1
        else:
            wrong.append(line)
        if f"(delivery {sent.deliveries[normalise_email(address)]}, " in line:
            matched[kind] += 1
        else:
            wrong.append(f"not matched to its delivery: {line}")
    print("\ncorpus (classified correctly / matched to its delivery / total):")
    for kind in KINDS:
        print(f"  {kind}: {right[kind]} / {matched[kind]} / {total[kind]}")
    assert wrong == []
    with session_scope(settings.database_url) as db:
        # Every auto-reply's author is still active, and no auto-reply event changed anyone.
        repliers = {normalise_email(a) for kind, _, a in rows if kind == "auto_reply"}
        statuses = dict(
            db.execute(
                select(Subscriber.email, Subscriber.status).where(Subscriber.email.in_(repliers))
            ).all()
        )
        assert set(statuses.values()) == {"active"}, statuses
        stored = Counter(db.scalars(select(InboundEvent.kind)))
    assert stored == total
    # Every hard bounce's address is bounced (complaints of the same person leave it so).
    hard = {normalise_email(a) for kind, _, a in rows if kind == "hard_bounce"}
    with session_scope(settings.database_url) as db:
        bounced = set(
            db.scalars(
                select(Subscriber.email).where(
                    Subscriber.email.in_(hard), Subscriber.status == "bounced"
                )
            )
        )
    assert bounced == hard
