"""The wheel smoke test: the package as the image and a user install it, outside the checkout.

The wheel is built once from exactly what the Dockerfile's builder copies, then installed with
no extras into a fresh virtual environment in a temporary directory. The runtime lock serves
as constraints, so the versions are the locked ones, but the wheel's own declared dependencies
decide what gets installed: a dependency missing from pyproject.toml is missing here too. Every
command runs from an empty directory as a subprocess of the installed ``newsletter``: the demo;
the web app on a throwaway PostgreSQL answering an RSVP; a worker sending a campaign through a
throwaway Redis to a real SMTP server; and every command docker-compose.yml and the image run.
"""

from __future__ import annotations

import email
import email.policy
import html
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT, require
from tests.servers import Server, free_port, postgres_server, redis_server
from tests.smtp import SmtpServer
from tests.test_compose import (
    app_services,
    builder_inputs,
    image_command,
    image_healthcheck,
    interpolate,
    services,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.smtp]

RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
# What every venv has whatever the project needs; not the project's dependencies.
INSTALLER_TOOLS = {"pip", "setuptools", "wheel"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")
SECRETS = {"NEWSLETTER_SECRET_KEY": "wheel-secret", "NEWSLETTER_ADMIN_TOKEN": "wheel-admin"}


def locked_pins(lock: Path) -> dict[str, str]:
    """``name → version`` of a lock file written by ``make lock`` (hashes and comments left out)."""
    pins: dict[str, str] = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            pins[canonicalize_name(match[1])] = match[2]
    return pins


@dataclass
class Installed:
    """The fresh virtual environment with the wheel in it."""

    venv: Path
    wheel: Path
    scratch: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def env(self, **settings: str) -> dict[str, str]:
        """A clean environment: this process's, without NEWSLETTER_* or anything that could
        import the checkout, plus ``settings``."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("NEWSLETTER_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
        }
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["COLUMNS"] = "400"
        env.update(settings)
        return env

    def empty_dir(self, name: str) -> Path:
        """A new empty working directory outside the checkout."""
        path = self.scratch / name
        path.mkdir()
        return path

    def run(
        self, cwd: Path, argv: list[str], env: dict[str, str], timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """One installed command (``argv[0]`` from the venv's bin), to its end."""
        return subprocess.run(
            [str(self.bin / argv[0]), *argv[1:]],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def newsletter(
        self, cwd: Path, env: dict[str, str], *args: str
    ) -> subprocess.CompletedProcess[str]:
        """``newsletter ARGS``, which must succeed without a traceback."""
        result = self.run(cwd, ["newsletter", *args], env)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr, (args, result.stderr)
        return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built once from a copy of what the Dockerfile's builder copies (so the
    checkout gets no build/ folder and nothing else slips in)."""
    source = tmp_path_factory.mktemp("wheel-source")
    for name in builder_inputs():
        if name in ("./", "."):
            continue
        origin = ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, source / name)
    dist = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert "BuildBackendWarning" not in build.stderr, build.stderr
    (built,) = dist.glob("salon_newsletter-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """A fresh venv outside the checkout with the wheel installed, no extras."""
    base = tmp_path_factory.mktemp("installed")
    assert not base.is_relative_to(ROOT)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    # An installer refuses a wheel without a hash once a constraint carries hashes: the pins.
    pins = base / "constraints.txt"
    pins.write_text(
        "".join(f"{name}=={version}\n" for name, version in locked_pins(RUNTIME_LOCK).items()),
        encoding="utf-8",
    )
    # uv (the dev tool that writes the locks) resolves the wheel's declared dependencies as pip
    # does, from its cache in seconds instead of pip's minute and more; the venv is an ordinary
    # `python -m venv` one, and the checks below use its own pip. Bytecode is compiled, as pip
    # and the image do, so no command pays for it at start.
    uv = Path(sys.executable).parent / "uv"
    into = ["--python", str(venv / "bin" / "python"), "--compile-bytecode"]
    result = subprocess.run(
        [str(uv), "pip", "install", "--quiet", *into, "--constraint", str(pins), str(wheel)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    scratch = base / "work"
    scratch.mkdir()
    return Installed(venv, wheel, scratch)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Server]:
    """A throwaway PostgreSQL for this module, with nothing in it: the installed package
    runs its own migrations."""
    with postgres_server() as server:
        yield require(server, "PostgreSQL")


def new_database(server: Server, name: str) -> str:
    """A fresh database on ``server``; its URL."""
    import psycopg

    dsn = f"postgresql://postgres@127.0.0.1:{server.port}/postgres"
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return server.url.rsplit("/", 1)[0] + f"/{name}"


def future_record(folder: Path, number: int, *, capacity: int) -> Path:
    """A session record ten days ahead with ``capacity`` seats."""
    starts = (datetime.now(UTC) + timedelta(days=10)).replace(hour=11, minute=30, microsecond=0)
    record = {
        "number": number,
        "series": "机器学习开发者沙龙",
        "title": "安装包自检",
        "starts_at": starts.isoformat(),
        "ends_at": (starts + timedelta(hours=2)).isoformat(),
        "timezone": "Asia/Shanghai",
        "venue": {"mode": "offline", "name": "蒙民伟楼348室", "address": "杭州"},
        "registration": {"capacity": capacity},
        "talks": [{"kind": "lecture", "title": "从 wheel 开始"}],
    }
    path = folder / f"{number:03d}.yaml"
    path.write_text(yaml.safe_dump(record, allow_unicode=True), encoding="utf-8")
    return path


def start(
    installed: Installed, cwd: Path, argv: list[str], env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    """A long-running installed command in its own process group (stopped with the group)."""
    return subprocess.Popen(
        [str(installed.bin / argv[0]), *argv[1:]],
        cwd=cwd,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, then SIGKILL if it lingers."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``ready`` while ``process`` lives (a minute at most)."""
    deadline = time.monotonic() + 60
    while not ready():
        assert process.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.1)


# --- what the wheel holds, what the venv got ----------------------------------------------------


def test_the_wheel_holds_every_file_of_the_checkout(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected: list[str] = []
    for package in ("newsletter", "subscribers", "tasks"):
        expected += [
            p.relative_to(ROOT).as_posix()
            for p in (ROOT / package).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        ]
    # The owners' folders at the repository root, mapped into the package at build time.
    for folder in ("templates", "examples"):
        expected += [
            f"newsletter/{p.relative_to(ROOT).as_posix()}"
            for p in (ROOT / folder).rglob("*")
            if p.is_file()
        ]
    missing = sorted(set(expected) - names)
    assert not missing, f"not in the wheel (list the package in pyproject.toml): {missing}"
    assert "newsletter/migrations/script.py.mako" in names


def test_the_venv_imports_the_installed_package_not_the_checkout(installed: Installed) -> None:
    cwd = installed.empty_dir("import")
    probe = installed.run(
        cwd,
        ["python", "-c", "import newsletter, tasks, subscribers; print(newsletter.__file__)"],
        installed.env(),
    )
    assert probe.returncode == 0, probe.stderr
    location = Path(probe.stdout.strip()).resolve()
    assert location.is_relative_to(installed.venv.resolve()), location
    assert not location.is_relative_to(ROOT)
    check = installed.run(cwd, ["python", "-m", "pip", "check"], installed.env())
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_runtime_lock_holds_everything_the_wheel_pulled_in(installed: Installed) -> None:
    # The image installs the lock with --no-deps and then the wheel with --no-deps: that is
    # complete only if every distribution the wheel's dependencies brought in is locked, at the
    # version installed here.
    listed = installed.run(
        installed.empty_dir("freeze"),
        ["python", "-m", "pip", "list", "--format=json"],
        installed.env(),
    )
    assert listed.returncode == 0, listed.stderr
    got = {
        canonicalize_name(d["name"]): d["version"]
        for d in json.loads(listed.stdout)
        if canonicalize_name(d["name"]) not in INSTALLER_TOOLS | {"salon-newsletter"}
    }
    locked = locked_pins(RUNTIME_LOCK)
    missing = sorted(name for name in got if name not in locked)
    assert not missing, f"installed but not in requirements.lock (run `make lock`): {missing}"
    differs = {name: (got[name], locked[name]) for name in got if got[name] != locked[name]}
    assert not differs, differs
    assert "greenlet" in got  # SQLAlchemy 2.1 needs it at import, and brings it only as an extra


def test_the_locks_satisfy_pyproject() -> None:
    # pyproject.toml keeps the >= ranges; the locks must sit inside them, and CI (the dev lock)
    # must test the very runtime versions the image ships.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime, dev = locked_pins(RUNTIME_LOCK), locked_pins(DEV_LOCK)
    for lock, pins, requirements in (
        ("requirements.lock", runtime, project["dependencies"]),
        (
            "requirements-dev.lock",
            dev,
            project["dependencies"] + project["optional-dependencies"]["dev"],
        ),
    ):
        for line in requirements:
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            assert name in pins, f"{requirement.name} is not in {lock} (run `make lock`)"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"{lock} pins {name}=={pins[name]}, outside {requirement} (run `make lock`)"
            )
    assert {name: dev.get(name) for name in runtime} == runtime


# --- the commands, as installed ---------------------------------------------------------------


def test_demo_from_an_empty_directory(installed: Installed) -> None:
    cwd = installed.empty_dir("demo")
    result = installed.newsletter(cwd, installed.env(), "demo", "--no-serve")
    outbox = sorted((cwd / "var" / "outbox").glob("*.eml"))
    with (ROOT / "examples" / "subscribers.csv").open(encoding="utf-8") as handle:
        people = sum(1 for line in handle if "@" in line)
    assert len(outbox) == people
    message = email.message_from_bytes(outbox[0].read_bytes(), policy=email.policy.default)
    assert message.get_body(("html",)) is not None  # rendered from the packaged templates
    assert (cwd / "var" / "admin.token").is_file()
    assert "/admin" in result.stdout


def test_serve_on_postgresql_answers_an_rsvp(installed: Installed, postgres: Server) -> None:
    cwd = installed.empty_dir("serve")
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = installed.env(
        NEWSLETTER_DATABASE_URL=new_database(postgres, "serve"),
        NEWSLETTER_BASE_URL=base_url,
        **SECRETS,
    )
    record = future_record(cwd, 71, capacity=5)
    installed.newsletter(cwd, env, "sessions", "import", str(record))
    installed.newsletter(cwd, env, "subscribers", "add", "chen.jing@example.org", "--name", "陈静")
    # The RSVP link, black box: from the invitation exactly as it would be mailed.
    installed.newsletter(
        cwd, env, "preview", "71", "--to", "chen.jing@example.org", "--out", "x.eml"
    )
    message = email.message_from_bytes((cwd / "x.eml").read_bytes(), policy=email.policy.default)
    body = message.get_body(("html",))
    assert body is not None
    links = re.findall(rf'href="({re.escape(base_url)}/rsvp/[^"]+)"', body.get_content())
    assert links, "no RSVP link in the invitation"
    link = html.unescape(links[0])

    log = cwd / "serve.log"
    server = start(installed, cwd, ["newsletter", "serve", "--port", str(port)], env, log)
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, server, log)
        page = httpx.get(link, timeout=10)
        assert page.status_code == 200, page.text
        action = re.search(r'<form method="post" action="([^"]+)"', page.text)
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert action and token, page.text
        answered = httpx.post(
            httpx.URL(link).join(html.unescape(action[1])),
            data={"csrf": html.unescape(token[1]), "answer": "yes", "guests": "0"},
            timeout=10,
            follow_redirects=True,
        )
        assert answered.status_code == 200, answered.text
        assert "已记录你的答复" in answered.text
        # The image's HEALTHCHECK, exactly as written, against this server.
        # The image's HEALTHCHECK and the web service's, exactly as written, against this server.
        for check in (image_healthcheck(), services()["web"]["healthcheck"]["test"][1:]):
            probe = [arg.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for arg in check]
            assert installed.run(cwd, probe, env, timeout=30).returncode == 0, probe
    finally:
        stop(server)
    assert "Traceback" not in log.read_text(errors="replace")
    listed = installed.newsletter(cwd, env, "rsvp", "list", "71")
    assert "陈静" in listed.stdout and "是 1（座位 1/5）" in listed.stdout


