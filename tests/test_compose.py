"""docker-compose.yml, checked without Docker: CI is a bare Debian machine with no engine.

Two layers:

* Structural checks with PyYAML, always: the services, their healthchecks and dependencies,
  the app's environment against ``Settings`` (every key real, every default valid), and no
  secret written into the file.
* The real validator when it is installed: Debian's ``docker-compose`` (1.29, Python) runs
  ``config`` offline, without a Docker daemon, and knows the Compose Specification (top-level
  ``x-`` extensions, anchors and merge keys, ``service_completed_successfully``). It is
  required under ``CI=true`` (.ci/run installs it) and skipped locally when missing.
* The Dockerfile, read as text (no engine to build it): a builder stage makes the wheel, the
  runtime stage installs the hash-checked runtime lock and that wheel alone, runs as a user
  that is not root, owns /data, and has a HEALTHCHECK on /healthz. That every command the
  services run exists in the installed package is tests/test_wheel.py's part.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from newsletter.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
IN_CI = os.environ.get("CI", "").lower() == "true"

REQUIRED_SERVICES = {"web", "worker", "beat", "postgres", "redis", "mailpit"}
NEEDS_HEALTHCHECK = {"postgres", "redis", "mailpit", "web", "worker"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# The variables an operator must set (``${VAR:?…}`` in the file); everything else has a default.
REQUIRED_VARIABLES = {"NEWSLETTER_SECRET_KEY": "s3cret-for-test", "NEWSLETTER_ADMIN_TOKEN": "t0ken"}
SECRET_NAME = re.compile(r"(SECRET|TOKEN|PASSWORD|PASSWD|_KEY)$")
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $VAR, and $$ (a dollar).
VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
WHOLE_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}$")


class MissingVariable(Exception):
    """A ``${VAR:?…}`` whose variable is not set."""


def interpolate(value: str, env: dict[str, str]) -> str:
    """Substitute variables the way Compose does (the forms this file may use)."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        present = name in env
        unset_or_empty = not env.get(name)
        if op in (":-", "-") and (unset_or_empty if op == ":-" else not present):
            return arg
        if op in (":?", "?") and (unset_or_empty if op == ":?" else not present):
            raise MissingVariable(f"{name}: {arg}")
        return env.get(name, "")

    return VARIABLE.sub(replace, value)


def load() -> dict[str, Any]:
    """The compose file as PyYAML reads it (anchors and ``<<`` merge keys resolved)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found = load()["services"]
    assert isinstance(found, dict)
    return found


def app_services() -> dict[str, dict[str, Any]]:
    """The services that run this project's image (built from the Dockerfile)."""
    return {name: spec for name, spec in services().items() if "build" in spec}


