"""What the reliability tests share: dev clients, one-file signed packages, ledger reads."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from exchange.client import ExchangeClient
from exchange.package import make_manifest, sign_manifest
from exchange.settings import DEV_KEY_DIR
from exchange.signing import Signer
from tests.exchange_server import clean_env

TH_INVESTIGATOR = "th-rtp-investigator"


def dev_client(
    url: str, client_id: str = TH_INVESTIGATOR, *, timeout: float = 30.0, dpop: bool = False
) -> ExchangeClient:
    """A client of the dev bootstrap, signing with its agency's committed dev key.

    Bearer tokens by default: these tests send `login()["access_token"]` in raw requests of
    their own, as `Authorization: Bearer` (development nodes accept them), and are about
    faults, not authentication (DPoP is tested in tests/api/test_dpop.py).
    """
    agency = "-".join(client_id.split("-")[:2]).upper()
    return ExchangeClient(
        base_url=url,
        client_id=client_id,
        signer=Signer.from_pem((DEV_KEY_DIR / f"{agency}.key.pem").read_bytes()),
        http=httpx.Client(timeout=httpx.Timeout(timeout)),
        dpop=dpop,
    )


def open_case(client: ExchangeClient) -> str:
    """A new case of the client's agency; its id."""
    case = client.create_case(
        case_ref=f"TH-REL-{uuid.uuid4().hex[:8]}", title="reliability", classification="restricted"
    )
    return str(case["case_id"])


def one_file_package(name: str, data: bytes) -> tuple[dict[str, Any], str]:
    """Manifest document and detached JWS of a TH-RTP package holding `data` as `name`."""
    manifest = make_manifest(
        files=[
            {
                "path": name,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "media_type": "application/octet-stream",
            }
        ],
        agency="TH-RTP",
        country="TH",
        case_ref="TH-REL-2026-0001",
        legal_basis={"type": "warrant", "reference": "W-REL-1", "issued_by": "Test Court"},
        collection={
            "collected_by": {"name": "Tester", "role": "examiner"},
            "collected_at": "2026-11-20T09:30:00+07:00",
            "location": "lab",
            "method": "logical extraction",
            "tool": {"name": "dd", "version": "9.4"},
            "source_device": {"description": "test phone"},
            "seal_numbers": ["REL-1"],
        },
        created_at=datetime.now(UTC),
        package_id=str(uuid.uuid4()),
    )
    signer = Signer.from_pem((DEV_KEY_DIR / "TH-RTP.key.pem").read_bytes())
    jws = sign_manifest(manifest, signer)
    return manifest.to_wire(), jws


def ledger_actions(database_url: str) -> list[tuple[int, str, str | None]]:
    """(seq, action, package id) of every ledger entry, in seq order, read from the database."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT seq, action, package_id FROM ledger_entry ORDER BY seq")
            ).all()
    finally:
        engine.dispose()
    return [(int(r[0]), str(r[1]), r[2]) for r in rows]


def ledger_verify(database_url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """`exchange ledger verify --db URL` with the node's data dir (for its dev ledger key)."""
    return subprocess.run(
        [sys.executable, "-m", "exchange", "ledger", "verify", "--db", database_url],
        env=clean_env(EXCHANGE_DATA_DIR=str(data_dir)),
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def random_bytes(size: int) -> bytes:
    """Incompressible test data."""
    return os.urandom(size)


def assert_hidden_and_logged(
    response: httpx.Response, server_log: str, *, hidden: Sequence[str], cause: str
) -> str:
    """A 5xx problem shows none of `hidden` (hosts, ports, bucket, driver text), and its
    incident id is on a server log line that carries `cause`; returns the incident id."""
    assert response.status_code >= 500, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    for secret in hidden:
        assert secret not in response.text, (secret, response.text)
    incident = response.json()["incident"]
    assert str(uuid.UUID(incident)) == incident
    lines = [line for line in server_log.splitlines() if incident in line]
    assert lines, f"incident {incident} is not in the server log"
    assert any(cause in line for line in lines), (cause, lines)
    return str(incident)
