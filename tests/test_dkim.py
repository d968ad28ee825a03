"""DKIM: mail really sent (a campaign through a real SMTP relay, a notice into the file outbox)
verifies with dkimpy against the very record ``newsletter dns`` prints; a tampered mail
does not; nothing is signed without configuration; bad key settings are clean errors."""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import dkim  # type: ignore[import-untyped]
import pytest
import typer
from typer.testing import CliRunner

from newsletter.cli.dns_cmd import dns
from newsletter.config import Settings
from newsletter.errors import ConfigurationError
from newsletter.mail.dkim import signer_for
from newsletter.mail.notice import build_notice
from newsletter.mail.transports import transport_for
from tests.conftest import Configure
from tests.smtp import SmtpServer
from tests.test_sent_invitation import send_campaign

cli = typer.Typer()
cli.command()(dns)
cli.command("noop")(lambda: None)  # two commands: `dns` stays a sub-command


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEM keys as operators make them with openssl."""
    folder = tmp_path_factory.mktemp("keys")
    made = {
        "rsa": folder / "rsa.pem",  # PKCS#8, what `openssl genpkey` writes
        "rsa-pkcs1": folder / "rsa1.pem",  # PKCS#1, `openssl genrsa -traditional`
        "ed25519": folder / "ed25519.pem",
        "rsa-1024": folder / "short.pem",
        "ec": folder / "ec.pem",
        "encrypted": folder / "encrypted.pem",
        "encrypted-pkcs1": folder / "encrypted1.pem",  # Proc-Type: 4,ENCRYPTED
        "public": folder / "public.pem",
    }
    openssl(
        "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", str(made["rsa"])
    )
    openssl("pkey", "-in", str(made["rsa"]), "-traditional", "-out", str(made["rsa-pkcs1"]))
    openssl("genpkey", "-algorithm", "ed25519", "-out", str(made["ed25519"]))
    openssl(
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
        "-out",
        str(made["rsa-1024"]),
    )
    openssl(
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        str(made["ec"]),
    )
    openssl(
        "pkey",
        "-in",
        str(made["rsa"]),
        "-aes256",
        "-passout",
        "pass:secret",
        "-out",
        str(made["encrypted"]),
    )
    openssl(
        "pkey",
        "-in",
        str(made["rsa"]),
        "-traditional",
        "-aes256",
        "-passout",
        "pass:secret",
        "-out",
        str(made["encrypted-pkcs1"]),
    )
    openssl("pkey", "-in", str(made["rsa"]), "-pubout", "-out", str(made["public"]))
    return made


def dns_output(settings: Settings) -> tuple[str, str]:
    """``newsletter dns`` run on the current settings: (stdout, stderr)."""
    result = CliRunner().invoke(cli, ["dns"])
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def published(stdout: str, name: str) -> bytes:
    """The TXT record for ``name`` in ``newsletter dns`` output, its strings joined."""
    for line in stdout.splitlines():
        if line.startswith(f"{name}. TXT "):
            strings = re.findall(r'"([^"]*)"', line)
            assert all(len(piece.encode()) <= 255 for piece in strings)
            return "".join(strings).encode("ascii")
    raise AssertionError(f"no TXT record for {name} in:\n{stdout}")


def dnsfunc_for(stdout: str, name: str) -> Callable[..., bytes]:
    record = published(stdout, name)

    def lookup(query: bytes, timeout: int = 5) -> bytes:
        assert query.decode().rstrip(".") == name, query
        return record

    return lookup


def verifies(data: bytes, lookup: Callable[..., bytes]) -> bool:
    return bool(dkim.verify(data, dnsfunc=lookup))


def signed_headers(data: bytes) -> set[str]:
    header = data.split(b"\r\n\r\n", 1)[0].decode()
    field = re.search(r"^DKIM-Signature:(.*?)(?=^\S)", header + "\r\nX", re.M | re.S)
    assert field is not None
    h = re.search(r"\bh=([^;]+);", field.group(1))
    d = re.search(r"\bd=([^;]+);", field.group(1))
    assert h is not None and d is not None and d.group(1).strip() == "example.org"
    return {name.strip().lower() for name in h.group(1).replace("\r\n", "").split(":")}


@pytest.fixture
def smtp(start_smtp: Callable[..., SmtpServer]) -> SmtpServer:
    return start_smtp()


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_campaign_mail_through_smtp_verifies_against_the_printed_record(
    configure: Configure, smtp: SmtpServer, keys: dict[str, Path], kind: str
) -> None:
    configure(dkim_selector="salon2026", dkim_private_key=str(keys[kind]))
    settings, _ = send_campaign(configure, smtp, 61)
    stdout, _ = dns_output(settings)
    lookup = dnsfunc_for(stdout, "salon2026._domainkey.example.org")
    assert f"k={kind};" in published(stdout, "salon2026._domainkey.example.org").decode()
    received = smtp.handler.received
    assert len(received) == 3
    for mail in received:
        assert mail.data.startswith(b"DKIM-Signature: ")
        assert verifies(mail.data, lookup)
        assert {
            "from", "to", "subject", "date", "message-id", "list-id",
            "list-unsubscribe", "list-unsubscribe-post",
        } <= signed_headers(mail.data)  # fmt: skip
        # Tampering with the body or a signed header breaks the signature.
        head, body = mail.data.split(b"\r\n\r\n", 1)
        lines = body.split(b"\r\n")
        index = next(i for i, line in enumerate(lines) if len(line) == 76)
        lines[index] = lines[index][:10] + bytes([lines[index][10] ^ 1]) + lines[index][11:]
        assert not verifies(head + b"\r\n\r\n" + b"\r\n".join(lines), lookup)
        subject = re.sub(rb"(?m)^Subject: ", b"Subject: Re: ", head, count=1)
        assert subject != head
        assert not verifies(subject + b"\r\n\r\n" + body, lookup)
        # A second From added after signing (From is oversigned) breaks it too.
        assert not verifies(b"From: evil@example.com\r\n" + mail.data, lookup)


@pytest.mark.parametrize("kind", ["rsa-pkcs1", "ed25519"])
def test_notice_into_the_file_outbox_verifies(
    configure: Configure, keys: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    settings = configure(
        mail_url=f"file://{tmp_path / 'outbox'}",
        dkim_selector="s1",
        dkim_private_key=str(keys[kind]),
    )
    message = build_notice(
        from_address=settings.from_address,
        mail_domain=settings.sender_domain,
        installation="0123456789abcdef",
        recipient_name="李雷",
        recipient_address="li.lei@example.com",
        subject="候补名单：您有座位了",
        text="您好\n",
        html="<p>您好</p>",
    )
    with transport_for(settings) as transport:
        transport.send(message)
    (written,) = (tmp_path / "outbox").glob("*.eml")
    data = written.read_bytes()
    stdout, _ = dns_output(settings)
    lookup = dnsfunc_for(stdout, "s1._domainkey.example.org")
    assert verifies(data, lookup)
    assert not verifies(data[:-40] + b"A" * 10 + data[-30:], lookup)


def test_nothing_is_signed_without_configuration(configure: Configure, smtp: SmtpServer) -> None:
    settings, _ = send_campaign(configure, smtp, 61)
    assert signer_for(settings) is None
    assert smtp.handler.received
    assert all(b"DKIM-Signature" not in mail.data for mail in smtp.handler.received)
    stdout, stderr = dns_output(settings)
    assert "_domainkey" not in stdout
    assert 'example.org. TXT "v=spf1' in stdout
    assert '_dmarc.example.org. TXT "v=DMARC1;' in stdout
    assert "DKIM is not configured" in stderr
    assert "Usage" in CliRunner().invoke(cli, ["dns", "--help"]).output


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"dkim_selector": "s1"}, "NEWSLETTER_DKIM_PRIVATE_KEY is not set"),
        ({"dkim_private_key": "rsa"}, "NEWSLETTER_DKIM_SELECTOR is not set"),
        ({"dkim_selector": "s1", "dkim_private_key": "missing"}, "cannot read the DKIM key"),
        ({"dkim_selector": "s1", "dkim_private_key": "rsa-1024"}, "1024 bits"),
        ({"dkim_selector": "s1", "dkim_private_key": "ec"}, "EC keys cannot sign DKIM"),
        ({"dkim_selector": "s1", "dkim_private_key": "encrypted"}, "the key is encrypted"),
        ({"dkim_selector": "s1", "dkim_private_key": "encrypted-pkcs1"}, "the key is encrypted"),
        (
            {"dkim_selector": "s1", "dkim_private_key": "public"},
            "a PUBLIC KEY block, not an RSA or Ed25519 private key",
        ),
        ({"dkim_selector": "s1", "dkim_private_key": "garbage"}, "not a PEM file"),
        (
            {"dkim_selector": "s1", "dkim_private_key": "corrupt"},
            "not a readable private key (PRIVATE KEY)",
        ),
        ({"dkim_selector": "bad selector", "dkim_private_key": "rsa"}, "not a DNS label"),
    ],
)
def test_bad_key_configurations_are_one_line_errors(
    configure: Configure,
    keys: dict[str, Path],
    tmp_path: Path,
    values: dict[str, str],
    expected: str,
) -> None:
    (tmp_path / "garbage").write_text("not a key\n")
    files = {**{k: str(v) for k, v in keys.items()}, "missing": str(tmp_path / "missing.pem")}
    files["garbage"] = str(tmp_path / "garbage")
    corrupt = "-----BEGIN PRIVATE KEY-----\nMIIBVQ==\n-----END PRIVATE KEY-----\n"
    (tmp_path / "corrupt").write_text(corrupt)  # a PEM block whose DER is cut short
    files["corrupt"] = str(tmp_path / "corrupt")
    if "dkim_private_key" in values:
        values = {**values, "dkim_private_key": files[values["dkim_private_key"]]}
    settings = configure(**values)
    with pytest.raises(ConfigurationError, match=re.escape(expected)) as caught:
        transport_for(settings)
    if values.get("dkim_selector") == "s1" and "dkim_private_key" in values:
        assert values["dkim_private_key"] in str(caught.value)  # the file is named
    result = CliRunner().invoke(cli, ["dns"])
    assert result.exit_code == 1
    assert expected in result.stderr.replace("\n", " ")
    assert "Traceback" not in result.output


def test_every_sender_opens_its_transport_with_the_signer() -> None:
    """Production code opens transports only through transport_for(settings) or
    transports_for(..., signer=signer_for(settings)): no sender can forget to sign."""
    root = Path(__file__).resolve().parent.parent
    own = {root / "newsletter/mail/transports.py", root / "newsletter/mail/lanes.py"}
    offenders = []
    for folder in ("newsletter", "tasks", "subscribers"):
        for path in (root / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            if path not in own and "transport_from_url(" in text:
                offenders.append(str(path.relative_to(root)))
            if "transports_for(" in text and path not in own and "signer=" not in text:
                offenders.append(str(path.relative_to(root)))
    assert offenders == []


@pytest.mark.parametrize(
    "body",
    [
        b"line one\r\nline two\r\n",  # already relaxed: hashed as it is
        b"trailing space \r\nx\r\n",
        b"tab\there\r\n",
        b"double  space\r\n",
        b"a space before a bare \rCR\r\n",
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nQUJD\r\n--=_d1.alt--\r\n",
        b"ends in a space \r\n",
        b"ends without a line end",
        b"empty lines at the end\r\n\r\n\r\n",
        b"\r\n",
        b"",
    ],
)
def test_relaxed_body_is_dkimpys(body: bytes, keys: dict[str, Path]) -> None:
    from dkim.canonicalization import Relaxed  # type: ignore[import-untyped]

    from newsletter.mail.dkim import load_signer, relaxed_body

    assert relaxed_body(body) == Relaxed.canonicalize_body(body)
    # And a message with such a body verifies (the slow path where the fast one cannot go).
    signer = load_signer("s1", "example.org", keys["ed25519"])
    message = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: x\r\n\r\n" + body
    record = signer.dns_record().encode()
    assert verifies(signer.sign(message), lambda name, timeout=5: record)


@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["worker"]])
def test_commands_that_send_check_the_key_at_start(tmp_path: Path, command: list[str]) -> None:
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env |= {
        "NEWSLETTER_BROKER_URL": "redis://127.0.0.1:1/0",
        "NEWSLETTER_DKIM_SELECTOR": "s1",
        "NEWSLETTER_DKIM_PRIVATE_KEY": str(tmp_path / "missing.pem"),
    }
    newsletter = str(Path(sys.executable).parent / "newsletter")
    done = subprocess.run(
        [newsletter, *command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "missing.pem" in done.stderr and "cannot read the DKIM key" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_key_others_can_read_is_warned_about(
    keys: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import shutil

    from newsletter.mail.dkim import load_signer

    key = tmp_path / "key.pem"
    shutil.copy(keys["ed25519"], key)
    key.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="newsletter.mail.dkim"):
        load_signer("s1", "example.org", key)
    assert "chmod 600" not in caplog.text
    key.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="newsletter.mail.dkim"):
        load_signer("s1", "example.org", key)
    assert "can be read by other users" in caplog.text


# A message with what header canonicalization must get right: upper and mixed case names, a
# folded Subject whose continuation starts with a tab, runs of spaces and trailing spaces in
# values, a second To (h= lists "to" twice: the last one is hashed first, then the other),
# and a body that is not in relaxed form (double spaces, trailing empty lines).
AWKWARD = (
    b"FROM: Ann  O'Neil <ann@example.org>\r\n"
    b"to: first@example.com\r\n"
    b"Subject: a  long subject \r\n\tfolded   onto a second line  \r\n"
    b"X-Not-Signed: anything\r\n"
    b"DATE:   Wed, 02 Dec 2026 07:00:00 +0000\r\n"
    b"Message-ID: <awkward.1@example.org>\r\n"
    b"TO: second@example.com\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain;\r\n charset=utf-8\r\n"
    b"\r\n"
    b"two  spaces and a trailing one \r\n\twith a tab\r\n\r\n\r\n"
)


@pytest.mark.parametrize("kind", ["rsa", "rsa-pkcs1", "ed25519"])
@pytest.mark.parametrize("shape", ["campaign", "awkward"])
def test_signature_is_byte_for_byte_dkimpys(
    configure: Configure,
    keys: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    shape: str,
) -> None:
    """Our field (signature by OpenSSL, the rest by dkimpy's pieces) is exactly what
    ``dkim.sign`` writes for the same message, key, clock and h=: a difference in
    canonicalization, tag order, folding or the signature itself cannot slip in."""
    import time
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives import serialization

    from newsletter.mail.dkim import SIGNED_HEADERS, load_signer
    from newsletter.mail.message import MessageFactory

    if shape == "campaign":
        settings = configure()
        factory = MessageFactory.for_settings(
            settings, subject="第61期：大模型的推理", installation="0" * 16, list_name="Mo 沙龙"
        )
        message = factory.build(
            delivery_id=4711,
            recipient_name="韩梅梅",
            recipient_address="han.meimei@example.com",
            html="<p>您好，韩梅梅</p>" * 400,  # base64 lines: the body hashed as it is
            text="您好，韩梅梅\n" * 400,
            unsubscribe_url="https://salon.example.org/u/tok",
            unsubscribe_mailto="mailto:unsubscribe+tok@example.org",
            date=datetime(2026, 12, 2, 7, 0, tzinfo=UTC),
        ).data
    else:
        message = AWKWARD
    monkeypatch.setattr(time, "time", lambda: 1_796_194_800.75)  # one clock for both
    signer = load_signer("s2026", "example.org", keys[kind])
    pem = keys[kind].read_bytes()
    if kind == "ed25519":  # dkim.sign takes the 32-byte seed in base64
        key = serialization.load_pem_private_key(pem, password=None)
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        pem, algorithm = base64.b64encode(seed), b"ed25519-sha256"
    else:
        algorithm = b"rsa-sha256"
    head = message.split(b"\r\n\r\n", 1)[0].lower()
    include = [name for name in SIGNED_HEADERS if re.search(rb"(?m)^" + name + rb":", head)]
    assert {b"from", b"to", b"subject", b"date", b"message-id"} <= set(include)
    if shape == "campaign":
        assert {b"list-id", b"list-unsubscribe", b"list-unsubscribe-post"} <= set(include)
    expected = dkim.sign(
        message,
        b"s2026",
        b"example.org",
        pem,
        canonicalize=(b"relaxed", b"relaxed"),
        signature_algorithm=algorithm,
        include_headers=include + include,
        linesep=b"\r\n",
    )
    assert b"t=1796194800;" in expected
    assert signer.signature(message) == expected
    record = signer.dns_record().encode()
    assert verifies(expected + message, lambda name, timeout=5: record)
