"""Prometheus metrics of one app: a registry of its own and a small ASGI middleware."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


@dataclass(frozen=True)
class Metrics:
    """The exchange's metrics, in a registry per app (tests build many apps in one process)."""

    registry: CollectorRegistry = field(default_factory=_registry)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "requests",
            Counter(
                "exchange_http_requests",
                "HTTP requests answered, by method, route and status",
                ["method", "route", "status"],
                registry=self.registry,
            ),
        )
        object.__setattr__(
            self,
            "latency",
            Histogram(
                "exchange_http_request_seconds",
                "Time to the end of the response, by method and route",
                ["method", "route"],
                registry=self.registry,
            ),
        )
        object.__setattr__(
            self,
            "evidence_bytes",
            Counter(
                "exchange_evidence_bytes",
                "Evidence bytes stored (direction=in) and announced to fetchers (direction=out)",
                ["direction"],
                registry=self.registry,
            ),
        )

    requests: Counter = field(init=False)
    latency: Histogram = field(init=False)
    evidence_bytes: Counter = field(init=False)


class MetricsMiddleware:
    """Counts every HTTP request by route template and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = str(scope.get("method", ""))
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
