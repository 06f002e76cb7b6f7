"""The fetch's one-query access check and its held small files answer as the step-by-step path does."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest

from exchange.errors import ExchangeError
from exchange.model import Principal, Role
from exchange.service import fetch
from exchange.storage.db import session_scope
from tests.api.conftest import PH_PARTNER, TH_INVESTIGATOR, Api, make_package, upload
from tests.api.test_integrity import replace_object
from tests.api.test_packages import assert_problem

MISSING = "00000000-0000-4000-8000-000000000000"


def principal(agency: str, country: str, role: Role, *scopes: str) -> Principal:
    return Principal(
        client_id=f"{agency.lower()}-test",
        agency=agency,
        country=country,
        role=role,
        scopes=frozenset(scopes),
        token_id="t" * 32,
        expires_at=datetime.now(UTC) + timedelta(minutes=10),
    )


def outcome(call: Callable[[], object]) -> object:
    try:
        return call()
    except ExchangeError as exc:
        return type(exc).__name__, str(exc)


def test_one_query_check_matches_the_stepwise_check_for_every_caller_and_miss(
    api: Api, tmp_path: Path
):
    granted, other = api.open_case(), api.open_case()
    sealed, unsealed, elsewhere = (make_package(tmp_path) for _ in range(3))
    upload(api, granted, sealed)
    upload(api, granted, unsealed, seal=False)
    upload(api, other, elsewhere)
    assert api.grant(granted, "PH").status_code == 201
    assert api.grant(other, "VN").status_code == 201
    revoked = api.grant(other, "PH").json()["grant_id"]
    revoke = f"/v1/cases/{other}/grants/{revoked}"
    assert api.call("DELETE", revoke, TH_INVESTIGATOR).status_code == 200
    path = sealed.manifest["files"][0]["path"]
    callers = [
        principal("TH-RTP", "TH", Role.INVESTIGATOR, "evidence:read"),
        principal("TH-RTP", "TH", Role.ADMIN, "admin", "custody:read"),  # owner, no read scope
        principal("PH-NBI", "PH", Role.PARTNER, "evidence:read"),  # granted, and revoked
        principal("VN-C06", "VN", Role.PARTNER, "evidence:read"),  # granted `other` only
        principal("VN-C06", "VN", Role.PARTNER),  # no scope
        principal("MY-PDRM", "MY", Role.PARTNER, "evidence:read"),  # nothing
    ]
    targets = [
        (granted, sealed.package_id, path),
        (granted, sealed.package_id, "no/such/file"),
        (granted, sealed.package_id, "../escape"),
        (granted, unsealed.package_id, unsealed.manifest["files"][0]["path"]),
        (granted, elsewhere.package_id, elsewhere.manifest["files"][0]["path"]),
        (other, elsewhere.package_id, elsewhere.manifest["files"][0]["path"]),
        (granted, MISSING, path),
        (MISSING, sealed.package_id, path),
    ]
    now = datetime.now(UTC)
    answers = set()
    with session_scope(api.context.engine, read_only=True) as session:
        for caller in callers:
            for target in targets:
                fast = outcome(partial(fetch._fetchable, session, caller, now, *target))
                stepwise = outcome(
                    partial(fetch._fetchable_stepwise, session, caller, now, *target)
                )
                assert fast == stepwise, (caller.agency, caller.scopes, target)
                answers.add(fast if isinstance(fast, tuple) else "served")
    # Every kind of answer was compared, not only refusals.
    assert {a if isinstance(a, str) else a[0] for a in answers} == {
        "served",
        "NotFoundError",
        "ForbiddenError",
        "VerificationError",  # the unsafe path
    }


@pytest.mark.parametrize("size", [4096, fetch.HELD_MAX_BYTES + 1])
def test_small_and_streamed_files_are_served_whole_and_recorded(
    api: Api, tmp_path: Path, size: int
):
    data = os.urandom(size)
    case_id = api.open_case()
    package = make_package(tmp_path, files={"evidence/image.bin": data})
    upload(api, case_id, package)
    assert api.grant(case_id, "PH").status_code == 201
    url = f"/v1/cases/{case_id}/packages/{package.package_id}/files/evidence/image.bin"
    response = api.call("GET", url, PH_PARTNER)
    assert response.status_code == 200
    assert response.content == data
    assert response.headers["content-length"] == str(size)
    assert api.actions(case_id)[-1] == "bundle.fetched"


def forged(api: Api, tmp_path: Path, size: int) -> tuple[str, str, bytes]:
    """A sealed one-file package granted to PH whose stored object was swapped, same size."""
    data = os.urandom(size)
    case_id = api.open_case()
    package = make_package(tmp_path, files={"evidence/image.bin": data})
    upload(api, case_id, package)
    assert api.grant(case_id, "PH").status_code == 201
    sha256 = package.manifest["files"][0]["sha256"]
    replace_object(api, api.context.store.key_for(sha256), bytes(b ^ 0xFF for b in data))
    url = f"/v1/cases/{case_id}/packages/{package.package_id}/files/evidence/image.bin"
    return case_id, url, data


@pytest.mark.parametrize("size", [4096, fetch.HELD_MAX_BYTES])
def test_a_small_same_size_forgery_is_refused_before_any_byte_and_recorded(
    api: Api, tmp_path: Path, size: int
):
    case_id, url, data = forged(api, tmp_path, size)
    response = api.call("GET", url, PH_PARTNER)
    body = assert_problem(response, 502, "stored_object_corrupt", "hash_mismatch")
    assert body["path"] == "evidence/image.bin"
    assert bytes(b ^ 0xFF for b in data[:64]) not in response.content
    actions = api.actions(case_id)
    assert actions[-1] == "integrity.failure"
    assert "bundle.fetched" not in actions  # refused before the fetch was recorded
    api.verify_ledger()


def test_a_streamed_same_size_forgery_ends_short_after_it_is_recorded(api: Api, tmp_path: Path):
    size = fetch.HELD_MAX_BYTES + 1
    case_id, url, _ = forged(api, tmp_path, size)
    response = api.call("GET", url, PH_PARTNER)
    # The answer had begun: the stream ends short of its Content-Length instead of completing,
    # and nothing is raised in the app (no "response already started").
    assert response.status_code == 200
    assert response.headers["content-length"] == str(size)
    assert len(response.content) < size
    assert api.actions(case_id)[-2:] == ["bundle.fetched", "integrity.failure"]
    api.verify_ledger()
