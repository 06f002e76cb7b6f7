"""The operator's database commands (`exchange admin`, `exchange ledger verify|proof`, `exchange
migrate`), run as processes in an empty folder: they never create a data dir or a database
they were not asked to create, and they never print a driver's error text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PG_ADMIN_URL, REPO
from tests.exchange_server import clean_env, free_port

# Commands that read or change a node's database; none of them may create one.
DATABASE_COMMANDS = [
    ["admin", "agency", "list"],
    ["admin", "agency", "keys", "--json"],
    ["admin", "client", "disable", "--id", "ph-nbi-partner"],
    ["admin", "agency", "revoke-key", "--id", "PH-NBI", "--key-id", "0" * 32],
    ["ledger", "verify"],
    ["ledger", "proof", "--seq", "0"],
]
IDS = [" ".join(command[:3]) for command in DATABASE_COMMANDS]
DRIVER_WORDS = (
    "OperationalError", "Traceback", "FATAL", "connection to server", "sqlite3", "Background on",
)  # fmt: skip


def exchange(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m exchange ARGS` in `cwd` with only the given EXCHANGE_* settings."""
    return subprocess.run(
        [sys.executable, "-m", "exchange", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(COLUMNS="500", **env),
        cwd=cwd,
        check=False,
    )


def assert_plain_failure(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""
    assert result.stderr == f"error: {message}\n"
    for word in DRIVER_WORDS:
        assert word not in result.stderr


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    folder = tmp_path / "operator"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("command", DATABASE_COMMANDS, ids=IDS)
def test_no_configuration_names_the_default_database_and_creates_nothing(
    cwd: Path, command: list[str]
) -> None:
    result = exchange(cwd, *command)
    assert_plain_failure(
        result,
        f"database {cwd / 'var' / 'exchange.db'} does not exist (from the default: neither "
        'EXCHANGE_DATABASE_URL nor EXCHANGE_DATA_DIR is set); run "exchange migrate" to '
        "create it, or point EXCHANGE_DATA_DIR or EXCHANGE_DATABASE_URL at the node's database",
    )
    assert list(cwd.iterdir()) == []


def test_a_mistyped_data_dir_is_named_and_not_created(cwd: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "nodes" / "th-rtp"
    result = exchange(cwd, "admin", "client", "list", EXCHANGE_DATA_DIR=str(data_dir))
    assert_plain_failure(
        result,
        f"database {data_dir / 'exchange.db'} does not exist (from EXCHANGE_DATA_DIR); run "
        '"exchange migrate" to create it, or point EXCHANGE_DATA_DIR or EXCHANGE_DATABASE_URL '
        "at the node's database",
    )
    assert not (tmp_path / "nodes").exists()
    assert list(cwd.iterdir()) == []


def test_ledger_verify_names_a_missing_db_file_given_with_db(cwd: Path) -> None:
    result = exchange(cwd, "ledger", "verify", "--db", "sqlite:///elsewhere/exchange.db")
    assert_plain_failure(
        result,
        f"database {cwd / 'elsewhere' / 'exchange.db'} does not exist (from --db); run "
        '"exchange migrate" to create it, or point EXCHANGE_DATA_DIR or EXCHANGE_DATABASE_URL '
        "at the node's database",
    )
    assert list(cwd.iterdir()) == []


def _pg_url(database: str, *, port: int = 5432) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base.rsplit(':', 1)[0]}:{port}/{database}"


@pytest.mark.parametrize(
    "command", [DATABASE_COMMANDS[i] for i in (0, 2, 4, 5)], ids=[IDS[i] for i in (0, 2, 4, 5)]
)
def test_a_postgresql_database_that_does_not_exist(cwd: Path, command: list[str]) -> None:
    url = _pg_url("exchange_no_such_database")
    result = exchange(cwd, *command, EXCHANGE_DATABASE_URL=url)
    assert_plain_failure(
        result,
        f"database {url} does not exist on its server: create it (CREATE DATABASE), then run "
        '"exchange migrate"',
    )
    assert list(cwd.iterdir()) == []


def test_a_postgresql_server_that_does_not_answer(cwd: Path) -> None:
    url = _pg_url("exchange", port=free_port())
    for command in (["admin", "agency", "list"], ["ledger", "proof", "--seq", "0"]):
        result = exchange(cwd, *command, EXCHANGE_DATABASE_URL=url)
        assert_plain_failure(
            result,
            f"cannot connect to database {url}: the server does not answer or refused the "
            "connection (is it running, and are the host and port right?)",
        )
    assert list(cwd.iterdir()) == []


def test_the_password_in_the_url_is_never_printed(cwd: Path) -> None:
    url = _pg_url("exchange", port=free_port()).replace("postgres@", "postgres:s3cret-pw@")
    result = exchange(cwd, "admin", "agency", "list", EXCHANGE_DATABASE_URL=url)
    assert result.returncode == 1
    assert "s3cret-pw" not in result.stderr
    assert "postgres:***@" in result.stderr


def test_a_database_without_the_schema_asks_for_migrate(cwd: Path, fresh_pg_url: str) -> None:
    result = exchange(cwd, "admin", "client", "list", EXCHANGE_DATABASE_URL=fresh_pg_url)
    assert_plain_failure(
        result, f'database {fresh_pg_url} has no exchange schema; run "exchange migrate" first'
    )
    # Nothing was created in the database either: migrate still finds it empty.
    migrated = exchange(cwd, "migrate", EXCHANGE_DATABASE_URL=fresh_pg_url)
    assert migrated.returncode == 0, migrated.stderr
    assert "schema created at revision" in migrated.stdout


def test_ledger_verify_does_not_mint_a_development_key(cwd: Path) -> None:
    assert exchange(cwd, "migrate").returncode == 0
    result = exchange(cwd, "ledger", "verify")
    assert_plain_failure(
        result,
        "no ledger key: --log-key is not given, EXCHANGE_LEDGER_KEY_PATH is not set and there "
        f"is no development key at {cwd / 'var' / 'keys' / 'ledger.key.pem'}",
    )
    assert sorted(p.name for p in (cwd / "var").iterdir()) == ["exchange.db"]


def test_migrate_creates_the_default_database_then_has_nothing_to_do(cwd: Path) -> None:
    first = exchange(cwd, "migrate")
    assert first.returncode == 0, first.stderr
    db = cwd / "var" / "exchange.db"
    assert first.stdout.startswith(f"database sqlite:///{db}: schema created at revision ")
    head = first.stdout.rsplit(" ", 1)[1].strip()
    second = exchange(cwd, "migrate")
    assert second.returncode == 0, second.stderr
    assert second.stdout == f"database sqlite:///{db} is at schema revision {head}: nothing to do\n"
    # With the database in place, the operator's commands work and still create nothing else.
    listed = exchange(cwd, "admin", "agency", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == "[]\n"
    assert sorted(p.name for p in (cwd / "var").iterdir()) == ["exchange.db"]


def test_migrate_on_postgresql(cwd: Path, fresh_pg_url: str) -> None:
    first = exchange(cwd, "migrate", EXCHANGE_DATABASE_URL=fresh_pg_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"database {fresh_pg_url}: schema created at revision ")
    again = exchange(cwd, "migrate", "--db", fresh_pg_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.endswith(": nothing to do\n")
    assert list(cwd.iterdir()) == []  # no ./var for a PostgreSQL node


def test_migrate_names_a_missing_postgresql_database(cwd: Path) -> None:
    url = _pg_url("exchange_no_such_database")
    result = exchange(cwd, "migrate", EXCHANGE_DATABASE_URL=url)
    assert_plain_failure(
        result,
        f"database {url} does not exist on its server: create it (CREATE DATABASE), then run "
        '"exchange migrate"',
    )


def test_compose_migrates_with_the_exchange_migrate_command(cwd: Path, fresh_pg_url: str) -> None:
    """compose.yaml's one-shot `migrate` service runs the real command, with its environment."""
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    service = compose["services"]["migrate"]
    assert service["command"] == ["exchange", "migrate"]
    env = {k: v for k, v in service["environment"].items() if k.startswith("EXCHANGE_")}
    assert set(env) == {"EXCHANGE_DATABASE_URL"}
    result = exchange(cwd, *service["command"][1:], EXCHANGE_DATABASE_URL=fresh_pg_url)
    assert result.returncode == 0, result.stderr
    assert "schema created at revision" in result.stdout
    assert list(cwd.iterdir()) == []
