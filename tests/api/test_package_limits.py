"""Cheap limits on package registration, enforced before the manifest is parsed or checked.

A body size cap per JSON route (the registration route's own, a small one for every other JSON
route), and a count of the manifest's files while its body arrives: a registration over either
is refused with 413 and leaves nothing behind, however malformed the rest of its body is.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from exchange.api.app import create_app
from exchange.api.bodies import read_counting_items
from tests.api.conftest import (
    BACKENDS,
    TESTSERVER,
    TH_INVESTIGATOR,
    Api,
    Package,
    make_package,
    make_settings,
)
from tests.api.test_packages import assert_not_registered, assert_problem

MAX_MANIFEST_BYTES = 64 * 1024
MAX_JSON_BODY_BYTES = 4096
MAX_FILES = 20  # make_settings' max_files_per_package


@pytest.fixture(scope="module", params=BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    settings = make_settings(
        request,
        request.param,
        tmp_path_factory.mktemp("limits") / "var",
        max_manifest_bytes=MAX_MANIFEST_BYTES,
        max_json_body_bytes=MAX_JSON_BODY_BYTES,
    )
    assert settings.max_files_per_package == MAX_FILES
    with TestClient(create_app(settings), base_url=TESTSERVER) as client:
        yield Api(http=client, backend=request.param)


def register(api: Api, case_id: str, content: Any, **headers: str) -> Any:
    return api.call(
        "POST",
        f"/v1/cases/{case_id}/packages",
        TH_INVESTIGATOR,
        content=content,
        headers={"Content-Type": "application/json", **headers},
    )


def with_files(package: Package, count: int) -> dict[str, Any]:
    """The package's registration body with its manifest grown to `count` file entries."""
    manifest = dict(package.manifest)
    first = manifest["files"][0]
    manifest["files"] = [dict(first, path=f"f/{i:05d}.bin") for i in range(count)]
    return {"manifest": manifest, "jws": package.jws}


def assert_nothing_stored(api: Api, case_id: str, package: Package) -> None:
    assert_not_registered(api, case_id, package)
    assert api.actions(case_id) == ["case.opened"]
    assert not any(api.blob_exists(f["sha256"]) for f in package.manifest["files"])


def test_a_registration_body_over_the_routes_limit_is_refused_up_front(api: Api, tmp_path: Path):
    case_id = api.open_case()
    package = make_package(tmp_path)
    body = json.dumps(package.body()).encode() + b" " * MAX_MANIFEST_BYTES  # valid, too long
    response = register(api, case_id, body)
    body_problem = assert_problem(response, 413, "payload_too_large")
    assert body_problem["detail"] == f"request body is larger than {MAX_MANIFEST_BYTES} bytes"
    assert_nothing_stored(api, case_id, package)


def test_a_streamed_registration_body_is_cut_off_at_the_routes_limit(api: Api, tmp_path: Path):
    case_id = api.open_case()
    package = make_package(tmp_path)
    body = json.dumps(package.body()).encode() + b" " * MAX_MANIFEST_BYTES

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    response = register(api, case_id, chunks())
    body_problem = assert_problem(response, 413, "payload_too_large")
    assert body_problem["detail"] == f"request body is larger than {MAX_MANIFEST_BYTES} bytes"
    assert_nothing_stored(api, case_id, package)


def test_other_json_routes_have_the_small_limit_and_registration_its_own(api: Api, tmp_path: Path):
    case = {"case_ref": "TH-1", "title": "x" * MAX_JSON_BODY_BYTES, "classification": "c"}
    response = api.call("POST", "/v1/cases", TH_INVESTIGATOR, json=case)
    problem = assert_problem(response, 413, "payload_too_large")
    assert problem["detail"] == f"request body is larger than {MAX_JSON_BODY_BYTES} bytes"
    case_id = api.open_case()
    names = [f"evidence/phone-extraction/{i:03d}-{'chat-export' * 3}.txt" for i in range(MAX_FILES)]
    package = make_package(tmp_path, files={name: name.encode() + os.urandom(8) for name in names})
    body = json.dumps(package.body()).encode()
    assert MAX_JSON_BODY_BYTES < len(body) < MAX_MANIFEST_BYTES
    # Exactly the limit of files, in a body over the general limit: registered.
    response = register(api, case_id, body)
    assert response.status_code == 201, response.text
    assert len(response.json()["expected_files"]) == MAX_FILES


def test_too_many_files_are_refused_before_the_body_is_parsed(api: Api, tmp_path: Path):
    case_id = api.open_case()
    package = make_package(tmp_path)
    body = json.dumps(with_files(package, MAX_FILES + 1)).encode()
    end = body.index(b"]", body.index(b'"files"'))
    # Not JSON past the 21st entry: a full parse would answer 422, the count answers first.
    broken = body[: end + 1] + b"\x00 not json"
    for content in (body, broken):
        problem = assert_problem(register(api, case_id, content), 413, "payload_too_large")
        assert problem["detail"] == (
            f"package has more than {MAX_FILES} files; this exchange takes at most {MAX_FILES}"
        )
    assert_nothing_stored(api, case_id, package)


def test_too_many_files_off_the_schema_are_refused_for_their_number(api: Api, tmp_path: Path):
    case_id = api.open_case()
    package = make_package(tmp_path)
    body = copy.deepcopy(package.body())
    body["manifest"]["files"] = [{"path": 7}] * (MAX_FILES + 1)  # a schema check would say 422
    problem = assert_problem(register(api, case_id, json.dumps(body)), 413, "payload_too_large")
    assert problem["detail"] == (
        f"package has more than {MAX_FILES} files; this exchange takes at most {MAX_FILES}"
    )
    assert_nothing_stored(api, case_id, package)


def test_a_malformed_registration_body_is_still_a_422(api: Api, tmp_path: Path):
    case_id = api.open_case()
    package = make_package(tmp_path)
    problem = assert_problem(register(api, case_id, b'{"manifest": {'), 422, "invalid_input")
    assert problem["detail"].startswith("body: ")
    problem = assert_problem(register(api, case_id, b'{"jws": "x"}'), 422, "invalid_input")
    assert problem["detail"] == "body/manifest: Field required"
    assert_nothing_stored(api, case_id, package)


class _Pieces:
    """A body handed out in fixed pieces, remembering how much of it was read."""

    def __init__(self, data: bytes, piece: int) -> None:
        self._data = data
        self._piece = piece
        self.read_bytes = 0

    def read(self, n: int = -1) -> bytes:
        out = self._data[self.read_bytes : self.read_bytes + min(n, self._piece)]
        self.read_bytes += len(out)
        return out


def test_the_count_stops_reading_once_past_the_limit():
    entries = [{"path": f"f/{i}", "size": 1} for i in range(100_000)]
    data = json.dumps({"manifest": {"files": entries}, "jws": "x"}).encode()
    body = _Pieces(data, 64 * 1024)
    assert read_counting_items(body, prefix="manifest.files", limit=10_000) is None
    assert body.read_bytes < len(data) // 5  # refused after its first tenth or so
    small = json.dumps({"manifest": {"files": entries[:3]}}).encode()
    assert read_counting_items(_Pieces(small, 7), prefix="manifest.files", limit=3) == small