def test_worker_sends_a_campaign_through_redis_to_smtp(
    installed: Installed, postgres: Server, start_smtp: Callable[..., SmtpServer]
) -> None:
    cwd = installed.empty_dir("worker")
    smtp = start_smtp()
    with redis_server() as redis:
        broker = require(redis, "Redis")
        env = installed.env(
            NEWSLETTER_DATABASE_URL=new_database(postgres, "worker"),
            NEWSLETTER_BROKER_URL=broker.url,
            NEWSLETTER_MAIL_URL=f"smtp://127.0.0.1:{smtp.port}",
            NEWSLETTER_BASE_URL="https://salon.example.org",
            **SECRETS,
        )
        record = future_record(cwd, 72, capacity=30)
        installed.newsletter(cwd, env, "sessions", "import", str(record))
        people = [f"reader{i}@example.org" for i in range(5)]
        (cwd / "people.csv").write_text(
            "email,name\n" + "".join(f"{a},读者{i}\n" for i, a in enumerate(people)),
            encoding="utf-8",
        )
        installed.newsletter(cwd, env, "subscribers", "import", "people.csv")
        created = installed.newsletter(cwd, env, "campaign", "create", "72")
        campaign_id = created.stdout.strip().splitlines()[-1]
        assert campaign_id.isdigit(), created.stdout

        log = cwd / "worker.log"
        worker = start(installed, cwd, ["newsletter", "worker"], env, log)
        try:
            wait_until(lambda: b" ready." in log.read_bytes(), worker, log)
            sent = installed.newsletter(cwd, env, "campaign", "send", campaign_id, "--wait")
            assert f"{len(people)} sent" in sent.stdout, sent.stdout
        finally:
            stop(worker)
    assert "Traceback" not in log.read_text(errors="replace")
    received = Counter(rcpt for message in smtp.handler.received for rcpt in message.rcpt_tos)
    assert received == Counter(people)  # every subscriber, exactly once


