"""API test harness: the real app on each backend pair, logged-in callers, packages, ledger checks.

Backends: SQLite + local directory, and PostgreSQL + S3 (moto's server). Each module gets one
app per backend (building it migrates a database and registers the dev agencies); every test
opens cases of its own, so tests never see each other's data.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlmodel import col, select

from exchange.api.app import create_app
from exchange.api.context import AppContext
from exchange.client import make_client_assertion
from exchange.ledger.audit import AuditSummary, verify_log
from exchange.package.source import JWS_NAME, MANIFEST_NAME
from exchange.settings import DEV_KEY_DIR, Settings
from exchange.signing import Signer
from exchange.storage import ledger_store
from exchange.storage.db import session_scope
from exchange.storage.ledger_store import LedgerEntryRow
from tests.builders import FILES, build
from tests.conftest import PG_ADMIN_URL
from tests.exchange_server import free_port

BACKENDS = ["sqlite-local", "postgresql-s3"]
TESTSERVER = "http://testserver"

# The dev bootstrap's clients, each signing with its agency's committed dev key.
TH_INVESTIGATOR = "th-rtp-investigator"
TH_PROSECUTOR = "th-rtp-prosecutor"
PH_PARTNER = "ph-nbi-partner"
VN_PARTNER = "vn-c06-partner"
AGENCY_OF = {
    TH_INVESTIGATOR: "TH-RTP",
    TH_PROSECUTOR: "TH-RTP",
    PH_PARTNER: "PH-NBI",
    VN_PARTNER: "VN-C06",
}


def dev_signer(agency: str) -> Signer:
    """The committed development key of an agency."""
    return Signer.from_pem((DEV_KEY_DIR / f"{agency}.key.pem").read_bytes())


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A PostgreSQL database of this module's own, dropped afterwards."""
    name = f"exchange_api_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{base}/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_settings(
    request: pytest.FixtureRequest, backend: str, data_dir: Path, **overrides: Any
) -> Settings:
    """Settings of a node on `backend`, with data under `data_dir`."""
    fields: dict[str, Any] = {
        "env": "development",
        "data_dir": data_dir,
        "public_url": TESTSERVER,
        "ledger_origin": "test.exchange.example/ledger",
        "max_file_bytes": 1024 * 1024,
        "max_files_per_package": 20,
    }
    if backend == "postgresql-s3":
        server = request.getfixturevalue("s3_server")
        fields.update(
            database_url=request.getfixturevalue("pg_database"),
            storage="s3",
            s3_endpoint=server.endpoint,
            s3_access_key="testing",
            s3_secret_key="testing",
            s3_bucket=f"api-{uuid.uuid4().hex[:12]}",
            s3_secure=False,
        )
    fields.update(overrides)
    return Settings(**fields)


@dataclass
class Api:
    """A running app under TestClient, with helpers to log in and read its state."""

    http: TestClient
    backend: str
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def context(self) -> AppContext:
        """The app's resources."""
        context: AppContext = self.http.app.state.context  # type: ignore[attr-defined]
        return context

    def token(self, client_id: str) -> str:
        """A fresh access token of a dev client (private_key_jwt login)."""
        response = self.http.post(
            "/v1/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": make_client_assertion(
                    client_id=client_id,
                    signer=dev_signer(AGENCY_OF[client_id]),
                    audience=f"{TESTSERVER}/v1/token",
                ),
            },
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token

    def auth(self, client_id: str) -> dict[str, str]:
        """Authorization header of a dev client (token cached per test)."""
        if client_id not in self.tokens:
            self.tokens[client_id] = self.token(client_id)
        return {"Authorization": f"Bearer {self.tokens[client_id]}"}

    def call(self, method: str, url: str, client_id: str, **kwargs: Any) -> httpx.Response:
        """An authorized request."""
        headers = {**self.auth(client_id), **kwargs.pop("headers", {})}
        response: httpx.Response = self.http.request(method, url, headers=headers, **kwargs)
        return response

    def open_case(self, client_id: str = TH_INVESTIGATOR) -> str:
        """A new case; returns its id."""
        response = self.call(
            "POST",
            "/v1/cases",
            client_id,
            json={"case_ref": "TH-2026-0042", "title": "Scam ring", "classification": "restricted"},
        )
        assert response.status_code == 201, response.text
        case_id: str = response.json()["case_id"]
        return case_id

    def grant(
        self,
        case_id: str,
        country: str = "PH",
        *,
        as_client: str = TH_INVESTIGATOR,
        **overrides: Any,
    ) -> httpx.Response:
        """Grant read access to `country` for 30 days (as the TH investigator by default)."""
        body: dict[str, Any] = {
            "grantee_country": country,
            "scope": ["read"],
            "legal_basis": {"type": "mla", "reference": "MLA-2026-017"},
            "expires_at": datetime.fromtimestamp(time.time() + 30 * 86400, UTC).isoformat(),
        }
        body.update(overrides)
        return self.call("POST", f"/v1/cases/{case_id}/grants", as_client, json=body)

    def actions(self, case_id: str) -> list[str]:
        """The ledger actions recorded about a case, in order."""
        with session_scope(self.context.engine) as session:
            rows = ledger_store.entries_for_case(session, case_id)
            return [row.action for row in rows]

    def package_actions(self, package_id: str) -> list[str]:
        """The ledger actions recorded about a package, in order."""
        with session_scope(self.context.engine) as session:
            rows = session.exec(
                select(LedgerEntryRow)
                .where(LedgerEntryRow.package_id == package_id)
                .order_by(col(LedgerEntryRow.seq))
            ).all()
            return [row.action for row in rows]

    def verify_ledger(self) -> AuditSummary:
        """Recompute the whole ledger and check its latest checkpoint signature."""
        with (
            session_scope(self.context.engine) as session,
            ledger_store.log_rows(session) as (entries, hashes),
        ):
            return verify_log(
                entries,
                hashes,
                checkpoint_note=ledger_store.latest_checkpoint(session),
                verify_note=self.context.log.verifier().verify,
            )

    def blob_exists(self, sha256: str) -> bool:
        """Whether the store holds an object with this digest."""
        return self.context.store.exists(self.context.store.key_for(sha256))


