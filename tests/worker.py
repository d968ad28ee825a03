"""The one way tests wait for the embedded worker: :func:`wait_for_worker`.

``enqueue`` hands a task over and returns at once (as in production); a test that needs the
work done calls :func:`wait_for_worker`, which returns once this process's embedded worker
has run everything handed to it and everything those tasks handed over in turn (countdowns
included). The worker a test started is stopped after it (tests/conftest.py).
"""

from __future__ import annotations

from tasks import embedded

#: Far beyond any test's work: only a worker that is stuck reaches it.
STUCK_AFTER_S = 120.0


def wait_for_worker(timeout: float = STUCK_AFTER_S) -> None:
    """Until the embedded worker of this process is idle; fails if it is stuck."""
    assert embedded.wait_until_idle(timeout), f"the embedded worker is still busy after {timeout} s"