def compose_commands() -> list[list[str]]:
    """Every command docker-compose.yml and the image run with this project's package: each
    app service's command, their healthchecks, and the image's CMD."""
    commands = [image_command()]
    for spec in app_services().values():
        if spec.get("command"):
            commands.append([interpolate(str(arg), {}) for arg in spec["command"]])
        test = (spec.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test[0] == "CMD-SHELL":
            commands.append(shlex.split(interpolate(test[1], {})))
        elif isinstance(test, list) and test[0] == "CMD":
            commands.append(test[1:])
    ours = [argv for argv in commands if argv[0] in ("newsletter", "celery")]
    assert {argv[0] for argv in ours} == {"newsletter", "celery"}, commands
    return ours


def test_every_compose_command_exists_in_the_package(installed: Installed) -> None:
    cwd = installed.empty_dir("compose")
    env = installed.env(NEWSLETTER_BROKER_URL="redis://127.0.0.1:9/0", **SECRETS)
    for argv in compose_commands():
        # --help after the whole command: the program, its subcommands and every option must
        # exist, or the parser refuses before printing the help.
        result = installed.run(cwd, [*argv, "--help"], env, timeout=120)
        assert result.returncode == 0, (argv, result.stdout, result.stderr)
        assert "Usage" in result.stdout, (argv, result.stdout)


# Run inside the installed venv: every command and subcommand of `newsletter`, with --help,
# through typer's test runner (one process instead of one per command).
EVERY_HELP = """
import typer.main
from typer.testing import CliRunner
from newsletter.cli import app

def walk(command, path):
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, [*path, name])

for path in walk(typer.main.get_command(app), []):
    result = CliRunner().invoke(app, [*path, "--help"])
    print(result.exit_code, " ".join(path) or "(newsletter)", flush=True)
"""


def test_every_newsletter_command_starts_from_any_directory(installed: Installed) -> None:
    result = installed.run(
        installed.empty_dir("help"), ["python", "-c", EVERY_HELP], installed.env()
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split(" ", 1) for line in result.stdout.splitlines()]
    assert len(lines) > 20, result.stdout  # the groups and their commands, not just the root
    failed = [name for code, name in lines if code != "0"]
    assert not failed, result.stdout
