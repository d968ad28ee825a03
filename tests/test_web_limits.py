"""Limits of the web server, over real sockets: body size (413 before parsing or the token
check), deadlines for headers and bodies (408), the concurrency limit, proxy trust, the
login throttle's per-client and global counts, and trusted hosts."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from newsletter.config import Settings
from tests.conftest import Configure
from tests.servers import free_port
from tests.webapp import Live, newsletter_serve, serve_live

LIMIT = 64 * 1024
# Bound on any wait for the server in these tests; the server's own deadline is 1 s.
SOCKET_WAIT_S = 10


@pytest.fixture
def limited(configure: Configure, tmp_path: Path) -> Iterator[Live]:
    settings = configure(base_url=f"http://127.0.0.1:{free_port()}", request_timeout="1")
    with serve_live(settings, tmp_path) as built:
        yield built


def _connect(settings: Settings) -> socket.socket:
    port = httpx.URL(settings.base_url).port
    assert port
    sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_WAIT_S)
    return sock


def _read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_a_60_mb_post_without_a_token_gets_413_before_the_body_is_read(limited: Live) -> None:
    size = 60 * 1024 * 1024
    with _connect(limited.settings) as sock:
        sock.sendall(
            b"POST /api/campaigns HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {size}\r\n\r\n".encode()
            + b"[" * 4096
        )
        # 4 KiB of 60 MiB sent, and the answer is already there: 413, not the token's 401,
        # and the connection closes (the rest is never read).
        response = _read_response(sock)
    assert _status(response) == 413
    assert b"application/json" in response and b"65536" in response
    assert b"connection: close" in response.lower()


def test_a_chunked_body_is_cut_off_at_the_limit(limited: Live) -> None:
    chunk = b"a" * 8192
    with _connect(limited.settings) as sock:
        sock.sendall(
            b"POST /api/campaigns HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(LIMIT // len(chunk) + 1):  # just over the limit, and no last chunk
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        response = _read_response(sock)
    assert _status(response) == 413
    assert b"connection: close" in response.lower()


def test_a_form_over_the_limit_gets_the_413_page(limited: Live) -> None:
    rsvp, _ = limited.links(0)
    response = limited.client.post(rsvp, content=b"answer=yes&csrf=" + b"x" * LIMIT)
    assert response.status_code == 413
    assert "请求过大" in response.text
    assert limited.rsvps() == []


def test_a_body_within_the_limit_is_still_read(limited: Live) -> None:
    response = limited.client.post("/api/campaigns", json={"number": 95, "tag": "x" * 1000})
    assert response.status_code == 401  # parsed, then refused for the missing token


def test_headers_that_never_finish_get_408_and_the_connection_is_closed(limited: Live) -> None:
    with _connect(limited.settings) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        response = _read_response(sock)
    assert _status(response) == 408


def test_a_connection_that_sends_nothing_is_closed(limited: Live) -> None:
    with _connect(limited.settings) as sock:
        assert _read_response(sock) == b""  # closed by the server, not by our timeout


def test_a_body_that_trickles_gets_408(limited: Live) -> None:
    with _connect(limited.settings) as sock:
        rsvp, _ = limited.links(0)
        sock.sendall(
            f"POST {rsvp} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
            + b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 100\r\n\r\nanswer=yes"
        )
        response = _read_response(sock)
    assert _status(response) == 408
    assert limited.rsvps() == []


def test_headers_over_32_kib_get_431(limited: Live) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
        f"X-Filler-{index}: ".encode() + b"f" * 1000 + b"\r\n" for index in range(40)
    )
    statuses = []
    # The server answers 431 and closes while bytes it will never read are still arriving;
    # the kernel may then reset the connection before the answer is read. That is the
    # transport, not the answer: try again, and every answer read must be 431.
    for _ in range(5):
        try:
            with _connect(limited.settings) as sock:
                sock.sendall(request)
                statuses.append(_status(_read_response(sock)))
        except (ConnectionResetError, BrokenPipeError):
            continue
        break
    assert statuses and set(statuses) == {431}


def test_connections_over_the_limit_get_503(configure: Configure, tmp_path: Path) -> None:
    settings = configure(base_url=f"http://127.0.0.1:{free_port()}", max_connections="2")
    with serve_live(settings, tmp_path) as live:
        with _connect(settings) as first, _connect(settings) as second:
            for sock in (first, second):  # two connections in use
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert b"200 OK" in sock.recv(65536)
            assert live.client.get("/healthz").status_code == 503
        assert live.client.get("/healthz").status_code == 200


def test_another_host_gets_400_but_probes_answer_by_address(limited: Live) -> None:
    rsvp, _ = limited.links(0)
    assert limited.client.get(rsvp).status_code == 200
    assert limited.client.get(rsvp, headers={"Host": "localhost"}).status_code == 200
    assert limited.client.get(rsvp, headers={"Host": "evil.example"}).status_code == 400
    assert limited.client.get("/healthz", headers={"Host": "10.0.0.5"}).status_code == 200


def test_a_public_base_url_admits_only_its_own_host(configure: Configure) -> None:
    from fastapi.testclient import TestClient

    from newsletter.web import create_app

    configure(base_url="https://salon.example.org")
    with TestClient(create_app(), base_url="https://salon.example.org") as client:
        assert client.get("/admin/login").status_code == 200
        assert client.get("/admin/login", headers={"Host": "127.0.0.1"}).status_code == 400
        assert client.get("/admin/login", headers={"Host": "evil.example"}).status_code == 400


# --- the throttle and proxy trust, through `newsletter serve` itself ---


def _wrong_login(client: httpx.Client, forwarded_for: str) -> int:
    response = client.post(
        "/admin/login", data={"token": "guess"}, headers={"X-Forwarded-For": forwarded_for}
    )
    return response.status_code


def test_serve_believes_no_forwarded_for_by_default(configure: Configure, tmp_path: Path) -> None:
    settings = configure(base_url=f"http://127.0.0.1:{free_port()}")
    os.environ.pop("NEWSLETTER_ADMIN_TOKEN")  # generated by serve, into var/admin.token
    token_file = tmp_path / "var" / "admin.token"
    with (
        newsletter_serve(settings, tmp_path) as log,
        httpx.Client(base_url=settings.base_url) as client,
    ):
        # The token exists before anyone failed a login, and the log says where it is.
        token = token_file.read_text().strip()
        written = log.read_text()
        assert f"{settings.base_url}/admin" in written and str(token_file) in written
        assert token not in written
        statuses = [_wrong_login(client, f"198.51.100.{i}") for i in range(11)]
    # Every guess came from 127.0.0.1, whatever the header said: the 11th is paused.
    assert statuses == [401] * 10 + [429]


def test_serve_behind_a_trusted_proxy_counts_each_client(
    configure: Configure, tmp_path: Path
) -> None:
    settings = configure(
        base_url=f"http://127.0.0.1:{free_port()}", forwarded_allow_ips="127.0.0.1"
    )
    with newsletter_serve(settings, tmp_path), httpx.Client(base_url=settings.base_url) as client:
        first = [_wrong_login(client, "198.51.100.7") for _ in range(11)]
        other = _wrong_login(client, "203.0.113.9")
        # The global ceiling: 100 failures from all clients pause everyone.
        for client_number in range(9):
            for _ in range(10):
                _wrong_login(client, f"192.0.2.{client_number}")
        newcomer = client.post(
            "/admin/login", data={"token": "guess"}, headers={"X-Forwarded-For": "192.0.2.200"}
        )
    assert first == [401] * 10 + [429]
    assert other == 401  # a bucket of its own
    assert newcomer.status_code == 429
    assert 0 < int(newcomer.headers["retry-after"]) <= 15 * 60
