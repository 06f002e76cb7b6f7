"""Fuzz every operation of the served OpenAPI document with schemathesis, with a valid token.

A bounded number of generated requests per operation (positive and negative data); every
answer must be no 5xx and must conform to the schema the exchange itself publishes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.core.failures import FailureGroup

from exchange.client import file_url
from tests.exchange_server import RunningExchange, running_exchange
from tests.reliability.harness import dev_client, one_file_package, open_case, random_bytes

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 15


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningExchange, dict[str, str]]]:
    """An exchange on embedded defaults holding one case with one sealed package."""
    with running_exchange(tmp_path_factory.mktemp("fuzz") / "node") as running:
        with dev_client(running.url) as client:
            case_id = open_case(client)
            data = random_bytes(4096)
            manifest, jws = one_file_package("a.bin", data)
            package_id = str(manifest["package_id"])
            client.register_package(case_id, manifest=manifest, jws=jws)
            client.put_stream(
                file_url(case_id, package_id, "a.bin"), lambda: io.BytesIO(data), len(data)
            )
            client.seal_package(case_id, package_id)
        yield running, {"case_id": case_id, "package_id": package_id, "path": "a.bin"}


def fuzz_operation(
    operation: Any, base_url: str, auth: dict[str, str], strategy: Any
) -> tuple[int, list[str]]:
    """Run the generated requests of one operation; (requests made, failure reports)."""
    failures: list[str] = []
    made = 0

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def exercise(case: Any) -> None:
        nonlocal made
        response = case.call(base_url=base_url, headers=auth, timeout=30)
        made += 1
        try:
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance]
            )
        except (AssertionError, FailureGroup) as exc:  # collected: one report names them all
            failures.append(f"{operation.label}: {response.status_code}: {exc}"[:800])

    try:
        exercise()
    except Unsatisfiable:
        pass  # negative mode for an operation with nothing to get wrong (no parameters)
    return made, failures


def test_no_operation_answers_5xx_or_off_schema(
    server: tuple[RunningExchange, dict[str, str]],
) -> None:
    running, known = server
    with dev_client(running.url) as client:
        token = client.login()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    schema = schemathesis.openapi.from_url(f"{running.url}/openapi.json")
    failures: list[str] = []
    made = 0
    results: list[Any] = list(schema.get_all_operations())
    for result in results:
        operation: Any = result.ok()
        # Random data both valid and invalid, then valid data aimed at the real case and package.
        existing = {k: v for k, v in known.items() if "{" + k + "}" in operation.path}
        strategies = [
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        ]
        if existing:
            strategies.append(operation.as_strategy(path_parameters=existing))
        for strategy in strategies:
            count, found = fuzz_operation(operation, running.url, auth, strategy)
            made += count
            failures += found
    assert made > 0
    assert failures == [], "\n\n".join(dict.fromkeys(failures))
    assert running.process.poll() is None


def test_ledger_integers_beyond_64_bits_are_refused_not_500(
    server: tuple[RunningExchange, dict[str, str]],
) -> None:
    """Regression: integers past 64 bits once reached the database driver (OverflowError, 500)."""
    running, _ = server
    with dev_client(running.url) as client:
        token = client.login()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    huge = str(2**64)
    answers = [
        httpx.get(f"{running.url}/v1/ledger/consistency?old=1&new={huge}", headers=auth),
        httpx.get(f"{running.url}/v1/ledger/consistency?old={huge}", headers=auth),
        httpx.get(f"{running.url}/v1/ledger/entries/{huge}", headers=auth),
    ]
    assert [a.status_code for a in answers] == [422, 422, 422], [a.text for a in answers]
