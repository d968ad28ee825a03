"""Processes, Postfix's SMTP test tools and /proc measurements for ``benchmarks/send.py``.

Nothing here imports the product: the send benchmark drives the product only through the
``newsletter`` command and ``NEWSLETTER_*`` variables, so these helpers stay valid while the
pipeline changes underneath.

* :class:`Processes`: every process the benchmark starts, each in a session (process group) of
  its own, so that ending one ends its whole tree (a Celery worker and its pool child) by the
  group id of a process we started, and nothing else.
* :class:`Sink`: Postfix's ``smtp-sink`` on a loopback port. It accepts and throws away mail;
  what it saw is read from its own output: ``-c`` running counters (the live count) and ``-v``
  conversation log (``MAIL FROM`` / ``RCPT TO`` per transaction), or with ``dump=True`` each
  message written to a file on tmpfs, read for its ``Message-ID`` and deleted at once.
* :func:`smtp_source`: Postfix's ``smtp-source`` pushing one message file into the sink.
* :class:`ProcessWatch`: peak RSS (``VmHWM``) and CPU seconds of process trees, from /proc.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

T = TypeVar("T")


class BenchmarkError(RuntimeError):
    """Something the benchmark needs did not happen; the message says what."""


# --------------------------------------------------------------------------- processes


class Processes:
    """Starts processes in their own sessions and ends exactly those, by process group."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdout: IO[bytes] | int | None = subprocess.DEVNULL,
        stderr: IO[bytes] | int | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as the leader of a new process group (its children join it)."""
        process = subprocess.Popen(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        self._started.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes], *, grace: float = 10.0) -> None:
        """SIGTERM the process group of ``process``; SIGKILL what is left after ``grace`` s.

        The leader is waited for *without* being reaped, so its pid (the group id) cannot be
        given to another process while the group is signalled; only then is it reaped.
        """
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while not _exited(process.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        # Whatever is left of the group (the leader, or a pool child it left behind).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop_all(self) -> None:
        """Stop every process started here, newest first; never raises."""
        for process in reversed(self._started):
            with contextlib.suppress(Exception):
                self.stop(process)
        self._started.clear()


def _exited(pid: int) -> bool:
    """Whether our child ``pid`` has exited, leaving it unreaped (a zombie keeps its pid)."""
    try:
        found = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True  # already reaped
    return found is not None


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120.0,
) -> str:
    """Run a command to completion; its stdout, or BenchmarkError with its stderr."""
    try:
        done = subprocess.run(
            list(argv),
            env=dict(env) if env is not None else None,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchmarkError(f"{' '.join(argv)}: no answer after {timeout:.0f} s") from None
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").strip()[-2000:]
        raise BenchmarkError(f"{' '.join(argv)} exited with {done.returncode}:\n{error}")
    return done.stdout.decode(errors="replace")


def wait_until(
    check: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.1
) -> T:
    """Call ``check`` until it returns something other than None (or False); at most
    ``timeout`` seconds, then BenchmarkError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise BenchmarkError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "


def cpu_seconds(pid: int) -> float:
    """CPU time of ``pid`` and of its children it has reaped (user + system), in seconds."""
    fields = _stat_fields(pid)
    # Fields 14-17 of proc(5) (utime, stime, cutime, cstime), counted from 3 after the comm.
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants alive now."""
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(children(current))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process tree: every live member plus what they reaped."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, ValueError):
            total += cpu_seconds(member)
    return total


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of ``pid`` in kB: the peak resident set the kernel recorded, and now."""
    hwm = rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
        elif line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return hwm, rss


@dataclass(frozen=True)
class MachineCpu:
    """CPU seconds of the whole machine since boot, from the first line of /proc/stat."""

    busy: float  # user, nice, system, irq, softirq
    idle: float  # idle, iowait
    steal: float  # taken by the hypervisor for other guests

    @classmethod
    def now(cls) -> MachineCpu:
        """The counters now."""
        line = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in line[:8])
        return cls(
            (user + nice + system + irq + softirq) / CLOCK_TICKS,
            (idle + iowait) / CLOCK_TICKS,
            steal / CLOCK_TICKS,
        )

    def __sub__(self, other: MachineCpu) -> MachineCpu:
        return MachineCpu(self.busy - other.busy, self.idle - other.idle, self.steal - other.steal)