@pytest.fixture(scope="module", params=BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The app on each backend pair, started (lifespan run) for the whole module."""
    settings = make_settings(request, request.param, tmp_path_factory.mktemp("node") / "var")
    with TestClient(create_app(settings), base_url=TESTSERVER) as client:
        yield Api(http=client, backend=request.param)


@pytest.fixture
def fresh(api: Api) -> Api:
    """The module's app with no cached tokens."""
    api.tokens.clear()
    return api


@dataclass(frozen=True)
class Package:
    """A built, signed package folder and its manifest."""

    folder: Path
    manifest: dict[str, Any]
    jws: str

    @property
    def package_id(self) -> str:
        """The manifest's package id."""
        return str(self.manifest["package_id"])

    def data(self, path: str) -> bytes:
        """The bytes of one evidence file."""
        return (self.folder / "data" / path).read_bytes()

    def body(self) -> dict[str, Any]:
        """The registration body."""
        return {"manifest": self.manifest, "jws": self.jws}


def make_package(
    tmp: Path, *, agency: str = "TH-RTP", signer: Signer | None = None, **kwargs: Any
) -> Package:
    """A real signed package (TH-RTP's dev key by default), created a minute ago.

    Its files are unique to it (the store is content-addressed), unless `files` is given.
    """
    if "files" not in kwargs:
        tag = uuid.uuid4().bytes
        kwargs["files"] = {path: data + tag for path, data in FILES.items()}
    folder = build(
        tmp,
        signer or dev_signer(agency),
        agency=agency,
        created_at=datetime.fromtimestamp(time.time() - 60, UTC),
        out_name=f"pkg-{uuid.uuid4().hex[:8]}",
        **kwargs,
    )
    manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    return Package(folder=folder, manifest=manifest, jws=(folder / JWS_NAME).read_text().strip())


def upload(api: Api, case_id: str, package: Package, *, seal: bool = True) -> None:
    """Register, PUT every file and (by default) seal, as the TH investigator."""
    base = f"/v1/cases/{case_id}/packages"
    response = api.call("POST", base, TH_INVESTIGATOR, json=package.body())
    assert response.status_code == 201, response.text
    for entry in package.manifest["files"]:
        url = f"{base}/{package.package_id}/files/{entry['path']}"
        put = api.call("PUT", url, TH_INVESTIGATOR, content=package.data(entry["path"]))
        assert put.status_code == 201, put.text
    if seal:
        sealed = api.call("POST", f"{base}/{package.package_id}/seal", TH_INVESTIGATOR)
        assert sealed.status_code == 200, sealed.text


@dataclass
class LiveServer:
    """uvicorn serving the app on a real socket in a thread."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def context(self) -> AppContext:
        """The app's resources."""
        app: Any = self.server.config.loaded_app
        while not hasattr(app, "state"):
            app = app.app  # uvicorn wraps the app in its own middleware
        context: AppContext = app.state.context
        return context


def serve_live(settings_for: Any, wrap: Any = None) -> Iterator[LiveServer]:
    """Start uvicorn on a free port with `settings_for(url)`; stop it on exit.

    `wrap(app)`, if given, returns the ASGI app to serve in front of the exchange's (it must
    keep the inner app as its `app` attribute).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(settings_for(url))
    config = uvicorn.Config(
        wrap(app) if wrap else app, host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield LiveServer(url=url, server=server, thread=thread)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
