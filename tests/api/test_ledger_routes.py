"""The auditors' ledger routes refuse numbers the database cannot hold, as 422, never 500."""

from __future__ import annotations

import pytest

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
