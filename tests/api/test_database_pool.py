"""The node's connection pool follows its settings (EXCHANGE_DB_POOL_SIZE and friends)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from exchange.api.app import build_context
from exchange.api.metrics import Metrics
from exchange.settings import Settings


def test_defaults_are_five_plus_ten() -> None:
    settings = Settings()
    assert (settings.db_pool_size, settings.db_max_overflow, settings.db_pool_timeout) == (
        5,
        10,
        30.0,
    )


def test_the_pool_holds_size_plus_overflow_connections_then_waits(
    fresh_pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXCHANGE_DB_POOL_SIZE", "2")
    monkeypatch.setenv("EXCHANGE_DB_MAX_OVERFLOW", "1")
    monkeypatch.setenv("EXCHANGE_DB_POOL_TIMEOUT", "0.5")
    settings = Settings(database_url=fresh_pg_url, data_dir=tmp_path)
    context = build_context(settings, metrics=Metrics())
    engine = context.engine
    try:
        assert engine.pool.size() == 2  # type: ignore[attr-defined]  # QueuePool
        with ExitStack() as held:
            for _ in range(3):  # pool size + overflow
                held.enter_context(engine.connect())
            with pytest.raises(PoolTimeoutError), engine.connect():
                pass
    finally:
        engine.dispose()
