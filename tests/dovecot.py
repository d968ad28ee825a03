"""A throwaway Dovecot IMAP server for tests: its own configuration in a temporary directory,
loopback only, plaintext login from a passwd-file, Maildir storage, STARTTLS and IMAPS with a
self-signed certificate made by openssl.

``dovecot_server()`` yields None when Dovecot is not installed (``apt-get install
dovecot-imapd``): the fixtures skip locally and fail under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import shutil
import signal
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.servers import _wait_for_port, free_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USER = "bounces@example.org"
PASSWORD = "s3cret p@ss/word"  # characters that must be percent-encoded in a URL
UTF8_USER, UTF8_PASSWORD = "fbl@example.org", "密码 pässword"  # a second user, not ASCII


@dataclass
class Dovecot:
    """A running server: ``port`` (IMAP, STARTTLS offered), ``tls_port`` (IMAPS), and the
    certificate a client must trust (``ssl_context()``)."""

    directory: Path
    port: int
    tls_port: int
    certificate: Path
    process: subprocess.Popen[bytes]

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting this server's self-signed certificate."""
        context = ssl.create_default_context(cafile=str(self.certificate))
        context.check_hostname = False  # the certificate is for "localhost"; we dial 127.0.0.1
        return context

    def client(self) -> imaplib.IMAP4:
        """A logged-in client on the plain port (for a test to put messages in or look)."""
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        client.login(USER, PASSWORD)
        return client

    def append(self, raw: bytes, mailbox: str = "INBOX") -> None:
        """Put ``raw`` into ``mailbox`` unseen, as a delivery would."""
        client = self.client()
        try:
            client.create(mailbox)  # "already exists" is fine
            status, data = client.append(mailbox, "", None, raw)
            assert status == "OK", data
        finally:
            client.logout()

    def flags(self, mailbox: str = "INBOX") -> list[str]:
        """The flags of each message of ``mailbox``, in UID order."""
        client = self.client()
        try:
            client.select(mailbox)
            status, data = client.uid("FETCH", "1:*", "(FLAGS)")
            assert status == "OK", data
            return [part.decode() for part in data if isinstance(part, bytes)]
        finally:
            client.logout()

    def set_unseen(self, mailbox: str = "INBOX") -> None:
        """Take \\Seen off every message (as if the poll had died before marking)."""
        client = self.client()
        try:
            client.select(mailbox)
            client.uid("STORE", "1:*", "-FLAGS", "(\\Seen)")
        finally:
            client.logout()


def _config(directory: Path, port: int, tls_port: int, certificate: Path, key: Path) -> str:
    me = pwd.getpwuid(os.getuid())
    # As root, Dovecot runs its login and internal processes as the package's users; as
    # anyone else, everything runs as that user.
    root = os.getuid() == 0
    login_user = "dovenull" if root else me.pw_name
    internal_user = "dovecot" if root else me.pw_name
    owner = _mail_owner()
    return f"""
base_dir = {directory}/run
state_dir = {directory}/state
log_path = {directory}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = yes
ssl_cert = <{certificate}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = {login_user}
default_internal_user = {internal_user}
mail_location = maildir:{directory}/mail/%u
first_valid_uid = {owner.pw_uid}
first_valid_gid = {owner.pw_gid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {directory}/passwd
}}
userdb {{
  driver = static
  args = uid={owner.pw_uid} gid={owner.pw_gid} home={directory}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
"""


def _mail_owner() -> pwd.struct_passwd:
    """Who owns the mail: Dovecot refuses mail processes as root, so as root the package's
    own ``dovecot`` user, else the current user."""
    if os.getuid() == 0:
        return pwd.getpwnam("dovecot")
    return pwd.getpwuid(os.getuid())


@contextlib.contextmanager
def dovecot_server() -> Iterator[Dovecot | None]:
    """A Dovecot on two free loopback ports, stopped (and its directory removed) after."""
    if not os.access(DOVECOT, os.X_OK) or shutil.which("openssl") is None:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="test-dovecot-"))
    os.chmod(directory, 0o755)  # the login user reads the certificate and the sockets
    certificate, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    (directory / "passwd").write_text(
        f"{USER}:{{PLAIN}}{PASSWORD}\n{UTF8_USER}:{{PLAIN}}{UTF8_PASSWORD}\n", encoding="utf-8"
    )
    owner = _mail_owner()
    for name in ("mail", "home"):
        (directory / name).mkdir()
        os.chown(directory / name, owner.pw_uid, owner.pw_gid)
    port, tls_port = free_port(), free_port()
    config = directory / "dovecot.conf"
    config.write_text(_config(directory, port, tls_port, certificate, key), encoding="utf-8")
    process = subprocess.Popen(
        [DOVECOT, "-F", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        try:
            _wait_for_port(port, timeout=30)
            _wait_for_port(tls_port, timeout=30)
        except TimeoutError:
            log = directory / "dovecot.log"
            detail = log.read_text(errors="replace") if log.exists() else ""
            process.kill()
            _, err = process.communicate(timeout=10)
            raise RuntimeError(f"dovecot did not start: {err.decode()} {detail}") from None
        yield Dovecot(directory, port, tls_port, certificate, process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)
        shutil.rmtree(directory, ignore_errors=True)