def all_cpu_seconds() -> dict[int, tuple[str, float]]:
    """Every process's (command name, own user + system CPU seconds), for finding who else
    used the machine during a measurement."""
    found: dict[int, tuple[str, float]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = Path(f"/proc/{entry.name}/stat").read_text()
            name = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw[raw.rindex(")") + 2 :].split()
            found[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / CLOCK_TICKS)
    return found


def command_line(pid: int) -> str:
    """The command line of ``pid``, for reports."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return "?"


@dataclass
class Peak:
    """The largest figures seen for one process."""

    pid: int
    role: str
    hwm_kb: int = 0
    rss_kb: int = 0


class ProcessWatch:
    """Samples the memory of process trees every ``interval`` seconds in a thread.

    ``VmHWM`` is the kernel's own high-water mark, so sampling only has to find the processes
    (a pool child may appear after the worker starts); the peak itself is never missed.
    ``roles`` maps a root pid to a name; a root's descendants are named ``NAME/child``.
    """

    def __init__(self, roles: Mapping[int, str], interval: float = 0.25) -> None:
        self.roles = dict(roles)
        self.interval = interval
        self.peaks: dict[int, Peak] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="process-watch", daemon=True)

    def sample(self) -> None:
        """Record the memory of every live process of every watched tree once."""
        for root, role in self.roles.items():
            for pid in process_tree(root):
                try:
                    hwm, rss = memory_kb(pid)
                except (OSError, ValueError):
                    continue
                peak = self.peaks.setdefault(
                    pid, Peak(pid, role if pid == root else f"{role}/child")
                )
                peak.hwm_kb = max(peak.hwm_kb, hwm)
                peak.rss_kb = max(peak.rss_kb, rss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> ProcessWatch:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def of(self, role: str) -> list[Peak]:
        """Peaks of the processes in ``role`` (the root), in pid order."""
        return sorted((p for p in self.peaks.values() if p.role == role), key=lambda p: p.pid)


# --------------------------------------------------------------------------- smtp-sink


_COUNTER = re.compile(rb"mesg=(\d+)")
# smtplib writes "mail FROM:<…>", smtp-source "MAIL FROM:<…>": the sink logs them as given.
_MAIL_FROM = re.compile(rb": mail from:<([^>]*)>", re.IGNORECASE)
_RCPT_TO = re.compile(rb": rcpt to:<([^>]*)>", re.IGNORECASE)
_DATA_END = re.compile(rb": \.$", re.MULTILINE)
_DUMP_SENDER = re.compile(rb"^X-Mail-Args: <([^>]*)>", re.MULTILINE)
_DUMP_RCPT = re.compile(rb"^X-Rcpt-Args: <([^>]*)>", re.MULTILINE)
_DUMP_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>]*>)", re.MULTILINE | re.IGNORECASE)


@dataclass
class Seen:
    """What the sink received in one phase of the benchmark, from its own output."""

    messages: int = 0  # transactions completed ("." answered 250)
    senders: Counter[bytes] = field(default_factory=Counter)  # envelope MAIL FROM
    recipients: Counter[bytes] = field(default_factory=Counter)  # envelope RCPT TO
    message_ids: Counter[bytes] = field(default_factory=Counter)  # dump mode only

    @staticmethod
    def extra_copies(counts: Counter[bytes]) -> int:
        """How many items arrived more than once, counting each copy after the first."""
        return sum(n - 1 for n in counts.values() if n > 1)


def _sink_user() -> list[str]:
    # smtp-sink refuses to run as root without -u; it drops to that user after binding.
    if os.geteuid() != 0:
        return []
    for user in ("postfix", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return ["-u", user]
    raise BenchmarkError("smtp-sink needs an unprivileged user to run as (postfix or nobody)")


class Sink:
    """Postfix's ``smtp-sink`` on ``127.0.0.1:port``, with what it saw read back by phase.

    It runs with its default EHLO (PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES, DSN: ``-8`` or
    ``-p`` would *hide* those) and a listen backlog of 256. Always ``-c`` (running counters
    on stdout, written to a file: the live count) and ``-v`` (every command of every session
    on stderr, written to a file: ``MAIL FROM``, ``RCPT TO`` and ``.`` per message).

    With ``dump``, every transaction is also written by the sink to its own file under a
    directory per second on tmpfs (``-d DIR/%Y%m%d%H%M%S/m.``); a reader thread takes each
    finished second's files, keeps the ``Message-ID``, envelope sender and recipient of each,
    and deletes them, so a million messages never fill memory.
    """

    BACKLOG = 256

    def __init__(
        self,
        processes: Processes,
        directory: Path,
        *,
        dump: bool,
        group: Callable[[bytes], str] = lambda sender: "all",
    ) -> None:
        """Prepare a sink whose logs (and dumps) live under ``directory`` (tmpfs, ideally).

        Dumped messages are tallied by ``group(envelope sender)``: dumps are read seconds
        after they were written, so the sender, not the time, tells which traffic they were.
        """
        self.processes = processes
        self.directory = directory
        self.dump = dump
        self.group = group
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.counter_path = directory / "sink-counters.log"
        self.log_path = directory / "sink-verbose.log"
        self.dump_dir = directory / "dump"
        self._phase_starts: list[tuple[str, int]] = []
        self._dumped: dict[str, Seen] = {}
        self._dump_lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._stop_reader = threading.Event()
        self.dump_errors = 0

    def start(self, port: int) -> None:
        """Start the sink on ``port`` and wait until it accepts connections."""
        self.directory.mkdir(parents=True, exist_ok=True)
        user = _sink_user()
        argv = [SMTP_SINK, *user, "-c", "-v"]
        if self.dump:
            self.dump_dir.mkdir()
            if user:  # the sink writes as that user: it must reach and own the dump folder
                self.directory.chmod(0o711)
                shutil.chown(self.dump_dir, user[1])
            argv += ["-d", f"{self.dump_dir}/%Y%m%d%H%M%S/m."]
        argv += [f"127.0.0.1:{port}", str(self.BACKLOG)]
        self.port = port
        self.process = self.processes.start(
            argv,
            stdout=self.counter_path.open("wb"),
            stderr=self.log_path.open("wb"),
        )
        wait_until(self._listening, timeout=10, what=f"smtp-sink on port {port}")
        if self.dump:
            self._reader = threading.Thread(target=self._read_dumps, name="dumps", daemon=True)
            self._reader.start()

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise BenchmarkError(f"smtp-sink exited: {self.log_path.read_text(errors='replace')}")
        return _port_open(self.port)

    @property
    def pid(self) -> int:
        """The sink's process id."""
        assert self.process is not None
        return self.process.pid

    def count(self) -> int:
        """Messages received since the sink started (its own ``-c`` counter)."""
        with self.counter_path.open("rb") as counters:
            counters.seek(0, os.SEEK_END)
            size = counters.tell()
            counters.seek(max(0, size - 256))
            found = _COUNTER.findall(counters.read())
        return int(found[-1]) if found else 0

    def begin(self, phase: str) -> None:
        """From now on, what the sink receives belongs to ``phase`` (call when it is quiet)."""
        self._phase_starts.append((phase, self.log_path.stat().st_size))

    def wait_quiet(self, target: int, timeout: float) -> None:
        """Wait until the counter reaches ``target`` (messages since start)."""
        wait_until(
            lambda: self.count() >= target, timeout=timeout, what=f"{target} messages at the sink"
        )

    def envelopes(self) -> dict[str, Seen]:
        """What each phase received, from the ``-v`` log: messages ended ("."), and the
        envelope senders and recipients given. The log interleaves concurrent sessions line
        by line, so it cannot say which envelope each message had; the dumps can."""
        log = self.log_path.read_bytes()
        bounds = [start for _, start in self._phase_starts] + [len(log)]
        result: dict[str, Seen] = {}
        for (phase, _), start, end in zip(self._phase_starts, bounds, bounds[1:], strict=False):
            chunk = log[start:end]
            result[phase] = Seen(
                messages=len(_DATA_END.findall(chunk)),
                senders=Counter(_MAIL_FROM.findall(chunk)),
                recipients=Counter(_RCPT_TO.findall(chunk)),
            )
        return result

    def dumped(self, group: str) -> Seen:
        """Dump mode: the messages whose envelope sender is in ``group``, one file each."""
        self.finish_dumps()
        with self._dump_lock:
            return self._dumped.get(group, Seen())

    # The dump reader: a directory per second; a second is read once the clock is 3 s past
    # it (a transaction takes milliseconds), and whatever is left is read at the end.
    def _read_dumps(self) -> None:
        while not self._stop_reader.wait(0.5):
            self._drain(older_than=time.strftime("%Y%m%d%H%M%S", time.localtime(time.time() - 3)))

    def _drain(self, *, older_than: str | None) -> None:
        with contextlib.suppress(FileNotFoundError):
            for second in sorted(os.listdir(self.dump_dir)):
                if older_than is not None and second >= older_than:
                    break
                folder = self.dump_dir / second
                for name in os.listdir(folder):
                    self._take(folder / name)
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def _take(self, path: Path) -> None:
        try:
            with path.open("rb") as handle:
                head = handle.read(16384)  # the sink's headers, then the message's
            path.unlink()
        except OSError:
            self.dump_errors += 1
            return
        header = head.split(b"\n\n", 1)[0]
        found = _DUMP_MESSAGE_ID.search(header)
        sender = _DUMP_SENDER.search(header)
        with self._dump_lock:
            seen = self._dumped.setdefault(self.group(sender.group(1) if sender else b""), Seen())
            seen.messages += 1
            seen.message_ids[found.group(1) if found else b"(none)"] += 1
            if sender:
                seen.senders[sender.group(1)] += 1
            for rcpt in _DUMP_RCPT.findall(header):
                seen.recipients[rcpt] += 1

    def finish_dumps(self) -> None:
        """Read every dump left (once the sink is quiet): the reader thread stops."""
        if self._reader is not None:
            self._stop_reader.set()
            self._reader.join(30)
            self._reader = None
        if self.dump:
            self._drain(older_than=None)

    def stop(self) -> None:
        """Stop the sink (the reader thread first)."""
        self._stop_reader.set()
        if self._reader is not None:
            self._reader.join(30)
        if self.process is not None:
            self.processes.stop(self.process)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as s:
        s.recv(1)  # the greeting: the sink is serving, not just listening
        return True
    return False


# --------------------------------------------------------------------------- smtp-source


def lf_copy(message: Path, target: Path) -> Path:
    """``message`` with LF line ends: ``smtp-source -F`` adds CRLF to every line it reads, so
    this file goes on the wire as exactly the CRLF bytes of ``message``."""
    data = message.read_bytes()
    if b"\r\n" not in data:
        raise BenchmarkError(f"{message}: expected CRLF line ends (a message as sent)")
    target.write_bytes(data.replace(b"\r\n", b"\n"))
    return target


def smtp_source(
    sink: Sink,
    message_file: Path,
    *,
    count: int,
    sessions: int,
    sender: str,
    recipient: str,
    timeout: float,
) -> float:
    """Push ``count`` copies of ``message_file`` into the sink over ``sessions`` parallel
    connections, each reused for its share (``-d``), one transaction at a time per connection
    (smtp-source has no pipelining, like smtplib). Returns messages per second, timed from
    start to the last message accepted (the sink's counter)."""
    before = sink.count()
    argv = [
        SMTP_SOURCE,
        "-s",
        str(sessions),
        "-d",
        "-m",
        str(count),
        "-M",
        "ceiling.bench.invalid",
        "-f",
        sender,
        "-t",
        recipient,
        "-F",
        str(message_file),
        f"127.0.0.1:{sink.port}",
    ]
    started = time.perf_counter()
    run(argv, timeout=timeout)
    elapsed = time.perf_counter() - started
    received = sink.count() - before
    if received != count:
        # The counter is written as "." is answered, before smtp-source hears the reply.
        sink.wait_quiet(before + count, timeout=10)
    return count / elapsed
