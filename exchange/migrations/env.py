"""Alembic environment: runs online against the engine handed over by `exchange.storage.db`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, create_engine

config = context.config


def _engine() -> Engine:
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    # Plain `alembic -x url=...` use, outside the service.
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no engine: call exchange.storage.db.create_schema(engine)")
    return create_engine(url)


# pg_advisory_xact_lock key: replicas starting together migrate one after another.
MIGRATION_LOCK_KEY = 0x65786368616E6765  # "exchange"


def run_migrations_online() -> None:
    with _engine().connect() as connection:
        context.configure(connection=connection, target_metadata=None, render_as_batch=True)
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Taken before Alembic reads the version table, and released at commit, so a
                # second node waits, then finds the schema at head and does nothing.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations_online()
