"""A real SMTP server for tests: aiosmtpd on 127.0.0.1 that records what it accepts.

Used by the transport tests and the end-to-end sending tests; it can refuse recipients,
answer DATA with a chosen reply, or hang up, so failures are rehearsed against a real peer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.controller import Controller

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
    data_calls: int = 0
    # Answer the first N DATA commands with ``refuse_first_reply`` (a relay under load).
    refuse_first: int = 0
    refuse_first_reply: str = "421 4.7.0 Try again later"
    # Advertise RFC 2920 PIPELINING, as Postfix and most relays do (aiosmtpd does not).
    pipelining: bool = True
    ehlo_count: int = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.ehlo_count += 1
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_calls += 1
        if self.hang_up_after_data:
            self.hang_up_after_data = False
            server.transport.close()  # the message arrived, the reply never leaves
            return "250 OK"
        if self.data_reply:
            return self.data_reply
        if self.data_calls <= self.refuse_first:
            return self.refuse_first_reply
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


@dataclass
class SmtpServer:
    handler: Recorder
    port: int


@pytest.fixture
def start_smtp() -> Iterator[Callable[..., SmtpServer]]:
    """Starts real aiosmtpd servers on 127.0.0.1; all are stopped after the test."""
    controllers: list[Any] = []

    def start(**options: Any) -> SmtpServer:
        handler = Recorder()
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **options)
        controller.start()
        controllers.append(controller)
        return SmtpServer(handler, port)

    yield start
    for controller in controllers:
        controller.stop()