def environment(spec: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (Compose allows a list of KEY=value too)."""
    env = spec.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def depends_on(spec: dict[str, Any]) -> dict[str, str]:
    """``depends_on`` as target → condition (the short list form means service_started)."""
    deps = spec.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (cond or {}).get("condition", "service_started") for name, cond in deps.items()}


# --- structure -------------------------------------------------------------------------------


def test_the_services_exist() -> None:
    assert set(services()) >= REQUIRED_SERVICES
    assert {"web", "worker", "beat"} <= set(app_services())


def test_every_service_has_an_image_or_a_build() -> None:
    for name, spec in services().items():
        assert spec.get("image") or spec.get("build"), name
    for name, spec in app_services().items():
        build = spec["build"]
        if isinstance(build, str):
            build = {"context": build}
        dockerfile = ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), name


def test_healthchecks() -> None:
    for name in NEEDS_HEALTHCHECK:
        check = services()[name].get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), name
        test = check.get("test")
        assert test, name
        if isinstance(test, list):
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name


def test_dependencies_exist_and_can_be_met() -> None:
    all_services = services()
    for name, spec in all_services.items():
        for target, condition in depends_on(spec).items():
            assert target in all_services, f"{name} depends on unknown service {target}"
            assert target != name
            assert condition in CONDITIONS, f"{name} → {target}: {condition}"
            target_spec = all_services[target]
            if condition == "service_healthy":
                assert target_spec.get("healthcheck"), f"{name} waits for {target}'s health"
            if condition == "service_completed_successfully":
                # A one-shot job that Compose restarts after success never "completes".
                assert target_spec.get("restart", "no") in ("no", "on-failure"), target


def test_app_services_reach_the_database_and_the_broker() -> None:
    # Directly or through another service (e.g. after the migration job, which waits for both).
    all_services = services()

    def reachable(name: str) -> set[str]:
        seen: set[str] = set()
        todo = [name]
        while todo:
            for target in depends_on(all_services[todo.pop()]):
                if target not in seen:
                    seen.add(target)
                    todo.append(target)
        return seen

    for name in app_services():
        assert {"postgres", "redis"} <= reachable(name), name


def test_app_environment_names_real_settings() -> None:
    fields = {f"NEWSLETTER_{name.upper()}" for name in Settings.model_fields}
    for name, spec in app_services().items():
        keys = set(environment(spec))
        assert keys, f"{name} has no environment"
        assert keys <= fields, f"{name}: not settings: {sorted(keys - fields)}"
        for needed in ("DATABASE_URL", "BROKER_URL", "MAIL_URL", "SECRET_KEY", "ADMIN_TOKEN"):
            assert f"NEWSLETTER_{needed}" in keys, f"{name} lacks NEWSLETTER_{needed}"


def test_app_urls_name_services_of_this_file() -> None:
    all_services = services()
    for name, spec in app_services().items():
        for key, raw in environment(spec).items():
            value = interpolate(raw, REQUIRED_VARIABLES)
            if key.endswith("_URL") and key != "NEWSLETTER_BASE_URL" and "://" in value:
                host = urlsplit(value).hostname
                assert host in all_services, f"{name}: {key} points at {host}"


def test_app_environment_defaults_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the containers get when the operator sets only the required variables.
    for name in list(os.environ):
        if name.startswith("NEWSLETTER_"):
            monkeypatch.delenv(name)
    for name, spec in app_services().items():
        env = {k: interpolate(v, REQUIRED_VARIABLES) for k, v in environment(spec).items()}
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            settings = Settings(_env_file=None)
        assert settings.broker_url and settings.broker_url.startswith("redis://"), name
        assert settings.rate_limit is None or settings.rate_limit >= 0, name


def test_secrets_are_not_written_into_the_file() -> None:
    for name, spec in services().items():
        for key, value in environment(spec).items():
            if SECRET_NAME.search(key):
                assert WHOLE_REFERENCE.match(value), f"{name}: {key} is written in the file"
            if "://" in value:
                password = urlsplit(value).password
                if password is not None:
                    assert WHOLE_REFERENCE.match(password), f"{name}: password in {key}"
    for spec in app_services().values():
        env = environment(spec)
        for key in REQUIRED_VARIABLES:
            # Required, no default: a deployment that forgot them must not start.
            with pytest.raises(MissingVariable):
                interpolate(env[key], {})


def test_datastores_publish_no_ports() -> None:
    # Their passwords have development defaults: they must stay on the compose network.
    for name in ("postgres", "redis"):
        assert not services()[name].get("ports"), name


def test_interpolate_follows_compose() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} $$HOST $SET", env) == (
        "v d d  $HOST v"
    )
    with pytest.raises(MissingVariable):
        interpolate("${EMPTY:?required}", env)
    assert interpolate("${EMPTY?required}", env) == ""


# --- the real validator ----------------------------------------------------------------------


def docker_compose() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        if IN_CI:
            pytest.fail("docker-compose is required in CI (.ci/run installs it) but is missing")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    return binary


def run_config(
    compose_file: Path, tmp_path: Path, variables: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` on ``compose_file``, hermetic: no daemon, no stray .env."""
    env_file = tmp_path / "empty.env"
    env_file.write_text("", encoding="utf-8")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **variables}
    return subprocess.run(
        [
            docker_compose(),
            "--file",
            str(compose_file),
            "--project-directory",
            str(ROOT),  # the build context (.) must exist for a copy in tmp_path too
            "--env-file",
            str(env_file),
            "config",
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_docker_compose_accepts_the_file(tmp_path: Path) -> None:
    result = run_config(COMPOSE_FILE, tmp_path, REQUIRED_VARIABLES)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    # Compose resolved anchors, merge keys and variables as the structural checks assume.
    assert set(resolved["services"]) == set(services())
    for name, spec in app_services().items():
        expected = {k: interpolate(v, REQUIRED_VARIABLES) for k, v in environment(spec).items()}
        assert environment(resolved["services"][name]) == expected, name
        assert depends_on(resolved["services"][name]) == depends_on(spec), name


def test_docker_compose_requires_the_secrets(tmp_path: Path) -> None:
    result = run_config(COMPOSE_FILE, tmp_path, {}, "--quiet")
    assert result.returncode != 0
    assert "NEWSLETTER_SECRET_KEY" in result.stderr or "NEWSLETTER_ADMIN_TOKEN" in result.stderr


@pytest.mark.parametrize(
    ("old", "new", "complaint"),
    [
        ("condition: service_completed_successfully", "condition: service_done", "service_done"),
        ("    image: redis:7", "    imagee: redis:7", "imagee"),
        ("      retries: 20", "      retries: twenty", "twenty"),
        ("\n  mailpit:\n", "\n  mail:\n", "mailpit"),  # worker's dependency no longer exists
        ("volumes:\n  pgdata:\n", "volumes:\n", "pgdata"),  # an undeclared named volume
    ],
)
def test_docker_compose_rejects_a_broken_file(
    tmp_path: Path, old: str, new: str, complaint: str
) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert old in text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1), encoding="utf-8")
    result = run_config(broken, tmp_path, REQUIRED_VARIABLES, "--quiet")
    assert result.returncode != 0
    assert complaint in result.stderr


