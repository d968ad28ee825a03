"""Several connections to the relay at once: one thread (a *lane*) per connection.

A worker spends most of an SMTP transaction waiting for the relay's replies. With N lanes,
N transactions are in flight while one lane's Python runs (a blocking socket releases the
GIL), so a worker keeps the relay as busy as N clients would, within
``NEWSLETTER_SMTP_CONNECTIONS``.

Protocol: :func:`transports_for` makes the transports of one batch: N SMTP connections that
share one :class:`~newsletter.mail.smtp.RelayHealth`, or the one transport of a file or
memory URL (those have no connection to share out). :class:`Lanes` runs a work function in
one thread per transport, inside that transport's ``with`` block, so the connections open
together and each is QUIT when its lane ends. A lane that raises sets the shared ``stop``
event (the others stop taking work); :meth:`Lanes.join` re-raises the first error.

A relay that takes fewer connections than configured (it refuses the extra ones, typically
with a 421 greeting) is not down: a lane that cannot open its connection while another lane
did open one stands down, and the batch goes on over the connections the relay accepted.
Only when no lane can connect is the relay unavailable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from newsletter.mail.dkim import DkimSigner
from newsletter.mail.smtp import RelayHealth, RelayUnavailable, SmtpTransport
from newsletter.mail.transports import SigningTransport, Transport, transport_from_url

__all__ = ["Lanes", "transports_for"]


def transports_for(
    url: str, connections: int, *, signer: DkimSigner | None = None
) -> list[Transport]:
    """The transports one batch sends over: ``connections`` SMTP connections sharing one
    relay health, or the single transport of a non-SMTP URL; each signing with ``signer``
    when given (:func:`newsletter.mail.dkim.signer_for`). ConfigurationError if unusable."""
    first = transport_from_url(url)
    if not isinstance(first, SmtpTransport):
        return [_signing(first, signer)]
    health = RelayHealth()
    transports: list[Transport] = [first]
    transports.extend(transport_from_url(url) for _ in range(connections - 1))
    for transport in transports:
        assert isinstance(transport, SmtpTransport)
        transport.health = health
    return [_signing(transport, signer) for transport in transports]


def _signing(transport: Transport, signer: DkimSigner | None) -> Transport:
    return SigningTransport(transport, signer) if signer is not None else transport


class Lanes:
    """``work(transport)`` in one thread per transport, each inside ``with transport:``."""

    def __init__(
        self,
        transports: Sequence[Transport],
        work: Callable[[Transport], None],
        *,
        stop: threading.Event,
        finished: threading.Event,
    ) -> None:
        """Prepare the lanes; ``stop`` is set when a lane fails, ``finished`` when the last
        lane ends (so that a waiting reporter wakes up at once)."""
        self._work = work
        self._stop = stop
        self._finished = finished
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._running = len(transports)
        self._connected = 0  # lanes whose connection opened
        self._settled = 0  # lanes whose first connection opened or failed
        self._opening = threading.Condition(self._lock)
        self._threads = [
            threading.Thread(target=self._run, args=(transport,), name=f"lane-{i}", daemon=True)
            for i, transport in enumerate(transports)
        ]

    def start(self) -> None:
        """Start every lane."""
        for thread in self._threads:
            thread.start()

    @property
    def running(self) -> bool:
        """Whether any lane is still working."""
        return self._running > 0

    def _run(self, transport: Transport) -> None:
        try:
            try:
                transport.__enter__()
            except RelayUnavailable:
                if self._opened(False):
                    return  # another lane is connected: the relay wants fewer connections
                raise
            self._opened(True)
            try:
                self._work(transport)
            finally:
                transport.__exit__(None, None, None)
        except BaseException as exc:  # handed to join(): a lane must never die silently
            with self._lock:
                self._errors.append(exc)
            self._stop.set()
        finally:
            with self._lock:
                self._running -= 1
                if not self._running:
                    self._finished.set()

    def _opened(self, connected: bool) -> bool:
        """Note how this lane's first connection went. For a failed one, wait until every
        lane knows (each connect is bounded by the transport's timeout) and say whether
        another lane did connect."""
        with self._opening:
            self._settled += 1
            self._connected += connected
            self._opening.notify_all()
            if connected:
                return True
            while self._settled < len(self._threads) and not self._connected:
                self._opening.wait()
            return self._connected > 0

    def join(self) -> None:
        """Wait for every lane; re-raise the first error one of them met."""
        for thread in self._threads:
            thread.join()
        if self._errors:
            raise self._errors[0]
