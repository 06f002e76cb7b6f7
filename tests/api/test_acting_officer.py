"""Who acted, under what authority: the officer named in a client assertion (`act`), the grant
a partner read under, and partners' reads of manifests and listings, over a real socket
(uvicorn) on both backend pairs, from the assertion to the ledger to the custody timeline.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from exchange.cli.client import fetch_case, grant_body, upload_package
from exchange.client import ClientError, ExchangeClient
from exchange.custody import timeline_lines, verify_bundle
from exchange.errors import NotFoundError
from exchange.grants import CaseView
from exchange.service.packages import record_partner_view
from exchange.settings import DEV_KEY_DIR
from exchange.signing import b64url_decode, load_public_key_pem
from exchange.storage import ledger_store
from exchange.storage.db import session_scope
from exchange.storage.tables import UsedJtiRow
from exchange.trust import TrustStore
from tests.api.conftest import (
    AGENCY_OF,
    BACKENDS,
    PH_PARTNER,
    TH_INVESTIGATOR,
    TH_PROSECUTOR,
    VN_PARTNER,
    LiveServer,
    dev_signer,
    make_package,
    make_settings,
    serve_live,
)

TH_OFFICER = {"sub": "th-rtp-officer-0042", "name": "Pol. Lt. Somchai K."}
PH_OFFICER = {"sub": "ph-nbi-agent-17", "name": "Agent M. Reyes"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(scope="module", params=BACKENDS)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("live") / "var"
    yield from serve_live(
        lambda url: make_settings(request, request.param, data_dir, public_url=url)
    )


def client(
    live: LiveServer, client_id: str, act: Mapping[str, str] | None = None
) -> ExchangeClient:
    return ExchangeClient(
        base_url=live.url, client_id=client_id, signer=dev_signer(AGENCY_OF[client_id]), act=act
    )


def entries(live: LiveServer, case_id: str) -> list[dict[str, Any]]:
    """Every ledger entry about a case, as stored (parsed wire objects), in order."""
    with session_scope(live.context.engine) as session:
        rows = ledger_store.entries_for_case(session, case_id)
        return [json.loads(bytes(r.data)) for r in rows]


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = json.loads(b64url_decode(token.split(".")[1]))
    return claims


def timeline(live: LiveServer, bundle: dict[str, Any], files: Path | None = None) -> list[str]:
    key = httpx.get(f"{live.url}/v1/ledger/key").json()
    report = verify_bundle(
        bundle,
        log_key=load_public_key_pem(key["public_key_pem"].encode()),
        origin=key["origin"],
        files=files,
    )
    return timeline_lines(report)


def new_case(th: ExchangeClient, tmp_path: Path) -> tuple[str, str]:
    """A case with one sealed package (as `th`); returns (case id, package id)."""
    case_id = th.create_case(case_ref="TH-9", title="Who acted", classification="restricted")[
        "case_id"
    ]
    package = make_package(tmp_path)
    upload_package(th, package.folder, case_id)
    return case_id, package.package_id


def grant(th: ExchangeClient, case_id: str, country: str, *, agency: str | None = None,
          reference: str = "MLA-2026-017") -> str:  # fmt: skip
    body = grant_body(country=country, agency=agency, legal_basis="mla", reference=reference,
                      days=30, now=datetime.now(UTC))  # fmt: skip
    grant_id: str = th.add_grant(case_id, body)["grant_id"]
    return grant_id


# ------------------------------------------------------------------ the acting officer


def test_the_officer_goes_from_the_assertion_into_the_token_every_entry_and_the_timeline(
    live: LiveServer, tmp_path: Path
):
    with client(live, TH_INVESTIGATOR, act=TH_OFFICER) as th:
        token = th.login()["access_token"]
        assert claims_of(token)["act"] == TH_OFFICER
        case_id, package_id = new_case(th, tmp_path)
        grant(th, case_id, "PH")
        bundle = th.custody(case_id)
    recorded = entries(live, case_id)
    assert [e["action"] for e in recorded] == [
        "case.opened",
        "package.registered",
        "package.sealed",
        "grant.issued",
        "custody.exported",
    ]
    for entry in recorded:
        assert entry["actor"] == {
            "agency": "TH-RTP",
            "country": "TH",
            "subject": f"client:{TH_INVESTIGATOR}",
            "act": TH_OFFICER,
        }
    lines = timeline(live, bundle)
    who = f"TH-RTP (TH) client:{TH_INVESTIGATOR}, acting: Pol. Lt. Somchai K. (th-rtp-officer-0042)"
    assert f"{who}: case opened (TH-9: Who acted)" in lines[0]
    assert f"{who}: package sealed" in lines[2]
    assert lines[2].endswith(f"[package {package_id}]")
    assert f"{who}: read access granted to all agencies of PH under mla MLA-2026-017" in lines[3]


def test_a_token_without_act_still_works_and_records_no_officer(live: LiveServer, tmp_path: Path):
    with client(live, TH_INVESTIGATOR, act=TH_OFFICER) as th:
        case_id, _ = new_case(th, tmp_path)
    with client(live, TH_PROSECUTOR) as prosecutor:
        assert "act" not in claims_of(prosecutor.login()["access_token"])
        bundle = prosecutor.custody(case_id)
    exported = entries(live, case_id)[-1]
    assert exported["action"] == "custody.exported"
    assert exported["actor"] == {
        "agency": "TH-RTP",
        "country": "TH",
        "subject": f"client:{TH_PROSECUTOR}",
    }
    lines = timeline(live, bundle)
    assert lines[0].count("acting: Pol. Lt. Somchai K. (th-rtp-officer-0042)") == 1
    # The export is the bundle's own last entry: the prosecutor's, with no officer named.
    assert lines[-1].endswith(f"TH-RTP (TH) client:{TH_PROSECUTOR}: custody record exported")


def raw_assertion(live: LiveServer, client_id: str, act: object) -> tuple[str, str]:
    """An assertion of a dev client with any `act` value at all; returns (assertion, jti)."""
    now = int(time.time())
    jti = str(uuid.uuid4())
    claims = {"iss": client_id, "sub": client_id, "aud": f"{live.url}/v1/token",
              "iat": now, "exp": now + 120, "jti": jti, "act": act}  # fmt: skip
    signer = dev_signer(AGENCY_OF[client_id])
    token = jwt.encode(
        claims, signer.private_key, algorithm="EdDSA", headers={"kid": signer.key_id}
    )
    return token, jti


TEXT_RULE = "must be 1 to 200 characters of text, not blank"


@pytest.mark.parametrize(
    ("act", "message"),
    [
        ("th-rtp-officer-0042", "act must be an object"),
        ([TH_OFFICER], "act must be an object"),
        ({"sub": ""}, f"act.sub {TEXT_RULE}"),
        ({"sub": "   "}, f"act.sub {TEXT_RULE}"),
        ({"name": "Somchai"}, f"act.sub {TEXT_RULE}"),
        ({"sub": "x" * 201}, f"act.sub {TEXT_RULE}"),
        ({"sub": "7", "name": "n" * 201}, f"act.name {TEXT_RULE}"),
        ({"sub": "7", "name": "S.\n#3 forged line"}, f"act.name {TEXT_RULE}"),
        ({"sub": "7", "role": "chief"}, "act may hold only sub and name"),
        ({"sub": "7", "act": {"sub": "8"}}, "act may hold only sub and name"),
    ],
)
def test_a_bad_act_claim_is_refused_at_the_token_endpoint(
    live: LiveServer, act: object, message: str
):
    assertion, jti = raw_assertion(live, TH_INVESTIGATOR, act)
    response = httpx.post(
        f"{live.url}/v1/token",
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )
    assert response.status_code == 401
    assert response.json() == {
        "error": "invalid_client",
        "error_description": f"invalid client assertion: {message}",
    }
    assert response.headers["cache-control"] == "no-store"
    # Nothing stored: the assertion's jti was not used up.
    with session_scope(live.context.engine) as session:
        assert session.get(UsedJtiRow, jti) is None


# ------------------------------------------------------------------ under what authority


def test_fetches_name_their_grant_and_partner_reads_of_manifests_are_recorded(
    live: LiveServer, tmp_path: Path
):
    trust = TrustStore.from_directory(DEV_KEY_DIR / "trust")
    with (
        client(live, TH_INVESTIGATOR) as th,
        client(live, PH_PARTNER, act=PH_OFFICER) as ph,
        client(live, VN_PARTNER) as vn,
    ):
        case_id, package_id = new_case(th, tmp_path)
        country_wide = grant(th, case_id, "PH", reference="MLA-2026-017")
        to_nbi = grant(th, case_id, "PH", agency="PH-NBI", reference="MLA-2026-018")
        grant(th, case_id, "VN", reference="MLA-2026-019")
        # The owner's reads are not recorded; its fetch says it needed no grant.
        th.list_packages(case_id)
        files = sorted(f["path"] for f in th.get_package(case_id, package_id)["files"])
        fetch_case(th, case_id, tmp_path / "th", trust=trust)
        before = len(entries(live, case_id))
        fetched = fetch_case(ph, case_id, tmp_path / "ph", trust=trust)
        assert [p.package_id for p in fetched] == [package_id]
        th.revoke_grant(case_id, to_nbi)
        ph.get_package(case_id, package_id)  # now under the country-wide grant
        with pytest.raises(ClientError) as hidden:
            ph.get_package(case_id, str(uuid.uuid4()))
        assert hidden.value.status == 404
        partner_bundle = ph.custody(case_id)
        owner_bundle = th.custody(case_id)
        vn.list_packages(case_id)

    recorded = entries(live, case_id)
    manifest_sha256 = recorded[2]["details"]["manifest_sha256"]
    th_fetches = [e for e in recorded[:before] if e["action"] == "bundle.fetched"]
    assert [e["details"]["files"] for e in th_fetches] == [[f] for f in files]
    assert all(e["details"]["grant"] is None for e in th_fetches)
    assert "package.viewed" not in [e["action"] for e in recorded[:before]]

    by_nbi = {"grant_id": to_nbi, "legal_basis": {"type": "mla", "reference": "MLA-2026-018"}}
    ph_part = recorded[before:]
    assert [(e["action"], e["actor"]["agency"]) for e in ph_part] == [
        ("package.viewed", "PH-NBI"),
        ("package.viewed", "PH-NBI"),
        *[("bundle.fetched", "PH-NBI")] * len(files),
        ("grant.revoked", "TH-RTP"),
        ("package.viewed", "PH-NBI"),
        ("custody.exported", "PH-NBI"),
        ("custody.exported", "TH-RTP"),
        ("package.viewed", "VN-C06"),
    ]
    listing, manifest, *fetches = ph_part[: 2 + len(files)]
    assert "package_id" not in listing
    assert listing["details"] == {"view": "list", "package_count": 1, "grant": by_nbi}
    assert manifest["package_id"] == package_id
    assert manifest["details"] == {
        "view": "manifest",
        "manifest_sha256": manifest_sha256,
        "grant": by_nbi,
    }
    for entry, path in zip(fetches, files, strict=True):
        assert entry["details"]["files"] == [path]
        assert entry["details"]["grant"] == by_nbi
    for entry in (listing, manifest, *fetches):
        assert entry["actor"]["act"] == PH_OFFICER
    after_revocation = ph_part[2 + len(files) + 1]
    assert after_revocation["details"]["grant"] == {
        "grant_id": country_wide,
        "legal_basis": {"type": "mla", "reference": "MLA-2026-017"},
    }
    assert ph_part[-1]["details"]["grant"]["legal_basis"]["reference"] == "MLA-2026-019"

    agent = "PH-NBI (PH) client:ph-nbi-partner, acting: Agent M. Reyes (ph-nbi-agent-17)"
    lines = timeline(live, partner_bundle, files=tmp_path / "ph")
    assert any(
        f"{agent}: listed the case's packages (1) under grant {to_nbi} (mla MLA-2026-018)" in line
        for line in lines
    )
    assert any(
        f"{agent}: read the package manifest and metadata under grant {to_nbi} "
        f"(mla MLA-2026-018) [package {package_id}]" in line
        for line in lines
    )
    assert any(
        f"{agent}: fetched data/{files[0]} (" in line
        and line.endswith(f"bytes) under grant {to_nbi} (mla MLA-2026-018) [package {package_id}]")
        for line in lines
    )
    # The partner's bundle names no other partner's grant (VN's reference) anywhere.
    assert "MLA-2026-019" not in json.dumps(partner_bundle)
    owner_lines = timeline(live, owner_bundle)
    assert any(
        f"TH-RTP (TH) client:{TH_INVESTIGATOR}: fetched data/{files[0]} (" in line
        and line.endswith(f"bytes) as the owning agency [package {package_id}]")
        for line in owner_lines
    )


def test_reads_without_a_live_grant_record_nothing(live: LiveServer, tmp_path: Path):
    with client(live, TH_INVESTIGATOR) as th, client(live, VN_PARTNER) as vn:
        case_id, package_id = new_case(th, tmp_path)
        grant_id = grant(th, case_id, "VN")
        th.revoke_grant(case_id, grant_id)
        count = len(entries(live, case_id))
        for read in (
            lambda: vn.list_packages(case_id),
            lambda: vn.get_package(case_id, package_id),
        ):
            with pytest.raises(ClientError) as refused:
                read()
            assert refused.value.status == 404
    assert len(entries(live, case_id)) == count


def test_the_grant_named_is_the_narrowest_live_one(live: LiveServer, tmp_path: Path):
    # Two grants cover PH-NBI; the agency-named one ends sooner. While both are live the
    # named one is recorded, then the country-wide one.
    with client(live, TH_INVESTIGATOR) as th, client(live, PH_PARTNER) as ph:
        case_id, package_id = new_case(th, tmp_path)
        later = datetime.now(UTC) + timedelta(days=60)
        wide = th.add_grant(case_id, {"grantee_country": "PH", "scope": ["read"],
                                      "legal_basis": {"type": "eio", "reference": "EIO-1"},
                                      "expires_at": later.isoformat()})["grant_id"]  # fmt: skip
        named = grant(th, case_id, "PH", agency="PH-NBI", reference="MLA-5")
        ph.get_package(case_id, package_id)
        th.revoke_grant(case_id, named)
        ph.get_package(case_id, package_id)
    viewed = [e for e in entries(live, case_id) if e["action"] == "package.viewed"]
    assert [e["details"]["grant"]["grant_id"] for e in viewed] == [named, wide]
    assert viewed[1]["details"]["grant"]["legal_basis"] == {"type": "eio", "reference": "EIO-1"}


def test_a_grant_revoked_after_the_snapshot_records_nothing_and_answers_404(
    live: LiveServer, tmp_path: Path
):
    # The read's snapshot saw the grant; it is revoked before the view is recorded. The record
    # checks access again in its own transaction: nothing names the revoked grant.
    with client(live, TH_INVESTIGATOR) as th, client(live, PH_PARTNER) as ph:
        case_id, package_id = new_case(th, tmp_path)
        grant_id = grant(th, case_id, "PH")
        principal = live.context.verifier.verify(ph.login()["access_token"], now=datetime.now(UTC))
        th.revoke_grant(case_id, grant_id)
    count = len(entries(live, case_id))
    with pytest.raises(NotFoundError, match=r"^case not found$"):
        record_partner_view(
            live.context.engine,
            log=live.context.log,
            principal=principal,
            now=datetime.now(UTC),
            case=CaseView(case_id, "TH-RTP"),
            package_id=package_id,
            details={"view": "manifest"},
        )
    assert len(entries(live, case_id)) == count