# --- the Dockerfile --------------------------------------------------------------------------


@dataclass
class Stage:
    """One ``FROM`` stage of the Dockerfile: its name and its instructions, in order."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        """The arguments of every ``keyword`` instruction of this stage."""
        return [args for word, args in self.instructions if word == keyword]


def dockerfile_stages(text: str | None = None) -> list[Stage]:
    """The Dockerfile's stages (comments dropped, continuation lines joined)."""
    source = DOCKERFILE.read_text(encoding="utf-8") if text is None else text
    lines: list[str] = []
    pending = ""
    for raw in source.splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append(pending + raw)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, args = line.strip().partition(" ")
        keyword, args = keyword.upper(), " ".join(args.split())
        if keyword == "FROM":
            base, _, name = args.partition(" AS ") if " AS " in args else args.partition(" as ")
            stages.append(Stage(base.strip(), name.strip() or None))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


def exec_form(args: str) -> list[str]:
    """The argv of an instruction written in exec form (``["prog", "arg"]``)."""
    argv = json.loads(args)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), args
    return argv


def image_healthcheck(stages: list[Stage] | None = None) -> list[str]:
    """The runtime image's HEALTHCHECK command, as an argv."""
    checks = (stages or dockerfile_stages())[-1].all("HEALTHCHECK")
    assert len(checks) == 1, "the runtime image has no HEALTHCHECK (or several)"
    _, _, command = checks[0].partition("CMD ")
    assert command, f"HEALTHCHECK without CMD: {checks[0]}"
    return exec_form(command)


def image_command() -> list[str]:
    """The runtime image's default command (CMD), as an argv."""
    (cmd,) = dockerfile_stages()[-1].all("CMD")
    return exec_form(cmd)


def builder_inputs() -> list[str]:
    """What the builder stage copies from the build context: the wheel's sources."""
    builder = dockerfile_stages()[0]
    copied: list[str] = []
    for args in builder.all("COPY"):
        assert "--from" not in args
        *sources, _ = shlex.split(args)
        copied.extend(sources)
    return copied


def check_built_from_a_wheel(stages: list[Stage]) -> None:
    """A builder stage makes the wheel; the runtime stage installs the hash-checked runtime
    lock, then that wheel alone, and holds no source tree."""
    assert len(stages) >= 2, "one stage: the image would carry the build tools and the sources"
    builder, runtime = stages[0], stages[-1]
    assert builder.name, "the builder stage needs a name for COPY --from"
    assert any("pip wheel" in run and "--no-deps" in run for run in builder.all("RUN"))
    copies = runtime.all("COPY")
    from_builder = [c for c in copies if c.startswith(f"--from={builder.name} ")]
    assert from_builder, "the runtime stage takes nothing from the builder"
    for copy in copies:
        if copy in from_builder:
            continue
        *sources, _ = shlex.split(copy)
        assert all((ROOT / s).is_file() for s in sources), f"a source tree in the image: {copy}"
    runs = runtime.all("RUN")
    locked = [r for r in runs if "-r " in r and "requirements.lock" in r]
    assert locked and "--require-hashes" in locked[0], "the runtime lock, hash-checked"
    wheel = [r for r in runs if "pip install" in r and ".whl" in r]
    assert wheel and "--no-deps" in wheel[0], "the wheel alone, on top of the lock"
    assert runs.index(locked[0]) < runs.index(wheel[0])


