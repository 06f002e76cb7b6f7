"""End to end over a real socket (uvicorn), on both backend pairs, with the real CLI client code.

Also: a same-size object swap aborts the download mid-stream, and the object store going down
answers 503 with Retry-After while nothing is recorded.
"""

from __future__ import annotations

import io
import os
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from exchange.api.app import create_app
from exchange.cli.client import fetch_case, grant_body, upload_package
from exchange.client import ClientError, ExchangeClient
from exchange.custody import verify_bundle
from exchange.settings import DEV_KEY_DIR
from exchange.signing import load_public_key_pem
from exchange.storage import ledger_store
from exchange.storage.db import session_scope
from exchange.trust import TrustStore
from tests.api.conftest import (
    AGENCY_OF,
    BACKENDS,
    PH_PARTNER,
    TESTSERVER,
    TH_INVESTIGATOR,
    TH_PROSECUTOR,
    VN_PARTNER,
    Api,
    LiveServer,
    dev_signer,
    make_package,
    make_settings,
    serve_live,
    upload,
)
from tests.api.test_integrity import replace_object
from tests.api.test_packages import assert_problem
from tests.s3server import S3Server


@pytest.fixture(scope="module", params=BACKENDS)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("live") / "var"
    yield from serve_live(
        lambda url: make_settings(
            request, request.param, data_dir, public_url=url, max_file_bytes=16 * 1024 * 1024
        )
    )


def client(live: LiveServer, client_id: str, *, dpop: bool = True) -> ExchangeClient:
    return ExchangeClient(
        base_url=live.url, client_id=client_id, signer=dev_signer(AGENCY_OF[client_id]), dpop=dpop
    )


def test_the_whole_story_over_http(live: LiveServer, tmp_path: Path):
    th, ph, vn, prosecutor = (client(live, c) for c in (TH_INVESTIGATOR, PH_PARTNER, VN_PARTNER,
                                                         TH_PROSECUTOR))  # fmt: skip
    with th, ph, vn, prosecutor:
        assert httpx.get(f"{live.url}/healthz").json()["status"] == "ok"
        case_id = th.create_case(case_ref="TH-1", title="Scam ring", classification="restricted")[
            "case_id"
        ]
        package = make_package(tmp_path)
        result = upload_package(th, package.folder, case_id)
        assert result.package_id == package.package_id
        with pytest.raises(ClientError) as refused:
            ph.get_case(case_id)
        assert refused.value.status == 404
        grant = th.add_grant(case_id, grant_body(country="PH", agency=None, legal_basis="mla",
                                                 reference="MLA-1", days=30, now=datetime.now(UTC)))  # fmt: skip
        trust = TrustStore.from_directory(DEV_KEY_DIR / "trust")
        fetched = fetch_case(ph, case_id, tmp_path / "ph", trust=trust)
        assert [p.package_id for p in fetched] == [package.package_id]
        with pytest.raises(ClientError) as refused:
            vn.get_package(case_id, package.package_id)
        assert refused.value.status == 404
        th.revoke_grant(case_id, grant["grant_id"])
        with pytest.raises(ClientError) as refused:
            ph.get_package(case_id, package.package_id)  # the old token still names the case
        assert refused.value.status == 404
        bundle = prosecutor.custody(case_id)
    key = httpx.get(f"{live.url}/v1/ledger/key").json()
    report = verify_bundle(
        bundle, log_key=load_public_key_pem(key["public_key_pem"].encode()),
        origin=key["origin"], files=tmp_path / "ph",
    )  # fmt: skip
    actions = [e.action for e in report.events]
    assert actions[:3] == ["case.opened", "package.registered", "package.sealed"]
    assert actions[-1] == "custody.exported"
    for needed in ("grant.issued", "bundle.fetched", "grant.revoked"):
        assert needed in actions
    assert report.files_checked == len(package.manifest["files"])
    # Auditors: checkpoint, one entry with its proof, consistency between two sizes.
    checkpoint = httpx.get(f"{live.url}/v1/ledger/checkpoint").json()
    assert checkpoint["tree_size"] >= len(actions)
    consistency = httpx.get(f"{live.url}/v1/ledger/consistency", params={"old": 1}).json()
    assert consistency["tree_size"] == checkpoint["tree_size"]
    seq = report.events[0].seq
    with client(live, PH_PARTNER) as again, pytest.raises(ClientError) as hidden:
        again.get_json(f"/v1/ledger/entries/{seq}")  # PH's grant is revoked: no such entry
    assert hidden.value.status == 404
    with client(live, TH_PROSECUTOR) as owner:
        proof = owner.get_json(f"/v1/ledger/entries/{seq}")
    assert proof["seq"] == seq
    assert proof["format"] == "exchange.ledger-proof/v1"
    metrics = httpx.get(f"{live.url}/metrics").text
    assert "exchange_http_requests_total" in metrics
    assert 'route="/v1/cases/{case_id}/packages/{package_id}/files/{path:path}"' in metrics


