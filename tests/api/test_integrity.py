"""Stored bytes replaced behind the exchange's back: the fetch is refused and the failure recorded."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from exchange.storage.local import LocalBlobStore
from tests.api.conftest import PH_PARTNER, Api, make_package, upload
from tests.api.test_packages import assert_problem


def replace_object(api: Api, key: str, data: bytes) -> None:
    """Overwrite a stored object in place, as an intruder with storage access would."""
    store: Any = api.context.store
    if isinstance(store, LocalBlobStore):
        target = store.path_for(key)
        os.chmod(target, 0o644)
        target.write_bytes(data)
        return
    # S3: a plain PUT over the same key through the SDK client, bypassing the exchange.
    store._client.put_object(store.bucket, key, io.BytesIO(data), len(data))


def test_an_object_of_another_size_is_refused_before_anything_is_sent(api: Api, tmp_path: Path):
    case_id = api.open_case()
    package = make_package(tmp_path)
    upload(api, case_id, package)
    assert api.grant(case_id).status_code == 201
    entry = package.manifest["files"][0]
    replace_object(api, api.context.store.key_for(entry["sha256"]), b"forged evidence")
    url = f"/v1/cases/{case_id}/packages/{package.package_id}/files/{entry['path']}"
    body = assert_problem(api.call("GET", url, PH_PARTNER), 502, "stored_object_corrupt")
    assert body["reason"] == "size_mismatch"
    assert body["path"] == entry["path"]
    actions = api.actions(case_id)
    assert actions[-1] == "integrity.failure"
    assert "bundle.fetched" not in actions
    api.verify_ledger()
