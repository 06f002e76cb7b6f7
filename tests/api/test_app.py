"""The composition root: first start, restart, and a production node without dev material."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlmodel import SQLModel, select

from exchange.api.app import create_app
from exchange.cli.serve import describe
from exchange.settings import Settings
from exchange.signing import Signer
from exchange.storage import ledger_store
from exchange.storage.db import create_schema, make_engine, session_scope
from exchange.storage.tables import AgencyRow, ClientRow
from tests.api.conftest import TESTSERVER, Api


def test_first_start_creates_everything_and_a_restart_registers_nothing_twice(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "var", public_url=TESTSERVER)
    with TestClient(create_app(settings), base_url=TESTSERVER) as http:
        api = Api(http=http, backend="sqlite-local")
        with session_scope(api.context.engine) as session:
            size = ledger_store.tree_size(session)
            clients = sorted(c.id for c in session.exec(select(ClientRow)).all())
        assert clients == [
            "ph-nbi-partner", "th-rtp-investigator", "th-rtp-prosecutor", "vn-c06-partner",
        ]  # fmt: skip
        assert size == 3 + 3 + 4  # agencies, keys, clients: each with its ledger entry
        api.verify_ledger()
    for name in ("exchange.db", "keys/issuer.key.pem", "keys/ledger.key.pem", "blobs"):
        assert (tmp_path / "var" / name).exists()
    assert (tmp_path / "var/keys/ledger.key.pem").stat().st_mode & 0o077 == 0
    with TestClient(create_app(settings), base_url=TESTSERVER) as http:
        api = Api(http=http, backend="sqlite-local")
        with session_scope(api.context.engine) as session:
            assert ledger_store.tree_size(session) == size
        assert http.get("/healthz").json()["status"] == "ok"


def test_a_production_node_registers_no_dev_agencies(tmp_path: Path):
    keys = tmp_path / "secrets"
    keys.mkdir()
    for name in ("issuer", "ledger"):
        (keys / f"{name}.key.pem").write_bytes(Signer.generate().private_pem())
    (keys / "trust").mkdir()
    settings = Settings(
        env="production",
        data_dir=tmp_path / "var",
        public_url=TESTSERVER,
        issuer_key_path=keys / "issuer.key.pem",
        ledger_key_path=keys / "ledger.key.pem",
        trust_dir=keys / "trust",
    )
    with TestClient(create_app(settings), base_url=TESTSERVER) as http:
        api = Api(http=http, backend="sqlite-local")
        with session_scope(api.context.engine) as session:
            assert session.exec(select(AgencyRow)).all() == []
        assert not (tmp_path / "var" / "keys").exists()
        assert http.get("/v1/ledger/checkpoint").status_code == 404  # an empty ledger


def test_serve_says_where_things_are(tmp_path: Path):
    lines = "\n".join(describe(Settings(data_dir=tmp_path), "127.0.0.1", 8000))
    for needed in ("http://127.0.0.1:8000", "exchange.db", "blobs", "ledger.key.pem", "/docs"):
        assert needed in lines


def test_the_migrations_build_exactly_the_tables_the_code_declares(db_url: str):
    engine = make_engine(db_url)
    try:
        create_schema(engine)
        with engine.connect() as connection:
            drift = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    finally:
        engine.dispose()
    assert drift == []


def test_liveness_touches_nothing_and_readiness_names_the_failed_dependency(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "var", public_url=TESTSERVER, health_timeout=1.0)
    with TestClient(create_app(settings), base_url=TESTSERVER) as http:
        assert http.get("/livez").json() == {"status": "alive"}
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "checks": {"database": "ok", "storage": "ok"}}
        health = http.get("/healthz").json()
        assert (health["status"], health["checks"]) == ("ok", ready.json()["checks"])

        blobs = tmp_path / "var" / "blobs"
        blobs.rename(tmp_path / "var" / "blobs.away")  # the volume is gone
        for path in ("/readyz", "/healthz"):
            down = http.get(path)
            assert down.status_code == 503, down.text
            assert down.headers["content-type"].startswith("application/problem+json")
            assert down.headers["retry-after"] == "5"
            body = down.json()
            assert body["type"] == "https://evidence-exchange.example/problems/storage_unavailable"
            assert body["checks"] == {"database": "ok", "storage": "failed"}
            assert body["detail"] == "the evidence store is not answering; retry later"
            assert str(tmp_path) not in down.text
            assert "blobs" not in down.text
        assert http.get("/livez").status_code == 200