def test_a_same_size_swap_aborts_the_download_mid_stream(live: LiveServer, tmp_path: Path):
    big = os.urandom(3 * 1024 * 1024 + 17)  # several chunks, so the stream starts before the end
    package = make_package(tmp_path, files={"disk.img": big})
    with client(live, TH_INVESTIGATOR) as th:
        case_id = th.create_case(case_ref="TH-2", title="Swap", classification="restricted")[
            "case_id"
        ]
        upload_package(th, package.folder, case_id)
        key = live.context.store.key_for(package.manifest["files"][0]["sha256"])
        swapped = big[:-1] + bytes([big[-1] ^ 0xFF])
        replace_object(_ApiView(live), key, swapped)  # type: ignore[arg-type]  # duck-typed view
        with pytest.raises(ClientError) as aborted:
            th.download_file(case_id, package.package_id, "disk.img", io.BytesIO())
    assert aborted.value.code == "stored_object_corrupt"
    assert aborted.value.detail == (
        f"the exchange broke off the download after {len(big) - 17} of {len(big)} bytes: it "
        "detected a corrupt stored object (no longer matching its sealed hash) and recorded it "
        "in the ledger"
    )
    with session_scope(live.context.engine) as session:
        rows = ledger_store.entries_for_case(session, case_id)
        actions = [r.action for r in rows]
    # The fetch was recorded before the first byte; the failure when the hash did not match.
    assert actions[-2:] == ["bundle.fetched", "integrity.failure"]


class _ApiView:
    """What `replace_object` needs of an `Api`: the app context."""

    def __init__(self, live: LiveServer) -> None:
        self.context = live.context


def test_object_store_down_answers_503_and_records_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
):
    server = S3Server(log_dir=tmp_path)
    server.start()
    try:
        settings = make_settings(
            request, "postgresql-s3", tmp_path / "var",
            s3_endpoint=server.endpoint, s3_bucket=f"down-{uuid.uuid4().hex[:8]}",
        )  # fmt: skip
        with TestClient(create_app(settings), base_url=TESTSERVER) as http:
            api = Api(http=http, backend="postgresql-s3")
            case_id = api.open_case()
            sealed = make_package(tmp_path)
            upload(api, case_id, sealed)
            assert api.grant(case_id).status_code == 201
            pending = make_package(tmp_path)
            base = f"/v1/cases/{case_id}/packages/{pending.package_id}"
            registered = api.call("POST", f"/v1/cases/{case_id}/packages", TH_INVESTIGATOR,
                                  json=pending.body())  # fmt: skip
            assert registered.status_code == 201
            first = pending.manifest["files"][0]["path"]
            put = api.call("PUT", f"{base}/files/{first}", TH_INVESTIGATOR,
                           content=pending.data(first))  # fmt: skip
            assert put.status_code == 201
            before = api.actions(case_id)
            server.stop()
            path = pending.manifest["files"][1]["path"]
            responses: list[Any] = [
                api.call(
                    "PUT", f"{base}/files/{path}", TH_INVESTIGATOR, content=pending.data(path)
                ),
                api.call("POST", f"{base}/seal", TH_INVESTIGATOR),
                api.call(
                    "GET",
                    f"/v1/cases/{case_id}/packages/{sealed.package_id}/files/"
                    f"{sealed.manifest['files'][0]['path']}",
                    PH_PARTNER,
                ),
                api.http.get("/healthz"),
            ]
            for response in responses:
                # Since issue 10: the store's own problem type (was the generic "unavailable"),
                # and nothing of the store's address, bucket or driver text.
                body = assert_problem(response, 503, "storage_unavailable")
                assert int(response.headers["retry-after"]) > 0
                assert body["incident"]
                for secret in (
                    server.endpoint, f":{server.port}", settings.s3_bucket, "Errno",
                    "HTTPConnectionPool", "Max retries", "urllib3",
                ):  # fmt: skip
                    assert secret not in response.text, response.text
            assert api.actions(case_id) == before
            files = api.call("GET", base, TH_INVESTIGATOR).json()["files"]
            assert [f["path"] for f in files if f["stored"]] == [first]
            api.verify_ledger()
    finally:
        server.stop()


def test_an_upload_cut_off_mid_body_stores_nothing(live: LiveServer, tmp_path: Path):
    package = make_package(tmp_path, files={"disk.img": os.urandom(2 * 1024 * 1024)})
    entry = package.manifest["files"][0]
    # A bearer token: the raw request below is authorized, so only the cut body can stop it.
    with client(live, TH_INVESTIGATOR, dpop=False) as th:
        case_id = th.create_case(case_ref="TH-3", title="Cut", classification="restricted")[
            "case_id"
        ]
        th.register_package(case_id, manifest=package.manifest, jws=package.jws)
        token = th.login()["access_token"]
        host, port = live.url.removeprefix("http://").split(":")
        path = f"/v1/cases/{case_id}/packages/{package.package_id}/files/disk.img"
        with socket.create_connection((host, int(port))) as raw:
            raw.sendall(
                f"PUT {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Length: {entry['size']}\r\n\r\n".encode()
                + package.data("disk.img")[: 1024 * 1024]
            )
        answer = th.get_package(case_id, package.package_id)
    assert [f["stored"] for f in answer["files"]] == [False]
    assert not live.context.store.exists(live.context.store.key_for(entry["sha256"]))
