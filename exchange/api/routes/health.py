"""Liveness (/livez), readiness (/readyz, /healthz) and Prometheus metrics (/metrics).

Readiness never hangs: the database and object-store probes run on small thread pools of their
own, in parallel, under one deadline (`EXCHANGE_HEALTH_TIMEOUT`). A probe still stuck when the
deadline passes is left to finish on its thread, bounded by the store's and database's own
timeouts; while a pool is busy with stuck probes, new ones wait in its queue and time out
too, so a frozen dependency costs at most the pool's threads, never the request threads.
Only fixed words leave these endpoints: they are unauthenticated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from exchange.api.context import AppContext
from exchange.api.deps import ContextDep
from exchange.api.documents import Alive, Health, Ready
from exchange.api.errors import causes, new_incident, problem
from exchange.api.openapi import DATABASE, UNEXPECTED, declare
from exchange.errors import DatabaseUnavailableError, StorageUnavailableError
from exchange.storage.db import session_scope

logger = logging.getLogger("exchange.api")
router = APIRouter(tags=["health"])

# Two threads each: enough for overlapping probes, and the most a frozen dependency can hold.
_DATABASE_PROBES: Final = ThreadPoolExecutor(max_workers=2, thread_name_prefix="probe-database")
_STORAGE_PROBES: Final = ThreadPoolExecutor(max_workers=2, thread_name_prefix="probe-storage")
PROBE_RETRY_AFTER: Final = 5


def _probe_database(context: AppContext) -> None:
    with session_scope(context.engine, read_only=True) as session:
        session.exec(text("SELECT 1"))  # type: ignore[call-overload]  # plain SQL probe


def _probe_storage(context: AppContext) -> None:
    context.store.check()


async def _run(
    pool: ThreadPoolExecutor, probe: Callable[[], None], deadline: float
) -> tuple[str, str]:
    """The probe's outcome within `deadline` seconds ("ok", "timeout" or "failed"), and why."""
    loop = asyncio.get_running_loop()
    try:
        # Cancelling on timeout drops a probe still queued behind stuck ones.
        await asyncio.wait_for(loop.run_in_executor(pool, probe), timeout=deadline)
    except TimeoutError:
        return "timeout", f"no answer within {deadline} s"
    except Exception as exc:  # any failure means "not ready"; the cause goes to the log only
        return "failed", causes(exc)
    return "ok", ""


async def readiness(context: AppContext) -> tuple[dict[str, str], dict[str, str]]:
    """Each dependency's probe outcome ("ok", "timeout", "failed") within the health deadline,
    and, for the log, why each failed one did."""
    deadline = context.settings.health_timeout
    outcomes = await asyncio.gather(
        _run(_DATABASE_PROBES, lambda: _probe_database(context), deadline),
        _run(_STORAGE_PROBES, lambda: _probe_storage(context), deadline),
    )
    names = ("database", "storage")
    checks = {name: outcome for name, (outcome, _) in zip(names, outcomes, strict=True)}
    why = {name: cause for name, (outcome, cause) in zip(names, outcomes, strict=True) if cause}
    return checks, why


def _not_ready(checks: dict[str, str], why: dict[str, str]) -> JSONResponse:
    failed = DatabaseUnavailableError if checks["database"] != "ok" else StorageUnavailableError
    detail = (
        "the database is unavailable or busy; retry later"
        if failed is DatabaseUnavailableError
        else "the evidence store is not answering; retry later"
    )
    incident = new_incident()
    logger.warning("incident %s: 503 %s: not ready: %s", incident, failed.code, why)
    return problem(
        503,
        failed.code,
        "Not ready",
        detail,
        headers={"Retry-After": str(PROBE_RETRY_AFTER)},
        retry_after=PROBE_RETRY_AFTER,
        checks=checks,
        incident=incident,
    )


@router.get("/livez", response_model=None, responses=declare(Alive, *UNEXPECTED))
async def livez() -> dict[str, str]:
    """200 while the process serves requests; touches no database or store."""
    return {"status": "alive"}


@router.get("/readyz", response_model=None, responses=declare(Ready, *DATABASE))
async def readyz(context: ContextDep) -> dict[str, Any] | JSONResponse:
    """200 when the database and the object store answer within the health deadline; else 503."""
    checks, why = await readiness(context)
    if why:
        return _not_ready(checks, why)
    return {"status": "ready", "checks": checks}


@router.get("/healthz", response_model=None, responses=declare(Health, *DATABASE))
async def healthz(context: ContextDep) -> dict[str, Any] | JSONResponse:
    """Readiness, as /readyz, with the ledger origin (for older health checks and humans)."""
    checks, why = await readiness(context)
    if why:
        return _not_ready(checks, why)
    return {"status": "ok", "ledger_origin": context.log.origin, "checks": checks}


@router.get("/metrics", include_in_schema=False)
def metrics(context: ContextDep) -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(context.metrics.registry), media_type=CONTENT_TYPE_LATEST)
