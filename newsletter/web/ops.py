"""Routes for operators: liveness, readiness and Prometheus metrics.

``/healthz`` touches nothing (a load balancer's liveness probe must not fail because the
database is slow); ``/readyz`` asks the database and the broker, each within
``dependency_timeout``, and names the one that did not answer; ``/metrics`` needs the admin
token, unless ``NEWSLETTER_METRICS_LISTEN`` moves it to a separate address.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from newsletter.config import Settings, get_settings
from newsletter.metrics import probes
from newsletter.metrics.exposition import CONTENT_TYPE, render
from newsletter.outages import is_unavailable
from newsletter.web.auth import require_organizer
from newsletter.web.faults import RETRY_AFTER_S

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)

# Paths a probe or a scraper reaches by the server's address, whatever BASE_URL says.
OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


@router.get("/healthz")
def healthz() -> PlainTextResponse:
    """The process is alive and serving (no dependency is asked)."""
    return PlainTextResponse("ok", headers={"Cache-Control": "no-store"})


@router.get("/readyz")
async def readyz() -> JSONResponse:
    """200 when the database (and the broker, if configured) answer; else 503 naming which."""
    settings = get_settings()
    checks: dict[str, Callable[[Settings], None]] = {"database": probes.ping_database}
    if settings.broker_url:
        checks["broker"] = probes.ping_broker
    results = await asyncio.gather(
        *(_check(name, check, settings) for name, check in checks.items())
    )
    status = dict(zip(checks, results, strict=True))
    ready = all(result == "ok" for result in results)
    return JSONResponse(
        {"ready": ready, "checks": status},
        status_code=200 if ready else 503,
        headers={"Cache-Control": "no-store"}
        | ({} if ready else {"Retry-After": str(RETRY_AFTER_S)}),
    )


async def _check(name: str, check: Callable[[Settings], None], settings: Settings) -> str:
    """ "ok", or why ``check`` failed; never longer than about ``dependency_timeout``."""
    try:
        await asyncio.wait_for(run_in_threadpool(check, settings), settings.dependency_timeout)
    except TimeoutError:
        return f"no answer within {settings.dependency_timeout:g} s"
    except Exception as error:
        if not is_unavailable(error):
            raise
        log.warning("readyz: the %s is unavailable: %s", name, type(error).__name__)
        return f"unavailable ({type(error).__name__})"
    return "ok"


def _metrics_here() -> None:
    """404 when metrics are served on their own address (never on the public one)."""
    if get_settings().metrics_listen:
        raise HTTPException(404)


@router.get("/metrics", dependencies=[Depends(_metrics_here), Depends(require_organizer)])
def metrics() -> Response:
    """Prometheus text exposition (the bearer admin token required)."""
    return Response(render(), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})
