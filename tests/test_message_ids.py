"""Message-IDs unique across installations and stable per delivery, over the real build path:
two migrated databases, the campaign's compiled message, the preview command and an RSVP notice.
"""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path

from newsletter.campaigns import service
from newsletter.campaigns.compiled import build_message, compile_campaign
from newsletter.config import Settings
from newsletter.db import session_scope, utcnow
from newsletter.installation import installation_token_for
from newsletter.mail.message import delivery_id_from_message_id
from newsletter.migrate import upgrade
from newsletter.rsvp.models import NoticeKind
from newsletter.rsvp.notices import build_rsvp_notice
from newsletter.sessions import repo as sessions_repo
from newsletter.sessions.service import import_records
from subscribers.models import Subscriber
from tests.conftest import EXAMPLES, Configure
from tests.test_cli_database import run

SAMPLE = EXAMPLES / "sessions" / "061.yaml"


def first_delivery_message_id(settings: Settings) -> tuple[str, str]:
    """Delivery 1 of a fresh campaign in ``settings``' database, built twice."""
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as db:
        import_records(db, [SAMPLE], timezone="Asia/Shanghai")
        db.add(Subscriber(email="reader@example.org", name="读者", created_at=utcnow()))
    with session_scope(settings.database_url) as db:
        campaign_id = service.create_campaign(db, 61, past=True).id
    with session_scope(settings.database_url) as db:
        compiled = compile_campaign(db, campaign_id, settings)
    keys = settings.secret_keys
    once = build_message(compiled, 1, 1, "读者", "reader@example.org", settings, keys)
    again = build_message(compiled, 1, 1, "读者", "reader@example.org", settings, keys)
    return once.message_id, again.message_id


def test_two_databases_make_different_message_ids_for_delivery_1(
    configure: Configure, tmp_path: Path
) -> None:
    first = configure(database_url=f"sqlite:///{tmp_path / 'one.db'}")
    one, one_again = first_delivery_message_id(first)
    second = configure(database_url=f"sqlite:///{tmp_path / 'two.db'}")
    two, two_again = first_delivery_message_id(second)
    assert one == one_again and two == two_again  # stable for the same delivery
    assert one != two  # ...and never repeated by another installation
    for message_id, settings in ((one, first), (two, second)):
        token = installation_token_for(settings.database_url)
        assert message_id == f"<d1.{token}@example.org>"
        assert delivery_id_from_message_id(message_id, "example.org", token) == 1
    assert (
        delivery_id_from_message_id(one, "example.org", installation_token_for(second.database_url))
        is None
    )


def test_previews_get_a_fresh_p_id_that_no_delivery_can_have(tmp_path: Path) -> None:
    assert run(tmp_path, "sessions", "import", str(SAMPLE)).returncode == 0
    ids = []
    for name in ("a.eml", "b.eml"):
        result = run(tmp_path, "preview", "61", "--out", name)
        assert result.returncode == 0, result.stderr
        message = email.message_from_bytes(
            (tmp_path / name).read_bytes(), policy=email.policy.default
        )
        ids.append(str(message["Message-ID"]))
    token = installation_token_for(f"sqlite:///{tmp_path / 'var' / 'newsletter.db'}")
    assert ids[0] != ids[1]
    for message_id in ids:
        assert re.fullmatch(rf"<p[0-9a-f]{{16}}\.{token}@localhost>", message_id)
        assert delivery_id_from_message_id(message_id, "localhost", token) is None


def test_rsvp_notices_carry_the_installation_id(configure: Configure) -> None:
    settings = configure()
    upgrade(settings.database_url)
    with session_scope(settings.database_url) as db:
        import_records(db, [SAMPLE], timezone="Asia/Shanghai")
        person = Subscriber(email="reader@example.org", name="读者", created_at=utcnow())
        db.add(person)
        db.flush()
        salon = sessions_repo.get_by_number(db, 61)
        assert salon is not None
        notice = build_rsvp_notice(db, settings, salon.id, person.id, NoticeKind.confirmed)
    assert notice is not None
    token = installation_token_for(settings.database_url)
    assert notice.message_id.startswith("<n")
    assert notice.message_id.endswith(f".{token}@example.org>")