def check_runs_as_a_user_owning_data(stages: list[Stage]) -> None:
    """The runtime stage ends as a user that is not root and owns NEWSLETTER_VAR_DIR=/data."""
    runtime = stages[-1]
    users = runtime.all("USER")
    assert users, "the image runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]}"
    last_user = max(i for i, (word, _) in enumerate(runtime.instructions) if word == "USER")
    assert not [w for w, _ in runtime.instructions[last_user:] if w == "RUN"], "RUN after USER"
    assert "NEWSLETTER_VAR_DIR=/data" in " ".join(runtime.all("ENV"))
    assert any(f"chown {user}:" in run and "/data" in run for run in runtime.all("RUN"))
    assert any("useradd" in run and user in run for run in runtime.all("RUN"))


def check_healthcheck_on_healthz(stages: list[Stage]) -> None:
    """The HEALTHCHECK probes /healthz on the port the image's CMD serves on."""
    argv = image_healthcheck(stages)
    assert argv[0] == "python" and "/healthz" in " ".join(argv)
    (cmd,) = stages[-1].all("CMD")
    served = exec_form(cmd)
    assert "--port" in served, f"CMD {served} names no port"
    port = served[served.index("--port") + 1]
    assert f"127.0.0.1:{port}/healthz" in " ".join(argv)


DOCKERFILE_CHECKS = [
    check_built_from_a_wheel,
    check_runs_as_a_user_owning_data,
    check_healthcheck_on_healthz,
]


@pytest.mark.parametrize("check", DOCKERFILE_CHECKS, ids=lambda c: c.__name__)
def test_the_dockerfile(check: Any) -> None:
    check(dockerfile_stages())


# The image before the lock and the wheel: one stage, an editable install of the sources,
# root, no HEALTHCHECK. Every check above refuses it.
SOURCE_IMAGE = """\
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY newsletter ./newsletter
RUN pip install --no-cache-dir -e .
ENV NEWSLETTER_VAR_DIR=/data
VOLUME /data
CMD ["newsletter", "--help"]
"""


@pytest.mark.parametrize(
    ("check", "broken"),
    [
        *((check, SOURCE_IMAGE) for check in DOCKERFILE_CHECKS),
        (
            check_runs_as_a_user_owning_data,
            re.sub(r"(?m)^USER .*$", "USER root", DOCKERFILE.read_text(encoding="utf-8")),
        ),
        (
            check_healthcheck_on_healthz,
            re.sub(r"(?ms)^HEALTHCHECK .*?\n(?=\S)", "", DOCKERFILE.read_text(encoding="utf-8")),
        ),
        (
            check_built_from_a_wheel,
            DOCKERFILE.read_text(encoding="utf-8").replace(" --require-hashes", ""),
        ),
    ],
    ids=[
        "source-image-wheel",
        "source-image-user",
        "source-image-health",
        "root",
        "no-health",
        "unchecked-lock",
    ],
)
def test_the_dockerfile_checks_refuse_a_broken_file(check: Any, broken: str) -> None:
    with pytest.raises(AssertionError):
        check(dockerfile_stages(broken))


def test_every_file_the_dockerfile_copies_exists() -> None:
    for stage in dockerfile_stages():
        for copy in stage.all("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _ = shlex.split(copy)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_services_that_serve_no_http_replace_the_image_healthcheck() -> None:
    # The image's check probes the web server; a worker or beat container inheriting it would be
    # reported unhealthy forever.
    for name, spec in app_services().items():
        if "serve" in (spec.get("command") or []):
            continue
        check = spec.get("healthcheck")
        assert check, f"{name} inherits the image's /healthz check but serves no HTTP"
        assert check.get("disable") or "healthz" not in str(check.get("test")), name


def test_the_build_context_leaves_secrets_and_local_state_out() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".env", ".venv", "var"} <= ignored
