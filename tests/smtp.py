"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 that records what it accepts.

Used by the transport tests and the end-to-end sending tests; it can refuse recipients,
answer DATA with a chosen reply, hang up, answer slowly, or keep a limit of messages per
connection, so failures are rehearsed against a real peer. It counts the sessions (TCP
connections) open at once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

from tests.servers import free_port


@dataclass
class Received:
    peer: tuple[str, int]
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    authenticated: bool


@dataclass
class Recorder:
    """An aiosmtpd handler that records what it accepts and refuses on demand."""

    received: list[Received] = field(default_factory=list)
    refuse_rcpt: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    mail_reply: str | None = None
    hang_up_after_data: bool = False
    # Recipients whose message arrives but whose DATA reply never leaves: the connection is
    # closed instead (a hand-over the client cannot confirm), every time.
    hang_up_for: set[str] = field(default_factory=set)
    data_calls: int = 0
    # Answer the first N DATA commands with ``refuse_first_reply`` (a relay under load).
    refuse_first: int = 0
    refuse_first_reply: str = "421 4.7.0 Try again later"
    # Advertise RFC 2920 PIPELINING, as Postfix and most relays do (aiosmtpd does not).
    pipelining: bool = True
    ehlo_count: int = 0
    # Called with each RCPT address: a reply to refuse it with (a greylisting relay), or None.
    rcpt_policy: Callable[[str], str | None] | None = None
    # Every RCPT refusal answered, by address (refuse_rcpt and rcpt_policy alike).
    rcpt_refusals: Counter[str] = field(default_factory=Counter)
    # MAIL FROM parameters of each accepted message, in order (SMTPUTF8, BODY=8BITMIME, …).
    mail_options: list[list[str]] = field(default_factory=list)
    # Connections open now and the most open at once; sessions greeted (EHLO) in all, which
    # leaves out the Controller's own check that the server is up.
    open_sessions: int = 0
    most_sessions: int = 0
    sessions: int = 0
    # A relay's limit of connections at once: beyond it, a 421 greeting and the connection
    # is closed; each such connection is counted in refused_connections.
    max_connections: int | None = None
    refused_connections: int = 0
    # A relay's limit of messages per connection: MAIL beyond it gets 421 and the
    # connection is closed; each such MAIL is counted in over_limit.
    per_connection: int | None = None
    over_limit: int = 0
    # Called with (session number from 1, messages accepted on it so far) at each MAIL: a
    # 421 reply to answer and close the connection with, or None.
    session_policy: Callable[[int, int], str | None] | None = None
    # Seconds the relay takes to answer each DATA (a slow relay).
    data_delay: float = 0.0
    # Messages accepted per session number.
    accepted_on: Counter[int] = field(default_factory=Counter)

    def opened(self) -> None:
        self.open_sessions += 1
        self.most_sessions = max(self.most_sessions, self.open_sessions)

    def closed(self, session: Any) -> None:
        if not getattr(session, "ended", False):
            session.ended = True
            self.open_sessions -= 1

    def _closing(self, server: Any, session: Any, reply: str) -> str:
        # Over from the moment the relay says so: the client may reconnect before the
        # close below reaches the event loop, and that is not two connections at once.
        self.closed(session)
        asyncio.get_running_loop().call_later(0.05, server.transport.close)
        return reply

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.ehlo_count += 1
        if not hasattr(session, "number"):
            self.sessions += 1
            session.number = self.sessions
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        number = getattr(session, "number", 0)
        if self.per_connection is not None and self.accepted_on[number] >= self.per_connection:
            self.over_limit += 1
            return self._closing(server, session, "421 4.7.0 Too many messages on this connection")
        if self.session_policy is not None:
            refusal = self.session_policy(number, self.accepted_on[number])
            if refusal is not None:
                return self._closing(server, session, refusal)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        refusal = self.refuse_rcpt.get(address)
        if refusal is None and self.rcpt_policy is not None:
            refusal = self.rcpt_policy(address)
        if refusal is not None:
            self.rcpt_refusals[address] += 1
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_calls += 1
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.hang_up_after_data or self.hang_up_for.intersection(envelope.rcpt_tos):
            self.hang_up_after_data = False
            server.transport.close()  # the message arrived, the reply never leaves
            return "250 OK"
        if self.data_reply:
            return self.data_reply
        if self.data_calls <= self.refuse_first:
            return self.refuse_first_reply
        self.mail_options.append(list(envelope.mail_options))
        self.accepted_on[getattr(session, "number", 0)] += 1
        self.received.append(
            Received(
                peer=session.peer,
                mail_from=envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                data=envelope.original_content,
                tls=session.ssl is not None,
                authenticated=bool(session.authenticated),
            )
        )
        return "250 2.0.0 Ok: queued"

    @property
    def connections(self) -> int:
        """Distinct TCP connections that delivered (each has its own client port)."""
        return len({r.peer for r in self.received})


class _CountingSMTP(SMTP):
    """aiosmtpd's server, telling the Recorder when a connection opens and closes."""

    refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        handler = self.event_handler
        if (
            isinstance(handler, Recorder)
            and handler.max_connections is not None
            and handler.open_sessions >= handler.max_connections
            and isinstance(transport, asyncio.WriteTransport)
        ):
            self.refused = True
            handler.refused_connections += 1
            transport.write(b"421 4.7.0 Too many connections from your host\r\n")
            transport.close()
            return
        super().connection_made(transport)
        if isinstance(handler, Recorder):
            handler.opened()

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        if isinstance(self.event_handler, Recorder):
            self.event_handler.closed(self.session)
        super().connection_lost(error)


class _CountingController(Controller):
    def factory(self) -> SMTP:
        return _CountingSMTP(self.handler, **self.SMTP_kwargs)


@dataclass
class SmtpServer:
    handler: Recorder
    port: int
    controller: Any = None
    options: dict[str, Any] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop listening (a relay outage); what it received stays in ``handler``."""
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def restart(self) -> None:
        """Listen again on the same port, with the same handler and options."""
        self.stop()
        self.controller = _CountingController(
            self.handler, hostname="127.0.0.1", port=self.port, **self.options
        )
        self.controller.start()


@pytest.fixture
def start_smtp() -> Iterator[Callable[..., SmtpServer]]:
    """Starts real aiosmtpd servers on 127.0.0.1; all are stopped after the test.

    Options go to aiosmtpd's SMTP class, e.g. ``enable_SMTPUTF8=False`` for a relay that
    does not offer SMTPUTF8 (aiosmtpd's Controller offers it by default).
    """
    servers: list[SmtpServer] = []

    def start(**options: Any) -> SmtpServer:
        server = SmtpServer(Recorder(), free_port(), options=options)
        server.restart()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
