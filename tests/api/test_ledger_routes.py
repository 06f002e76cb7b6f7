"""The auditors' ledger routes refuse numbers the database cannot hold, as 422, never 500."""

from __future__ import annotations

import base64

import pytest

from exchange.ledger.checkpoint import key_fingerprint
from exchange.ledger.consistency import verify_log_growth
from exchange.signing import public_key_pem
from tests.api.conftest import TH_INVESTIGATOR, Api
from tests.api.test_packages import assert_problem

BEYOND_64_BITS = str(2**64)


@pytest.mark.parametrize(
    "url",
    [
        f"/v1/ledger/entries/{BEYOND_64_BITS}",
        f"/v1/ledger/consistency?old={BEYOND_64_BITS}",
        f"/v1/ledger/consistency?old=1&new={BEYOND_64_BITS}",
        "/v1/ledger/entries/-1",
        "/v1/ledger/consistency?old=0",
    ],
)
def test_out_of_range_numbers_are_invalid_input(api: Api, url: str):
    before = api.http.get("/v1/ledger/checkpoint").json()["tree_size"]
    assert_problem(api.call("GET", url, TH_INVESTIGATOR), 422, "invalid_input")
    assert api.http.get("/v1/ledger/checkpoint").json()["tree_size"] == before


def test_the_ledger_key_names_its_vkey_and_fingerprint(api: Api):
    body = api.http.get("/v1/ledger/key").json()
    log = api.context.log
    assert body == {
        "origin": log.origin,
        "public_key_pem": public_key_pem(log.private_key.public_key()),
        "vkey": log.vkey,
        "fingerprint": key_fingerprint(log.private_key.public_key()),
    }


def test_consistency_from_a_seen_size_to_the_latest_verifies(api: Api):
    api.call("POST", "/v1/cases", TH_INVESTIGATOR,
             json={"case_ref": "C-1", "title": "t", "classification": "restricted"})  # fmt: skip
    latest = api.http.get("/v1/ledger/checkpoint").json()
    verify = api.context.log.verifier().verify
    new = verify(latest["checkpoint"])
    body = api.http.get(
        "/v1/ledger/consistency", params={"old": 1, "new": latest["tree_size"]}
    ).json()
    old = verify(body["old_checkpoint"])
    assert (body["old_size"], body["tree_size"], old.size) == (1, new.size, 1)
    verify_log_growth(seen=old, current=new, proof=[base64.b64decode(h) for h in body["proof"]])


def test_the_openapi_document_declares_the_fingerprint(api: Api):
    document = api.http.get("/openapi.json").json()
    answer = document["paths"]["/v1/ledger/key"]["get"]["responses"]["200"]
    assert answer["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/LedgerKey"
    }
    key = document["components"]["schemas"]["LedgerKey"]
    assert "fingerprint" in key["required"]
    assert key["properties"]["fingerprint"]["pattern"] == "^[0-9a-f]{4}( [0-9a-f]{4}){15}$"
