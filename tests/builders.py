"""Plain builder functions for test data: evidence folders, manifests, signed packages, and
cases with grants in bulk."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert

from exchange.package import build_package, sign_manifest
from exchange.package.source import JWS_NAME, MANIFEST_NAME
from exchange.signing import Signer
from exchange.storage.db import session_scope
from exchange.storage.tables import CaseRow, GrantRow

LEGAL_BASIS = {"type": "warrant", "reference": "W-2026-0042", "issued_by": "Bangkok Criminal Court"}
COLLECTION = {
    "collected_by": {"name": "Pol. Lt. Somchai K.", "role": "digital forensic examiner"},
    "collected_at": "2026-11-20T09:30:00+07:00",
    "location": "Technology Crime Suppression Division, Bangkok",
    "method": "logical extraction",
    "tool": {"name": "ExampleExtract", "version": "7.1.2"},
    "source_device": {"description": "Samsung Galaxy A54, black", "imei": "356938035643809"},
    "seal_numbers": ["TH-SEAL-000123"],
}
FILES = {
    "phone/extraction.bin": b"\x00\x01binary evidence" * 1000,
    "chats/line-export.txt": "ข้อความ: transfer 50,000 THB to account 123\n".encode(),
    "screenshots/wallet.png": b"\x89PNG\r\n\x1a\nnot really a png",
}


def write_source(root: Path, files: dict[str, bytes] | None = None) -> Path:
    """Lay out an evidence folder with `files` (path -> bytes)."""
    for rel, data in (files if files is not None else FILES).items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


def build(
    tmp: Path,
    signer: Signer,
    *,
    agency: str = "TH-RTP",
    created_at: datetime,
    out_name: str = "pkg",
    files: dict[str, bytes] | None = None,
    jws_alg: str | None = None,
) -> Path:
    """Build a real signed package under `tmp` and return its path (folder or .tar)."""
    source = write_source(tmp / f"src-{out_name}", files)
    out = tmp / out_name
    build_package(
        source=source,
        out=out,
        signer=signer,
        agency=agency,
        country=agency[:2],
        case_ref="TH-TCSD-2026-0042",
        legal_basis=dict(LEGAL_BASIS),
        collection=json.loads(json.dumps(COLLECTION)),
        created_at=created_at,
        jws_alg=jws_alg,
    )
    return out


def read_manifest(pkg: Path) -> dict[str, Any]:
    """The manifest.json of a package folder, parsed."""
    loaded: dict[str, Any] = json.loads((pkg / MANIFEST_NAME).read_text(encoding="utf-8"))
    return loaded


def rewrite_manifest(pkg: Path, manifest: dict[str, Any], signer: Signer | None) -> None:
    """Write a new manifest.json; re-sign it with `signer` unless None (then the old JWS stays)."""
    (pkg / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    if signer is not None:
        jws = sign_manifest(manifest, signer)
        (pkg / JWS_NAME).write_text(jws + "\n", encoding="ascii")


def insert_granted_cases(
    engine: Engine,
    *,
    count: int,
    created_from: datetime,
    grant_expires_at: datetime,
    owner: str = "TH-RTP",
    grantee_country: str | None = "PH",
    grantee_agency: str | None = None,
    revoked_at: datetime | None = None,
) -> list[str]:
    """`count` cases of `owner`, each with one read grant to `grantee_country` (none if None),
    written straight into the real tables in bulk (tens of thousands in seconds; the API
    would append a ledger entry per row). Two cases share each `created_at`, a second apart,
    so that listing order also rests on the id. Returns the case ids in list order.
    """
    cases: list[dict[str, Any]] = []
    grants: list[dict[str, Any]] = []
    for n in range(count):
        case_id = str(uuid.uuid4())
        created = created_from + timedelta(seconds=n // 2)
        cases.append(
            {
                "id": case_id,
                "owner_agency": owner,
                "case_ref": f"BULK-{n}",
                "title": "bulk case",
                "classification": "restricted",
                "created_by": "bulk",
                "created_at": created,
            }
        )
        if grantee_country is not None:
            grants.append(
                {
                    "id": str(uuid.uuid4()),
                    "case_id": case_id,
                    "grantee_country": grantee_country,
                    "grantee_agency": grantee_agency,
                    "scope": "read",
                    "legal_basis_type": "mla",
                    "legal_basis_reference": "MLA-BULK",
                    "expires_at": grant_expires_at,
                    "issued_by": "bulk",
                    "created_at": created,
                    "revoked_at": revoked_at,
                    "revoked_by": "bulk" if revoked_at else None,
                }
            )
    with session_scope(engine) as session:
        connection = session.connection()
        connection.execute(insert(CaseRow.__table__), cases)  # type: ignore[attr-defined]
        if grants:
            connection.execute(insert(GrantRow.__table__), grants)  # type: ignore[attr-defined]
    return [c["id"] for c in sorted(cases, key=lambda c: (c["created_at"], c["id"]))]
