"""Commands that need the server's parts: say plainly how to install them when they are missing."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from exchange.cli.output import CommandError

T = TypeVar("T")

SERVER_HINT = (
    "needs the exchange server's parts, which this installation lacks: "
    "install evidence-exchange[server] (pip install 'evidence-exchange[server]')"
)
# Top-level packages only the `server` extra brings (see pyproject.toml).
SERVER_PACKAGES = frozenset(
    {
        "fastapi",
        "starlette",
        "uvicorn",
        "sqlmodel",
        "sqlalchemy",
        "alembic",
        "psycopg",
        "minio",
        "prometheus_client",
        "multipart",
        "python_multipart",
    }
)


def is_server_dependency(exc: ModuleNotFoundError) -> bool:
    """Whether `exc` is about a package of the `server` extra (not a bug of ours)."""
    return (exc.name or "").split(".", 1)[0] in SERVER_PACKAGES


def with_server(command: str, load: Callable[[], T]) -> T:
    """`load()` (which imports server parts); `CommandError` naming the extra if they are missing."""
    try:
        return load()
    except ModuleNotFoundError as exc:
        if not is_server_dependency(exc):
            raise
        raise CommandError(f"`exchange {command}` {SERVER_HINT}", exit_code=2) from exc
