"""How many finished invitations per second one core makes, compiled once vs rendered each time.

Each timed message is what a campaign worker does per recipient: sign the recipient's links
(``newsletter.links.recipient_links``), personalise the invitation, and build the MIME bytes
(``newsletter.mail.message.MessageFactory.build``). The fast way compiles the invitation once
(Jinja + premailer) and personalises it per message; the naive way runs ``render_invitation``
(Jinja + premailer) for every message. Sessions come straight from ``examples/sessions/*.yaml``,
no database needed.

The compiled way is then timed again with each message DKIM-signed as the transports sign
it (:class:`newsletter.mail.dkim.DkimSigner`), with an RSA-2048 and an Ed25519 key made by
``openssl`` in a temporary directory (``--no-dkim`` skips this).

Run: ``.venv/bin/python benchmarks/render.py [--seconds 3] [--session 61] [--no-dkim]``. The
last line of output is one JSON object: ``{"msgs_per_s", "naive_msgs_per_s", "ratio",
"message_bytes"}``, plus ``"rsa_msgs_per_s"``, ``"ed25519_msgs_per_s"`` and the signature's
own cost per message (``"rsa_sign_us"``, ``"ed25519_sign_us"``) with signing, and the load
average (``"load"``) when the run ended.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

from newsletter.campaigns.compiled import CompiledCampaign, build_message, recipient_for
from newsletter.config import Settings
from newsletter.mail.dkim import DkimSigner, load_signer
from newsletter.mail.message import MessageFactory, OutgoingMessage
from newsletter.rendering import InvitationTemplate, Recipient
from newsletter.rendering import render_invitation as full_render
from newsletter.sessions.archive import ArchiveLink, ArchiveRow, ArchiveTalkGroup
from newsletter.sessions.schema import SessionRecord, TalkKind

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sessions"
KIND_ORDER = (TalkKind.paper, TalkKind.lecture, TalkKind.practice)
NAMES = ("张三", "李雷", "Ann O'Neil", "", "韩梅梅", "Zoë & co")


def load_examples() -> dict[int, SessionRecord]:
    """Every example session record, by number."""
    records = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        record = SessionRecord.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
        records[record.number] = record
    return records


def archive_before(records: dict[int, SessionRecord], number: int, zone: str) -> list[ArchiveRow]:
    """The archive table rows of every session before ``number``, as the database gives them."""
    rows = []
    for past in (records[n] for n in sorted(records) if n < number):
        groups = tuple(
            ArchiveTalkGroup(kind.label, tuple(t.title for t in past.talks if t.kind is kind))
            for kind in KIND_ORDER
            if any(t.kind is kind for t in past.talks)
        )
        held_on = past.starts_at.astimezone(ZoneInfo(past.timezone or zone)).date()
        links = tuple(ArchiveLink(link.title, str(link.url)) for link in past.links)
        rows.append(ArchiveRow(past.number, held_on, groups, links))
    return rows


def rate(make: Callable[[int], OutgoingMessage], seconds: float) -> tuple[float, int]:
    """Messages per second of ``make(i)`` over about ``seconds``; also the last message size."""
    count, size = 0, 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(20):  # check the clock every 20 messages, not every one
            size = len(make(count).data)
            count += 1
        if time.perf_counter() >= deadline:
            break
    return count / (time.perf_counter() - started), size


def signers(domain: str) -> dict[str, DkimSigner]:
    """An RSA-2048 and an Ed25519 signer, their keys made by openssl in a temporary folder."""
    made = {}
    with tempfile.TemporaryDirectory(prefix="bench-dkim-") as folder:
        for kind, options in (
            ("rsa", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
            ("ed25519", ["-algorithm", "ed25519"]),
        ):
            path = Path(folder) / f"{kind}.pem"
            subprocess.run(
                ["openssl", "genpkey", *options, "-out", str(path)], check=True, capture_output=True
            )
            made[kind] = load_signer("bench", domain, path)
    return made


def main() -> None:
    """Run both ways on one core and print the figures, the JSON summary last."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time for each way")
    parser.add_argument("--session", type=int, default=61, help="session number to send")
    parser.add_argument("--no-dkim", action="store_true", help="skip the DKIM-signed runs")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, honestly

    settings = Settings(
        secret_key="benchmark-secret-key",
        base_url="https://salon.example.org",
        from_address="Mo 人工智能俱乐部 <salon@example.org>",
    )
    keys = settings.secret_keys
    records = load_examples()
    record = records[args.session]
    archive = archive_before(records, record.number, settings.timezone)
    organizer = record.organizer or settings.organizer

    started = time.perf_counter()
    template = InvitationTemplate.build(
        record, archive, organizer=organizer, timezone=settings.timezone
    )
    factory = MessageFactory.for_settings(
        settings, subject=template.subject, list_name=record.series, installation="0" * 16
    )
    compiled = CompiledCampaign(1, record.number, record.number, template, factory)
    build_ms = (time.perf_counter() - started) * 1000

    def fast_message(i: int) -> OutgoingMessage:
        """Exactly what a campaign worker does per recipient (campaigns.compiled)."""
        name = NAMES[i % len(NAMES)]
        return build_message(
            compiled, i, 100_000 + i, name, f"subscriber{i}@example.org", settings, keys
        )

    def naive_message(i: int) -> OutgoingMessage:
        """The same message with Jinja and premailer run for this one recipient."""
        name = NAMES[i % len(NAMES)]
        links, recipient = recipient_for(compiled, 100_000 + i, name, settings, keys)
        rendered = full_render(
            record, archive, recipient, organizer=organizer, timezone=settings.timezone
        )
        return factory.build(
            delivery_id=i,
            recipient_name=name,
            recipient_address=f"subscriber{i}@example.org",
            html=rendered.html,
            text=rendered.text,
            unsubscribe_url=links.unsubscribe,
            unsubscribe_mailto=links.unsubscribe_mailto,
        )

    # Both ways must make the very same parts, or the comparison means nothing.
    for i, name in enumerate(NAMES):
        _, recipient = recipient_for(compiled, 100_000 + i, name, settings, keys)
        expected = full_render(
            record, archive, recipient, organizer=organizer, timezone=settings.timezone
        )
        got = template.personalise_utf8(recipient)
        if (got.html, got.text) != (expected.html.encode(), expected.text.encode()):
            raise SystemExit(f"recipient {i}: compiled and full render differ")

    sample = template.personalise(Recipient("张三", *(["https://salon.example.org/x"] * 6)))
    fast, message_bytes = rate(fast_message, args.seconds)
    slow, _ = rate(naive_message, args.seconds)
    signed: dict[str, float] = {}
    if not args.no_dkim:
        for kind, signer in signers(settings.sender_domain).items():

            def signed_message(i: int, signer: DkimSigner = signer) -> OutgoingMessage:
                message = fast_message(i)
                return OutgoingMessage(
                    message.delivery_id,
                    message.envelope_from,
                    message.recipient,
                    message.message_id,
                    signer.sign(message.data),
                )

            signed[kind], _ = rate(signed_message, args.seconds)

    print(f"session no. {record.number}: {len(archive)} archive rows")
    print(f"compile once (Jinja + premailer):    {build_ms:8.1f} ms")
    print(f"HTML part:                           {len(sample.html.encode()):8,d} bytes")
    print(f"text part:                           {len(sample.text.encode()):8,d} bytes")
    print(f"finished message (MIME, base64):     {message_bytes:8,d} bytes")
    print(f"compiled: links + personalise + MIME {fast:8,.0f} msgs/s ({1e6 / fast:.0f} µs each)")
    print(f"naive:    links + full render + MIME {slow:8,.1f} msgs/s ({1e3 / slow:.1f} ms each)")
    print(f"ratio:                               {fast / slow:8,.0f}×")
    for kind, per_s in signed.items():
        cost = 1e6 / per_s - 1e6 / fast
        print(
            f"compiled + DKIM {kind + ':':<8}            {per_s:8,.0f} msgs/s"
            f" ({1e6 / per_s:.0f} µs each, the signature {cost:.0f} µs)"
        )
    load = os.getloadavg()[0]
    print(f"load average at end:                 {load:8.2f}")
    summary = {
        "msgs_per_s": round(fast, 1),
        "naive_msgs_per_s": round(slow, 1),
        "ratio": round(fast / slow, 1),
        "message_bytes": message_bytes,
        "load": round(load, 2),
    }
    for kind, per_s in signed.items():
        summary[f"{kind}_msgs_per_s"] = round(per_s, 1)
        summary[f"{kind}_sign_us"] = round(1e6 / per_s - 1e6 / fast)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
