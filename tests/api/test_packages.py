"""Upload, seal and read packages; every bad input gets a clear problem and nothing is stored."""

from __future__ import annotations

import copy
import hashlib
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastapi.testclient import TestClient

from exchange.api.app import create_app
from exchange.api.bodies import read_body_in_thread
from exchange.service import agencies
from exchange.signing import Signer, public_key_pem
from exchange.storage.blobstore import BODY_CHUNK_SIZE, Readable
from exchange.storage.db import session_scope
from tests.api.conftest import (
    BACKENDS,
    PH_PARTNER,
    TESTSERVER,
    TH_INVESTIGATOR,
    VN_PARTNER,
    Api,
    Package,
    dev_signer,
    make_package,
    make_settings,
    upload,
)
from tests.builders import rewrite_manifest

MIB = 1024 * 1024
PROBLEM = "https://evidence-exchange.example/problems/"


def assert_problem(response, status: int, code: str, reason: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEM + code
    assert body["code"] == code
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    if reason is not None:
        assert body["reason"] == reason
    return body


def assert_not_registered(api: Api, case_id: str, package: Package) -> None:
    listed = api.call("GET", f"/v1/cases/{case_id}/packages", TH_INVESTIGATOR).json()
    assert package.package_id not in {p["package_id"] for p in listed["packages"]}
    assert api.package_actions(package.package_id) == []
    api.verify_ledger()


def test_upload_seal_and_read_back(api: Api, tmp_path: Path):
    case_id = api.open_case()
    package = make_package(tmp_path)
    base = f"/v1/cases/{case_id}/packages"
    registered = api.call("POST", base, TH_INVESTIGATOR, json=package.body())
    assert registered.status_code == 201
    expected = registered.json()["expected_files"]
    assert sorted(f["path"] for f in expected) == sorted(
        f["path"] for f in package.manifest["files"]
    )
    # An identical retry of the registration answers 200 and what is still expected.
    first = expected[0]["path"]
    put = api.call(
        "PUT", f"{base}/{package.package_id}/files/{first}", TH_INVESTIGATOR,
        content=package.data(first),
    )  # fmt: skip
    assert put.status_code == 201
    again = api.call("PUT", f"{base}/{package.package_id}/files/{first}", TH_INVESTIGATOR,
                     content=package.data(first))  # fmt: skip
    assert again.status_code == 200  # idempotent
    retry = api.call("POST", base, TH_INVESTIGATOR, json=package.body())
    assert retry.status_code == 200
    assert first not in {f["path"] for f in retry.json()["expected_files"]}
    for entry in package.manifest["files"][1:]:
        path = entry["path"]
        url = f"{base}/{package.package_id}/files/{path}"
        assert api.call("PUT", url, TH_INVESTIGATOR, content=package.data(path)).status_code in (
            200,
            201,
        )
    sealed = api.call("POST", f"{base}/{package.package_id}/seal", TH_INVESTIGATOR)
    assert sealed.status_code == 200
    assert sealed.json()["state"] == "sealed"
    got = api.call("GET", f"{base}/{package.package_id}", TH_INVESTIGATOR).json()
    assert got["manifest"] == package.manifest
    assert got["jws"] == package.jws
    assert got["signer_key"]["agency"] == "TH-RTP"
    for entry in package.manifest["files"]:
        body = api.call(
            "GET", f"{base}/{package.package_id}/files/{entry['path']}", TH_INVESTIGATOR
        )
        assert body.status_code == 200
        assert body.content == package.data(entry["path"])
        assert body.headers["content-type"].startswith(entry["media_type"].split(";")[0])
    actions = api.actions(case_id)
    assert actions[:3] == ["case.opened", "package.registered", "package.sealed"]
    assert actions.count("bundle.fetched") == len(package.manifest["files"])
    # Sealing twice, and registering the sealed id again, are conflicts.
    assert_problem(
        api.call("POST", f"{base}/{package.package_id}/seal", TH_INVESTIGATOR), 409, "conflict"
    )
    assert_problem(api.call("POST", base, TH_INVESTIGATOR, json=package.body()), 409, "conflict")
    api.verify_ledger()


def test_manifest_signed_with_another_agencys_key_is_refused(api: Api, tmp_path: Path):
    case_id = api.open_case()
    package = make_package(tmp_path, signer=dev_signer("PH-NBI"))  # says TH-RTP, signed by PH
    response = api.call("POST", f"/v1/cases/{case_id}/packages", TH_INVESTIGATOR,
                        json=package.body())  # fmt: skip
    assert_problem(response, 422, "verification_failed", "agency_mismatch")
    assert_not_registered(api, case_id, package)


def test_manifest_of_another_agency_is_refused(api: Api, tmp_path: Path):
    case_id = api.open_case()
    package = make_package(tmp_path, agency="PH-NBI")  # a valid PH package, uploaded by TH
    response = api.call("POST", f"/v1/cases/{case_id}/packages", TH_INVESTIGATOR,
                        json=package.body())  # fmt: skip
    assert_problem(response, 422, "verification_failed", "agency_mismatch")
    assert_not_registered(api, case_id, package)


def test_manifest_signed_by_an_unknown_key_is_refused(api: Api, tmp_path: Path):
    case_id = api.open_case()
    package = make_package(tmp_path, signer=Signer.generate())
    response = api.call("POST", f"/v1/cases/{case_id}/packages", TH_INVESTIGATOR,
                        json=package.body())  # fmt: skip
    assert_problem(response, 422, "verification_failed", "unknown_key")
    assert_not_registered(api, case_id, package)


def test_manifest_signed_by_a_revoked_key_is_refused(api: Api, tmp_path: Path):
    signer = Signer.generate()
    now = datetime.now(UTC)
    with session_scope(api.context.engine) as session:
        agencies.register_key(session, log=api.context.log, now=now, agency_id="TH-RTP",
                              public_key=public_key_pem(signer.public_key),
                              not_before=now - timedelta(days=1), not_after=now + timedelta(days=30),
                              operator="operator:test")  # fmt: skip
    case_id = api.open_case()
    package = make_package(tmp_path, signer=signer)
    ok = api.call("POST", f"/v1/cases/{case_id}/packages", TH_INVESTIGATOR, json=package.body())
    assert ok.status_code == 201  # good while the key is valid
    with session_scope(api.context.engine) as session:
        agencies.revoke_key(session, log=api.context.log, now=datetime.now(UTC),
                            agency_id="TH-RTP", kid=signer.key_id, operator="operator:test")  # fmt: skip
    later = make_package(tmp_path, signer=signer)
    response = api.call("POST", f"/v1/cases/{case_id}/packages", TH_INVESTIGATOR,
                        json=later.body())  # fmt: skip
    assert_problem(response, 422, "verification_failed", "revoked_key")
    assert_not_registered(api, case_id, later)
    # The package registered before the revocation can no longer be sealed either.
    base = f"/v1/cases/{case_id}/packages/{package.package_id}"
    for entry in package.manifest["files"]:
        put = api.call("PUT", f"{base}/files/{entry['path']}", TH_INVESTIGATOR,
                       content=package.data(entry["path"]))  # fmt: skip
        assert put.status_code == 201
    seal = api.call("POST", f"{base}/seal", TH_INVESTIGATOR)
    assert_problem(seal, 422, "verification_failed", "revoked_key")
    assert "package.sealed" not in api.package_actions(package.package_id)
    api.verify_ledger()


def test_tampered_and_malformed_manifests_are_refused(api: Api, tmp_path: Path):
    case_id = api.open_case()
    package = make_package(tmp_path)
    tampered = copy.deepcopy(package.manifest)
    tampered["case_ref"] = "TH-OTHER-1"
    url = f"/v1/cases/{case_id}/packages"
    response = api.call(
        "POST", url, TH_INVESTIGATOR, json={"manifest": tampered, "jws": package.jws}
    )
    assert_problem(response, 422, "verification_failed", "bad_signature")
    malformed = {**package.manifest, "format": "something/v9"}
    response = api.call(
        "POST", url, TH_INVESTIGATOR, json={"manifest": malformed, "jws": package.jws}
    )
    assert_problem(response, 422, "verification_failed", "schema_invalid")
    response = api.call("POST", url, TH_INVESTIGATOR, json={"manifest": package.manifest})
    assert_problem(response, 422, "invalid_input")
    assert_not_registered(api, case_id, package)


def test_unsafe_path_in_a_manifest_is_refused(api: Api, tmp_path: Path):
    case_id = api.open_case()
    package = make_package(tmp_path)
    manifest = copy.deepcopy(package.manifest)
    manifest["files"][0]["path"] = "../../etc/passwd"
    rewrite_manifest(package.folder, manifest, dev_signer("TH-RTP"))
    evil = Package(package.folder, manifest, (package.folder / "manifest.jws").read_text().strip())
    response = api.call("POST", f"/v1/cases/{case_id}/packages", TH_INVESTIGATOR, json=evil.body())
    assert_problem(response, 422, "verification_failed")
    assert_not_registered(api, case_id, evil)


def _registered(api: Api, tmp_path: Path) -> tuple[str, Package, str]:
    case_id = api.open_case()
    package = make_package(tmp_path)
    response = api.call("POST", f"/v1/cases/{case_id}/packages", TH_INVESTIGATOR,
                        json=package.body())  # fmt: skip
    assert response.status_code == 201
    return case_id, package, f"/v1/cases/{case_id}/packages/{package.package_id}"


def _stored(api: Api, base: str) -> dict[str, bool]:
    files = api.call("GET", base, TH_INVESTIGATOR).json()["files"]
    return {f["path"]: f["stored"] for f in files}


def test_a_body_whose_hash_or_length_lies_is_refused_and_not_stored(api: Api, tmp_path: Path):
    case_id, package, base = _registered(api, tmp_path)
    entry = package.manifest["files"][0]
    path, data = entry["path"], package.data(entry["path"])
    url = f"{base}/files/{path}"
    wrong = bytes([data[0] ^ 1]) + data[1:]
    assert_problem(api.call("PUT", url, TH_INVESTIGATOR, content=wrong), 422,
                   "verification_failed", "hash_mismatch")  # fmt: skip
    assert_problem(api.call("PUT", url, TH_INVESTIGATOR, content=data[:-1]), 422,
                   "verification_failed", "size_mismatch")  # fmt: skip
    assert_problem(api.call("PUT", url, TH_INVESTIGATOR, content=data + b"x"), 422,
                   "verification_failed", "size_mismatch")  # fmt: skip

    def longer() -> Iterator[bytes]:  # no Content-Length: the lie shows only while streaming
        yield data
        yield b"extra"

    assert_problem(api.call("PUT", url, TH_INVESTIGATOR, content=longer()), 422,
                   "verification_failed", "size_mismatch")  # fmt: skip
    assert _stored(api, base)[path] is False
    assert not api.blob_exists(entry["sha256"])
    assert api.actions(case_id) == ["case.opened", "package.registered"]
    api.verify_ledger()


@pytest.fixture(params=BACKENDS)
def big_api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The app on each backend pair, taking files of up to 16 MiB."""
    settings = make_settings(request, request.param, tmp_path / "var", max_file_bytes=16 * MIB)
    with TestClient(create_app(settings), base_url=TESTSERVER) as client:
        yield Api(http=client, backend=request.param)


def test_a_body_of_many_pieces_and_parts_streams_in_and_out_whole(big_api: Api, tmp_path: Path):
    """Larger than two body pieces and than one S3 part, sent in odd-sized chunks: a lie in its
    very last byte is still refused with nothing stored, and the true body round-trips."""
    api = big_api
    data = random.Random(5).randbytes(max(2 * BODY_CHUNK_SIZE, 5 * MIB) + 3)
    case_id = api.open_case()
    package = make_package(tmp_path, files={"disk/image.dd": data})
    base = f"/v1/cases/{case_id}/packages"
    assert api.call("POST", base, TH_INVESTIGATOR, json=package.body()).status_code == 201
    url = f"{base}/{package.package_id}/files/disk/image.dd"

    def chunks(body: bytes) -> Iterator[bytes]:
        for start in range(0, len(body), 100_003):
            yield body[start : start + 100_003]

    headers = {"Content-Length": str(len(data))}
    wrong = data[:-1] + bytes([data[-1] ^ 1])
    assert_problem(api.call("PUT", url, TH_INVESTIGATOR, content=chunks(wrong), headers=headers),
                   422, "verification_failed", "hash_mismatch")  # fmt: skip
    assert not api.blob_exists(hashlib.sha256(data).hexdigest())
    stored = api.call("PUT", url, TH_INVESTIGATOR, content=chunks(data), headers=headers)
    assert stored.status_code == 201, stored.text
    assert api.call("POST", f"{base}/{package.package_id}/seal", TH_INVESTIGATOR).status_code == 200
    fetched = api.call("GET", url, TH_INVESTIGATOR)
    assert fetched.status_code == 200
    assert fetched.content == data
    api.verify_ledger()


class _DisconnectError(Exception):
    pass


async def _body_stream(
    messages: list[bytes], error: Exception | None = None
) -> AsyncIterator[bytes]:
    for message in messages:
        yield message
    if error is not None:
        raise error


def test_body_reader_hands_over_exact_pieces_without_losing_a_byte():
    messages = [bytes([n]) * size for n, size in enumerate([7, 65536, 3, 300_000, 1, 90_000])]
    whole = b"".join(messages)
    pieces: list[bytes] = []

    def work(body: Readable) -> None:
        while piece := body.read(100_000):
            pieces.append(piece)

    anyio.run(read_body_in_thread, _body_stream(messages), work, 100_000)
    assert b"".join(pieces) == whole
    assert [len(p) for p in pieces] == [100_000] * 4 + [len(whole) - 400_000]


def test_body_reader_small_reads_and_read_all():
    messages = [b"abc", b"defghij", b"k"]

    def work(body: Readable) -> tuple[bytes, bytes, bytes]:
        return body.read(2), body.read(-1), body.read(5)

    assert anyio.run(read_body_in_thread, _body_stream(messages), work, 4) == (
        b"ab",
        b"cdefghijk",
        b"",
    )


def test_body_stream_error_reaches_the_reader_as_raised():
    def work(body: Readable) -> bytes:
        return body.read(-1)

    with pytest.raises(_DisconnectError):  # not wrapped in an ExceptionGroup
        anyio.run(read_body_in_thread, _body_stream([b"x" * 10], _DisconnectError()), work, 4)


def test_reader_that_stops_early_does_not_hang_the_pump():
    def work(body: Readable) -> bytes:
        first = body.read(4)
        raise ValueError(first)

    with pytest.raises(
        ValueError, match="aaaa"
    ):  # the pump, blocked on the next piece, is cancelled
        anyio.run(read_body_in_thread, _body_stream([b"a" * 1000] * 50), work, 4)


def test_path_traversal_and_unknown_paths(api: Api, tmp_path: Path):
    _case_id, _package, base = _registered(api, tmp_path)
    for evil in ("%2E%2E/%2E%2E/etc/passwd", "a/%2E%2E/%2E%2E/x", "%2Fetc/passwd"):
        response = api.call("PUT", f"{base}/files/{evil}", TH_INVESTIGATOR, content=b"x")
        assert_problem(response, 422, "verification_failed", "unsafe_path")
    response = api.call("PUT", f"{base}/files/not/in/manifest.bin", TH_INVESTIGATOR, content=b"x")
    assert_problem(response, 404, "not_found")
    assert not any(_stored(api, base).values())
    api.verify_ledger()


def test_oversized_bodies_and_packages_get_413(api: Api, tmp_path: Path):
    case_id, package, base = _registered(api, tmp_path)
    path = package.manifest["files"][0]["path"]
    limit = api.context.limits.max_file_bytes
    response = api.call("PUT", f"{base}/files/{path}", TH_INVESTIGATOR,
                        headers={"Content-Length": str(limit + 1)}, content=b"x" * (limit + 1))  # fmt: skip
    assert_problem(response, 413, "payload_too_large")
    big = make_package(tmp_path, files={"big.bin": b"\0" * (limit + 1)})
    response = api.call("POST", f"/v1/cases/{case_id}/packages", TH_INVESTIGATOR, json=big.body())
    assert_problem(response, 413, "payload_too_large")
    many = make_package(tmp_path, files={f"f{i}.txt": b"%d" % i for i in range(21)})
    response = api.call("POST", f"/v1/cases/{case_id}/packages", TH_INVESTIGATOR, json=many.body())
    assert_problem(response, 413, "payload_too_large")
    assert_not_registered(api, case_id, big)
    assert not any(_stored(api, base).values())


def test_seal_with_missing_files_is_refused_and_the_package_stays_hidden(api: Api, tmp_path: Path):
    case_id, package, base = _registered(api, tmp_path)
    first = package.manifest["files"][0]["path"]
    assert api.call("PUT", f"{base}/files/{first}", TH_INVESTIGATOR,
                    content=package.data(first)).status_code == 201  # fmt: skip
    body = assert_problem(api.call("POST", f"{base}/seal", TH_INVESTIGATOR), 409, "conflict")
    assert "not uploaded" in body["detail"]
    assert api.grant(case_id).status_code == 201
    # PH may read the case now, but an unsealed package is invisible to all but its uploader.
    assert api.call("GET", f"/v1/cases/{case_id}", PH_PARTNER).status_code == 200
    assert api.call("GET", f"/v1/cases/{case_id}/packages", PH_PARTNER).json()["packages"] == []
    assert_problem(api.call("GET", base, PH_PARTNER), 404, "not_found")
    assert_problem(api.call("GET", f"{base}/files/{first}", PH_PARTNER), 404, "not_found")
    assert "package.sealed" not in api.actions(case_id)
    api.verify_ledger()


def test_other_countries_see_nothing_and_guessing_ids_gives_404(api: Api, tmp_path: Path):
    case_id = api.open_case()
    package = make_package(tmp_path)
    upload(api, case_id, package)
    path = package.manifest["files"][0]["path"]
    base = f"/v1/cases/{case_id}/packages/{package.package_id}"
    for client in (PH_PARTNER, VN_PARTNER):
        for url in (f"/v1/cases/{case_id}", f"/v1/cases/{case_id}/packages", base,
                    f"{base}/files/{path}", f"/v1/cases/{case_id}/custody",
                    f"/v1/cases/{case_id}/grants"):  # fmt: skip
            assert_problem(api.call("GET", url, client), 404, "not_found")
        assert case_id not in {
            c["case_id"] for c in api.call("GET", "/v1/cases", client).json()["cases"]
        }
    # A case that does not exist answers exactly like one the caller may not see.
    missing = api.call("GET", "/v1/cases/00000000-0000-4000-8000-000000000000", PH_PARTNER)
    hidden = api.call("GET", f"/v1/cases/{case_id}", PH_PARTNER)
    assert missing.json() == hidden.json()
    assert "bundle.fetched" not in api.actions(case_id)
