"""The published OpenAPI document tells the truth.

Every route declares a typed success document and a problem for each error status it can
answer; the models that mirror a file of schemas/ match that file; and every real answer of the
whole API scenario (tests/api/test_story.py over a real socket, plus a round of refusals)
validates against the document the server itself publishes, checked by openapi-core.
"""

from __future__ import annotations

import copy
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from openapi_core import Config, OpenAPI
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.testing import MockRequest, MockResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exchange.api.app import create_app
from exchange.api.errors import PROBLEM_MEDIA_TYPE
from exchange.client import ExchangeClient, make_client_assertion
from exchange.settings import REPO_ROOT, Settings
from tests.api.conftest import (
    AGENCY_OF,
    BACKENDS,
    PH_PARTNER,
    TH_INVESTIGATOR,
    LiveServer,
    dev_signer,
    make_package,
    make_settings,
    serve_live,
)
from tests.api.test_story import (
    test_an_upload_cut_off_mid_body_stores_nothing as run_cut_off_upload,
    test_the_whole_story_over_http as run_story,
)

SCHEMAS = REPO_ROOT / "schemas"
COMPONENTS = "#/components/schemas/"
# Served, but not part of the API contract (include_in_schema=False or FastAPI's own pages).
OUTSIDE_CONTRACT = {"/openapi.json", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc"}


def published(tmp_path: Path) -> dict[str, Any]:
    """The OpenAPI document of an app (built without starting it)."""
    app = create_app(Settings(data_dir=tmp_path / "var"))
    document: dict[str, Any] = copy.deepcopy(app.openapi())
    return document


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


# ------------------------------------------------------------------------------ declarations


def test_every_route_declares_a_typed_success_and_problem_responses(tmp_path: Path):
    document = published(tmp_path)
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert "ValidationError" not in schemas
    assert len(list(operations(document))) >= 20
    for method, path, operation in operations(document):
        where = f"{method} {path}"
        answers = operation["responses"]
        ok = {s: a for s, a in answers.items() if s.startswith("2")}
        assert ok, f"{where} declares no 2xx answer"
        for status, answer in ok.items():
            content = answer["content"]
            assert content, f"{where} {status} has no content"
            for media_type, body in content.items():
                if media_type.endswith("json"):
                    schema = body["schema"]
                    ref = schema.get("$ref", "")
                    assert ref.startswith(COMPONENTS), f"{where} {status}: untyped {schema}"
                    target = schemas[ref.removeprefix(COMPONENTS)]
                    assert target["type"] == "object"
                    assert target.get("properties"), f"{where} {status}: {ref} has no properties"
                else:  # file bytes: any media type, no JSON Schema to apply
                    assert media_type == "*/*", where
        errors = {s: a for s, a in answers.items() if s[0] in "45"}
        assert "500" in errors, f"{where} does not declare 500"
        if path.startswith("/v1/") and path not in ("/v1/token", "/v1/ledger/key"):
            assert "503" in errors, f"{where} does not declare 503"
        for status, answer in errors.items():
            content = answer["content"]
            if path == "/v1/token" and status in ("400", "401"):
                assert content == {
                    "application/json": {"schema": {"$ref": COMPONENTS + "OAuthError"}}
                }, where
                continue
            assert content == {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": COMPONENTS + "Problem"}}}, (
                f"{where} {status}"
            )
            if status == "503":
                assert answer["headers"]["Retry-After"]["required"] is True
            if status == "401":
                assert answer["headers"]["WWW-Authenticate"]["required"] is True


def test_routes_that_take_a_token_declare_401_and_403(tmp_path: Path):
    document = published(tmp_path)
    open_routes = {
        ("POST", "/v1/token"),
        ("GET", "/.well-known/jwks.json"),
        ("GET", "/.well-known/oauth-authorization-server"),
        ("GET", "/healthz"),
        ("GET", "/livez"),
        ("GET", "/readyz"),
        ("GET", "/v1/ledger/key"),
        ("GET", "/v1/ledger/checkpoint"),
        ("GET", "/v1/ledger/consistency"),
    }
    for method, path, operation in operations(document):
        security = operation.get("security")
        if (method, path) in open_routes:
            assert not security, f"{method} {path} should not need a token"
            continue
        assert security == [{"HTTPBearer": []}], f"{method} {path}"
        assert {"401", "403"} <= set(operation["responses"]), f"{method} {path}"


def test_routes_with_a_json_body_declare_400_413_422(tmp_path: Path):
    document = published(tmp_path)
    with_body = 0
    for method, path, operation in operations(document):
        content = operation.get("requestBody", {}).get("content", {})
        if "application/json" in content:
            with_body += 1
            assert {"400", "413", "422"} <= set(operation["responses"]), f"{method} {path}"
    assert with_body == 3  # cases, packages, grants


def test_the_token_endpoint_declares_its_rfc_6749_errors(tmp_path: Path):
    document = published(tmp_path)
    answers = document["paths"]["/v1/token"]["post"]["responses"]
    assert answers["200"]["content"]["application/json"]["schema"] == {
        "$ref": COMPONENTS + "TokenResponse"
    }
    oauth_error = document["components"]["schemas"]["OAuthError"]
    assert oauth_error["required"] == ["error"]
    assert {"invalid_request", "invalid_client", "unsupported_grant_type"} <= set(
        oauth_error["properties"]["error"]["enum"]
    )
    jwks = document["paths"]["/.well-known/jwks.json"]["get"]["responses"]["200"]
    assert list(jwks["content"]) == ["application/jwk-set+json"]


# -------------------------------------------------------------- models against schemas/


KEYWORDS = (
    "type",
    "const",
    "enum",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "maxLength",
    "minLength",
    "maxItems",
    "minItems",
)


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        ref = schema["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        schema = target
    return schema


def schema_differences(
    ours: dict[str, Any],
    theirs: dict[str, Any],
    *,
    ours_root: dict[str, Any],
    theirs_root: dict[str, Any],
    where: str = "",
) -> list[str]:
    """How the published schema `ours` differs from the schemas/ schema `theirs`.

    Compares what a partner's validator relies on: property names, required members, closed
    objects, and each constraint keyword that schemas/ states.
    """
    ours = _resolve(ours, ours_root)
    theirs = _resolve(theirs, theirs_root)
    found = [
        f"{where or '/'}: {kw} {ours.get(kw)!r} != {theirs[kw]!r}"
        for kw in KEYWORDS
        if kw in theirs and ours.get(kw) != theirs[kw]
    ]
    if "properties" in theirs:
        mine, want = ours.get("properties", {}), theirs["properties"]
        if set(mine) != set(want):
            found.append(f"{where or '/'}: properties {sorted(mine)} != {sorted(want)}")
        if set(ours.get("required", [])) != set(theirs.get("required", [])):
            found.append(f"{where or '/'}: required {ours.get('required')} != {theirs['required']}")
        if ours.get("additionalProperties") != theirs.get("additionalProperties"):
            found.append(f"{where or '/'}: additionalProperties differs")
        for name in set(mine) & set(want):
            found += schema_differences(
                mine[name],
                want[name],
                ours_root=ours_root,
                theirs_root=theirs_root,
                where=f"{where}/{name}",
            )
    if "oneOf" in theirs:  # pydantic writes a union of closed objects as anyOf: the same here
        branches = ours.get("oneOf") or ours.get("anyOf") or []
        if len(branches) != len(theirs["oneOf"]):
            found.append(
                f"{where or '/'}: {len(branches)} alternatives, not {len(theirs['oneOf'])}"
            )
        for n, (mine_branch, want_branch) in enumerate(
            zip(branches, theirs["oneOf"], strict=False)
        ):
            found += schema_differences(
                mine_branch,
                want_branch,
                ours_root=ours_root,
                theirs_root=theirs_root,
                where=f"{where}|{n}",
            )
    if "items" in theirs:
        found += schema_differences(
            ours.get("items", {}),
            theirs["items"],
            ours_root=ours_root,
            theirs_root=theirs_root,
            where=f"{where}[]",
        )
    return found


def _schema_file(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    return loaded


MIRRORS = [
    ("ProofDocument", "proof.v1.json", None),
    ("CustodyBundle", "custody-bundle.v2.json", None),
    ("TrustEntry", "trust-agency.v1.json", "entry"),
]


@pytest.mark.parametrize(("model", "file", "definition"), MIRRORS)
def test_published_models_match_the_schema_files(
    tmp_path: Path, model: str, file: str, definition: str | None
):
    document = published(tmp_path)
    theirs = _schema_file(file)
    target = theirs["$defs"][definition] if definition else theirs
    ours = document["components"]["schemas"][model]
    differences = schema_differences(ours, target, ours_root=document, theirs_root=theirs)
    assert differences == []


def test_the_schema_comparison_sees_a_difference(tmp_path: Path):
    document = published(tmp_path)
    theirs = _schema_file("proof.v1.json")
    changed = copy.deepcopy(theirs)
    changed["properties"]["extra"] = {"type": "string"}
    changed["properties"]["seq"]["minimum"] = 1
    changed["$defs"]["hash"]["pattern"] = "^[0-9a-f]{64}$"
    differences = schema_differences(
        document["components"]["schemas"]["ProofDocument"],
        changed,
        ours_root=document,
        theirs_root=changed,
    )
    assert len(differences) == 4, differences
    assert differences[0].startswith("/: properties")
    assert any(d.startswith("/seq: minimum") for d in differences)
    assert any(d.startswith("/inclusion[]: pattern") for d in differences)
    assert any(d.startswith("/consistency/proof[]: pattern") for d in differences)


# --------------------------------------------------- real answers against the document


@dataclass(frozen=True)
class Recorded:
    """One request and the answer the app sent, as seen at the ASGI boundary."""

    method: str
    path: str
    route: str | None
    query: str
    request_headers: dict[str, str]
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool


class Recorder:
    """ASGI app in front of the exchange that keeps every request and complete answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.seen: list[Recorded] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        body = bytearray()
        complete = False

        async def recording(message: Message) -> None:
            nonlocal complete
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                complete = not message.get("more_body", False)
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route = getattr(scope.get("route"), "path", None)
            self.seen.append(
                Recorded(
                    method=scope["method"],
                    path=scope["path"],
                    route=route.replace(":path}", "}") if route else None,
                    query=scope.get("query_string", b"").decode("latin-1"),
                    request_headers={k.decode(): v.decode() for k, v in scope["headers"]},
                    status=int(start.get("status", 0)),
                    headers={k.decode(): v.decode() for k, v in start.get("headers", [])},
                    body=bytes(body),
                    complete=complete,
                )
            )


def serve_recorded(
    request: pytest.FixtureRequest, backend: str, data_dir: Path
) -> Iterator[tuple[LiveServer, Recorder]]:
    """A live exchange on `backend` with a `Recorder` in front of it."""
    recorders: list[Recorder] = []

    def wrap(app: ASGIApp) -> Recorder:
        recorders.append(Recorder(app))
        return recorders[-1]

    for live in serve_live(
        lambda url: make_settings(
            request, backend, data_dir, public_url=url, max_file_bytes=16 * 1024 * 1024
        ),
        wrap,
    ):
        yield live, recorders[0]


@pytest.fixture(params=BACKENDS)
def recorded_live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, Recorder]]:
    yield from serve_recorded(request, request.param, tmp_path_factory.mktemp("contract") / "var")


@pytest.fixture
def recorded_sqlite(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[LiveServer, Recorder]]:
    yield from serve_recorded(request, "sqlite-local", tmp_path / "var")


def _refusals(live: LiveServer, tmp_path: Path) -> None:
    """Requests the API must refuse, one or more per declared error kind."""
    url = live.url
    # Bearer tokens (dpop=False): the raw requests below send them as `Authorization: Bearer`.
    with (
        ExchangeClient(
            base_url=url, client_id=TH_INVESTIGATOR, signer=dev_signer("TH-RTP"), dpop=False
        ) as th,
        ExchangeClient(
            base_url=url, client_id=PH_PARTNER, signer=dev_signer(AGENCY_OF[PH_PARTNER]), dpop=False
        ) as ph,
    ):
        th_auth = {"Authorization": f"Bearer {th.login()['access_token']}"}
        ph_auth = {"Authorization": f"Bearer {ph.login()['access_token']}"}
        case_id = th.create_case(case_ref="TH-9", title="Refusals", classification="restricted")[
            "case_id"
        ]
    grant = {
        "grantee_country": "PH",
        "scope": ["read"],
        "legal_basis": {"type": "mla", "reference": "MLA-9"},
        "expires_at": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
    }
    token_url = f"{url}/v1/token"
    assertion = make_client_assertion(
        client_id=TH_INVESTIGATOR, signer=dev_signer("VN-C06"), audience=token_url
    )
    package = make_package(tmp_path)
    with httpx.Client(base_url=url, timeout=30) as http:
        expected = [
            (http.get("/v1/cases"), 401),
            (http.get("/v1/cases", headers={"Authorization": "Bearer nope"}), 401),
            (http.post("/v1/cases", json={}, headers=ph_auth), 422),
            (
                http.post(
                    "/v1/cases",
                    json={"case_ref": "x", "title": "y", "classification": "z"},
                    headers=ph_auth,
                ),
                403,
            ),
            (http.get("/v1/cases/no-such-case", headers=th_auth), 404),
            (
                http.post(
                    f"/v1/cases/{case_id}/grants", json={**grant, "scope": []}, headers=th_auth
                ),
                422,
            ),
            (http.get("/v1/ledger/entries/-1", headers=th_auth), 422),
            (http.get("/v1/ledger/consistency", params={"old": 10**9}), 422),
            (http.post("/v1/token", data={"grant_type": "password"}), 400),
            (http.post("/v1/token", data={"grant_type": "client_credentials"}), 400),
            (
                http.post(
                    "/v1/token",
                    data={
                        "grant_type": "client_credentials",
                        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        "client_assertion": assertion,
                    },
                ),
                401,
            ),
            (http.get("/.well-known/jwks.json"), 200),
            (http.get("/.well-known/oauth-authorization-server"), 200),
        ]
        created = http.post(f"/v1/cases/{case_id}/grants", json=grant, headers=th_auth)
        grant_id = created.json()["grant_id"]
        revoke = f"/v1/cases/{case_id}/grants/{grant_id}"
        expected += [
            (created, 201),
            (http.delete(revoke, headers=th_auth), 200),
            (http.delete(revoke, headers=th_auth), 409),
            (http.get(f"/v1/cases/{case_id}/grants", headers=th_auth), 200),
            (
                http.post(f"/v1/cases/{case_id}/packages", json=package.body(), headers=ph_auth),
                404,
            ),
        ]
    for response, status in expected:
        assert response.status_code == status, (response.request.url, response.text)
    # Refused on the declared length alone (httpx will not send a length it does not keep to).
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(
            f"POST /v1/cases HTTP/1.1\r\nHost: {host}\r\nAuthorization: "
            f"{th_auth['Authorization']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {65 * 1024 * 1024}\r\n\r\n".encode()
        )
        assert raw.recv(64).startswith(b"HTTP/1.1 413 ")


def _store_gone(live: LiveServer) -> int:
    """With the local blob directory gone (a volume not mounted), ask for health and
    readiness; the lowest status."""
    blobs = live.context.settings.data_dir / "blobs"
    aside = blobs.with_name("blobs-away")
    blobs.rename(aside)
    try:
        return min(
            httpx.get(f"{live.url}{path}", timeout=30).status_code
            for path in ("/healthz", "/readyz")
        )
    finally:
        aside.rename(blobs)


def _probes(live: LiveServer) -> None:
    """Liveness and readiness of a healthy node."""
    for path in ("/livez", "/readyz", "/healthz"):
        assert httpx.get(f"{live.url}{path}", timeout=30).status_code == 200, path


def _validate(live: LiveServer, recorder: Recorder) -> tuple[list[str], set[int], int]:
    """Validate every complete recorded answer; (failures, statuses seen, answers checked)."""
    document = httpx.get(f"{live.url}/openapi.json").json()
    # RFC 6839: a "+json" media type is JSON; openapi-core only knows application/json itself.
    as_json: dict[str, Callable[[bytes], Any]] = {
        PROBLEM_MEDIA_TYPE: json.loads,
        "application/jwk-set+json": json.loads,
    }
    spec = OpenAPI.from_dict(document, config=Config(extra_media_type_deserializers=as_json))
    failures: list[str] = []
    statuses: set[int] = set()
    checked = 0
    for seen in recorder.seen:
        if (seen.route or seen.path) in OUTSIDE_CONTRACT or not seen.complete:
            continue  # pages outside the contract, streams aborted on purpose
        request = MockRequest(
            host_url=live.url,
            method=seen.method,
            path=seen.path,
            path_pattern=seen.route,
            args=dict(parse_qsl(seen.query)),
            headers=seen.request_headers,
        )
        response = MockResponse(
            data=seen.body,
            status_code=seen.status,
            headers=seen.headers,
            content_type=seen.headers.get("content-type", ""),
        )
        try:
            spec.validate_response(request, response)
        except (PathNotFound, OperationNotFound):
            # Answered before routing: fine for an unknown path or method, not for a known one.
            assert seen.route is None, seen
            assert seen.status in (404, 405), seen
            continue
        except Exception as exc:  # every failure is reported, not just the first
            cause = exc.__cause__ or exc
            failures.append(
                f"{seen.method} {seen.route} -> {seen.status}: {type(exc).__name__}: {cause}"[:600]
            )
        statuses.add(seen.status)
        checked += 1
    return failures, statuses, checked


@pytest.mark.slow
def test_every_answer_of_the_api_scenario_matches_the_published_document(
    recorded_live: tuple[LiveServer, Recorder], tmp_path: Path
):
    live, recorder = recorded_live
    for part in ("story", "cut", "refusals"):
        (tmp_path / part).mkdir()
    run_story(live, tmp_path / "story")
    run_cut_off_upload(live, tmp_path / "cut")
    _refusals(live, tmp_path / "refusals")
    _probes(live)
    if live.context.settings.storage == "local":
        assert _store_gone(live) >= 500
    deadline = time.monotonic() + 10
    while not any(s.status == 413 for s in recorder.seen) and time.monotonic() < deadline:
        time.sleep(0.05)  # the raw-socket refusal is recorded once the app has returned
    failures, statuses, checked = _validate(live, recorder)
    assert failures == [], "\n".join(dict.fromkeys(failures))
    assert checked >= 50
    document = httpx.get(f"{live.url}/openapi.json").json()
    exercised = {(s.method, s.route) for s in recorder.seen if s.complete}
    assert {(m, p) for m, p, _ in operations(document)} <= exercised
    assert {200, 201, 400, 401, 403, 404, 409, 413, 422} <= statuses


def test_the_validation_catches_an_answer_off_the_document(
    recorded_sqlite: tuple[LiveServer, Recorder],
):
    live, recorder = recorded_sqlite
    assert httpx.get(f"{live.url}/v1/ledger/key").status_code == 200
    assert httpx.get(f"{live.url}/v1/cases").status_code == 401
    good = recorder.seen[-2:]
    assert _validate(live, recorder) == ([], {200, 401}, 2)
    key, refused = good
    recorder.seen[:] = [
        # A member the document does not declare, a problem without its media type, and a
        # problem without the challenge header a 401 must carry.
        Recorded(**{**key.__dict__, "body": key.body[:-1] + b', "extra": 1}'}),
        Recorded(
            **{
                **refused.__dict__,
                "headers": {**refused.headers, "content-type": "application/json"},
            }
        ),
        Recorded(
            **{
                **refused.__dict__,
                "headers": {k: v for k, v in refused.headers.items() if k != "www-authenticate"},
            }
        ),
    ]
    failures, _, checked = _validate(live, recorder)
    assert checked == 3
    assert len(failures) == 3, failures
