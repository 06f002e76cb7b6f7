"""Schema migration: nodes starting together on one PostgreSQL database never race on DDL."""

from __future__ import annotations

import multiprocessing

from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from exchange.storage.db import alembic_config, create_schema, make_engine


def _migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        create_schema(engine)
    finally:
        engine.dispose()


def test_four_nodes_migrating_at_once_all_succeed(fresh_pg_url: str):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_migrate, args=(fresh_pg_url,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    engine = make_engine(fresh_pg_url)
    try:
        head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
        with engine.connect() as conn:
            versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        assert versions == [(head,)]
        assert {"ledger_entry", "ledger_hash", "ledger_checkpoint"} <= set(
            inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()
