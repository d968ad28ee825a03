"""Throwaway local servers (PostgreSQL, Redis) for the tests and the benchmarks.

Each server lives in a temporary directory, listens on loopback only, and is stopped by the
caller. When a binary is missing the helpers return None; the fixtures then skip locally but
fail under ``CI=true``, where every real part must run.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL bin directory (Debian layout), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class Server:
    """A running throwaway server."""

    url: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None


def _as_postgres_user(argv: list[str]) -> list[str]:
    # initdb refuses to run as root; Debian's postgres account exists once the package is in.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@contextlib.contextmanager
def postgres_server() -> Iterator[Server | None]:
    """Start PostgreSQL in a temp dir (fsync off: throwaway data) and yield its URL."""
    bindir = postgres_bin()
    if bindir is None:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="newsletter-pg-"))
    data = directory / "data"
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres_user(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale",
                "C",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    options = (
        f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    subprocess.run(
        _as_postgres_user(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-w",
                "-l",
                str(directory / "log"),
                "start",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        yield Server(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", port, directory)
    finally:
        subprocess.run(
            _as_postgres_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(directory, ignore_errors=True)


def start_redis(port: int, directory: Path) -> subprocess.Popen[bytes]:
    """redis-server on 127.0.0.1:``port`` without persistence; returns once it listens."""
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _wait_for_port(port)
    return process


@contextlib.contextmanager
def redis_server() -> Iterator[Server | None]:
    """Start redis-server on a free loopback port, no persistence, and yield its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="newsletter-redis-"))
    port = free_port()
    process = start_redis(port, directory)
    try:
        yield Server(f"redis://127.0.0.1:{port}/0", port, directory, process)
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(directory, ignore_errors=True)
