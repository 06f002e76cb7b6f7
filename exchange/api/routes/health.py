"""Liveness with dependencies (/healthz) and Prometheus metrics (/metrics)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from exchange.api.deps import ContextDep
from exchange.api.documents import Health
from exchange.api.openapi import DATABASE, declare
from exchange.storage.db import session_scope

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=None, responses=declare(Health, *DATABASE, 502))
def healthz(context: ContextDep) -> dict[str, Any]:
    """200 when the database and the object store answer; 503 problem otherwise."""
    with session_scope(context.engine) as session:
        session.exec(text("SELECT 1"))  # type: ignore[call-overload]  # plain SQL probe
    context.store.check()
    return {"status": "ok", "ledger_origin": context.log.origin}


@router.get("/metrics", include_in_schema=False)
def metrics(context: ContextDep) -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(context.metrics.registry), media_type=CONTENT_TYPE_LATEST)
