"""DPoP-bound access tokens (RFC 9449) over real HTTP (uvicorn), on both backend pairs.

Login with a proof binds the token to the proof's key; every request then needs a fresh proof
for its own method and URL, with the token's hash and the server's nonce. Stolen tokens (no
proof, another key, a replayed proof) are refused, also across replicas sharing a database,
and bearer tokens are refused wherever the setting says so (by default: production).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlmodel import func, select

from exchange.api.app import bootstrap_development
from exchange.client import ExchangeClient, make_client_assertion
from exchange.dpop import NonceSource, key_thumbprint, make_proof
from exchange.model import Role
from exchange.service.dpop import ProofReplayCache
from exchange.settings import DEV_KEY_DIR, Settings
from exchange.signing import Signer
from exchange.storage.db import create_schema, make_engine, session_scope
from exchange.storage.tables import CaseRow, DPoPProofRow
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

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
PROBLEMS = "https://evidence-exchange.example/problems/"
ALGS = 'algs="Ed25519 EdDSA ES256"'


@pytest.fixture(scope="module", params=BACKENDS)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("dpop") / "var"
    yield from serve_live(
        lambda url: make_settings(request, request.param, data_dir, public_url=url)
    )


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Session:
    """A DPoP-bound login: the token, its key and the latest nonce, against one public URL."""

    connect: str  # where the socket goes
    public: str  # the URL the exchange knows itself by (htu and audience)
    token: str
    key: Signer
    nonce: str

    def proof(self, method: str, path: str, **overrides: Any) -> str:
        options: dict[str, Any] = {
            "htm": method,
            "htu": self.public + path,
            "now": now(),
            "access_token": self.token,
            "nonce": self.nonce,
        }
        options.update(overrides)
        return make_proof(options.pop("key", self.key), **options)

    def send(
        self,
        method: str,
        path: str,
        *,
        proof: str | None = None,
        scheme: str = "DPoP",
        **kwargs: Any,
    ) -> httpx.Response:
        headers = {"Authorization": f"{scheme} {self.token}", **kwargs.pop("headers", {})}
        if proof is not None:
            headers["DPoP"] = proof
        response = httpx.request(method, self.connect + path, headers=headers, **kwargs)
        if "dpop-nonce" in response.headers:
            self.nonce = response.headers["dpop-nonce"]
        return response


def token_form(public: str, client_id: str) -> dict[str, str]:
    assertion = make_client_assertion(
        client_id=client_id, signer=dev_signer(AGENCY_OF[client_id]), audience=f"{public}/v1/token"
    )
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }


def login(connect: str, client_id: str = TH_INVESTIGATOR, *, public: str | None = None) -> Session:
    """Log in with a DPoP proof: the nonce round trip first, as a client without one does."""
    public = public or connect
    key = Signer.generate()
    form = token_form(public, client_id)
    first = httpx.post(
        f"{connect}/v1/token",
        data=form,
        headers={"DPoP": make_proof(key, htm="POST", htu=f"{public}/v1/token", now=now())},
    )
    assert first.status_code == 400, first.text
    assert first.json()["error"] == "use_dpop_nonce"
    nonce = first.headers["dpop-nonce"]
    # The same assertion once more: it was not spent by the refused attempt.
    proof = make_proof(key, htm="POST", htu=f"{public}/v1/token", now=now(), nonce=nonce)
    second = httpx.post(f"{connect}/v1/token", data=form, headers={"DPoP": proof})
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["token_type"] == "DPoP"
    return Session(
        connect=connect,
        public=public,
        token=body["access_token"],
        key=key,
        nonce=second.headers["dpop-nonce"],
    )


def assert_401(response: httpx.Response, code: str, detail: str, challenge: str) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["type"] == PROBLEMS + code
    assert body["detail"] == detail
    assert response.headers["www-authenticate"] == challenge


def case_count(live: LiveServer) -> int:
    with session_scope(live.context.engine) as db:
        return db.exec(select(func.count()).select_from(CaseRow)).one()


NEW_CASE = {"case_ref": "TH-DPOP-1", "title": "Bound", "classification": "restricted"}


# --------------------------------------------------------------------------- the good path


def test_login_with_a_proof_binds_the_token_to_its_key(live: LiveServer):
    session = login(live.url)
    claims = jwt.decode(session.token, options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": key_thumbprint(session.key.public_key)}
    response = session.send("GET", "/v1/cases", proof=session.proof("GET", "/v1/cases"))
    assert response.status_code == 200, response.text
    assert live.context.nonces.is_valid(response.headers["dpop-nonce"], now())
    created = session.send("POST", "/v1/cases", proof=session.proof("POST", "/v1/cases"),
                           json=NEW_CASE)  # fmt: skip
    assert created.status_code == 201, created.text


def test_a_query_string_is_not_part_of_htu(live: LiveServer):
    session = login(live.url)
    proof = session.proof("GET", "/v1/cases")
    assert session.send("GET", "/v1/cases?limit=5", proof=proof).status_code == 200


# --------------------------------------------------------------------------- stolen tokens


def test_a_replayed_proof_is_refused_and_the_request_does_nothing(live: LiveServer):
    session = login(live.url)
    proof = session.proof("POST", "/v1/cases")
    assert session.send("POST", "/v1/cases", proof=proof, json=NEW_CASE).status_code == 201
    before = case_count(live)
    again = session.send("POST", "/v1/cases", proof=proof, json=NEW_CASE)
    assert_401(again, "invalid_dpop_proof", "invalid DPoP proof: replayed jti",
               f'DPoP error="invalid_dpop_proof", {ALGS}')  # fmt: skip
    assert case_count(live) == before


def test_a_proof_for_another_method_or_url_is_refused(live: LiveServer):
    session = login(live.url)
    before = case_count(live)
    wrong_method = session.send("POST", "/v1/cases", proof=session.proof("GET", "/v1/cases"),
                                json=NEW_CASE)  # fmt: skip
    assert_401(wrong_method, "invalid_dpop_proof", "invalid DPoP proof: htm is not this request's method",
               f'DPoP error="invalid_dpop_proof", {ALGS}')  # fmt: skip
    for htu in (f"{live.url}/v1/cases/other", "https://elsewhere.example/v1/cases"):
        wrong_url = session.send("POST", "/v1/cases", proof=session.proof("POST", "", htu=htu),
                                 json=NEW_CASE)  # fmt: skip
        assert_401(wrong_url, "invalid_dpop_proof", "invalid DPoP proof: htu is not this request's URL",
                   f'DPoP error="invalid_dpop_proof", {ALGS}')  # fmt: skip
    assert case_count(live) == before


def test_a_bound_token_without_a_proof_is_refused(live: LiveServer):
    session = login(live.url)
    before = case_count(live)
    as_bearer = session.send("POST", "/v1/cases", scheme="Bearer", json=NEW_CASE)
    assert_401(as_bearer, "dpop_required",
               "invalid access token: a DPoP-bound token needs the DPoP scheme and a DPoP proof",
               f'DPoP error="invalid_token", {ALGS}')  # fmt: skip
    # Bearer scheme with a proof beside it: still a bound token sent as a bearer token.
    with_proof = session.send("GET", "/v1/cases", scheme="Bearer",
                              proof=session.proof("GET", "/v1/cases"))  # fmt: skip
    assert with_proof.status_code == 401
    no_header = session.send("POST", "/v1/cases", json=NEW_CASE)
    assert_401(no_header, "invalid_dpop_proof", "invalid DPoP proof: the DPoP header is missing",
               f'DPoP error="invalid_dpop_proof", {ALGS}')  # fmt: skip
    assert case_count(live) == before


def test_two_proofs_are_refused(live: LiveServer):
    session = login(live.url)
    headers = [
        ("Authorization", f"DPoP {session.token}"),
        ("DPoP", session.proof("GET", "/v1/cases")),
        ("DPoP", session.proof("GET", "/v1/cases")),
    ]
    response = httpx.get(f"{live.url}/v1/cases", headers=headers)
    assert_401(response, "invalid_dpop_proof", "invalid DPoP proof: more than one DPoP header",
               f'DPoP error="invalid_dpop_proof", {ALGS}')  # fmt: skip


def test_a_proof_by_another_key_is_refused(live: LiveServer):
    session = login(live.url)
    thief = Signer.generate()
    response = session.send("GET", "/v1/cases", proof=session.proof("GET", "/v1/cases", key=thief))
    assert_401(response, "invalid_dpop_proof",
               "invalid DPoP proof: key is not the one the access token is bound to",
               f'DPoP error="invalid_dpop_proof", {ALGS}')  # fmt: skip


def test_a_stale_or_future_proof_is_refused(live: LiveServer):
    session = login(live.url)
    stale = session.proof("GET", "/v1/cases", now=now() - timedelta(seconds=120))
    assert_401(session.send("GET", "/v1/cases", proof=stale), "invalid_dpop_proof",
               "invalid DPoP proof: too old", f'DPoP error="invalid_dpop_proof", {ALGS}')  # fmt: skip
    future = session.proof("GET", "/v1/cases", now=now() + timedelta(seconds=120))
    assert_401(session.send("GET", "/v1/cases", proof=future), "invalid_dpop_proof",
               "invalid DPoP proof: issued in the future",
               f'DPoP error="invalid_dpop_proof", {ALGS}')  # fmt: skip


def test_a_wrong_ath_is_refused(live: LiveServer):
    session = login(live.url)
    other = login(live.url).token
    proof = session.proof("GET", "/v1/cases", access_token=other)
    assert_401(session.send("GET", "/v1/cases", proof=proof), "invalid_dpop_proof",
               "invalid DPoP proof: ath is not the access token's hash",
               f'DPoP error="invalid_dpop_proof", {ALGS}')  # fmt: skip


def test_an_unbound_token_sent_with_the_dpop_scheme_is_refused(live: LiveServer):
    session = login(live.url)
    session.token = live.context.issuer.issue(
        client_id=TH_INVESTIGATOR, agency="TH-RTP", country="TH", role=Role.INVESTIGATOR,
        case_ids=[], now=now(),
    )  # fmt: skip
    response = session.send("GET", "/v1/cases", proof=session.proof("GET", "/v1/cases"))
    assert_401(response, "unauthenticated", "invalid access token: it is not bound to a DPoP key",
               'Bearer error="invalid_token"')  # fmt: skip


# --------------------------------------------------------------------------- nonces


def test_the_nonce_round_trip_at_a_resource(live: LiveServer):
    session = login(live.url)
    without = session.proof("GET", "/v1/cases", nonce=None)
    response = session.send("GET", "/v1/cases", proof=without)
    assert_401(response, "use_dpop_nonce", "the DPoP proof must carry the server's nonce",
               f'DPoP error="use_dpop_nonce", {ALGS}')  # fmt: skip
    nonce = response.headers["dpop-nonce"]
    assert live.context.nonces.is_valid(nonce, now())
    assert (
        session.send("GET", "/v1/cases", proof=session.proof("GET", "/v1/cases")).status_code == 200
    )
    # A nonce another exchange made is no nonce of ours.
    foreign = NonceSource(b"f" * 32).current(now())
    refused = session.send(
        "GET", "/v1/cases", proof=session.proof("GET", "/v1/cases", nonce=foreign)
    )
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == f'DPoP error="use_dpop_nonce", {ALGS}'


def test_token_endpoint_refuses_a_bad_proof_and_issues_nothing(live: LiveServer):
    key = Signer.generate()
    form = token_form(live.url, PH_PARTNER)
    proof = make_proof(key, htm="GET", htu=f"{live.url}/v1/token", now=now())
    response = httpx.post(f"{live.url}/v1/token", data=form, headers={"DPoP": proof})
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_dpop_proof",
        "error_description": "invalid DPoP proof: htm is not this request's method",
    }
    assert "access_token" not in response.text


def test_spent_proofs_are_kept_until_they_expire_then_purged(live: LiveServer):
    session = login(live.url)
    proof = session.proof("GET", "/v1/cases")
    assert session.send("GET", "/v1/cases", proof=proof).status_code == 200
    cache = live.context.proofs
    with session_scope(live.context.engine) as db:
        rows = db.exec(select(DPoPProofRow)).all()
    assert rows
    assert all(row.expires_at <= now() + timedelta(seconds=71) for row in rows)
    later = now() + timedelta(minutes=5)
    cache._next_purge = 0.0  # the next remember purges (it does so at most every 30 s)
    assert cache.remember("f" * 64, later + timedelta(seconds=70), now=later)
    with session_scope(live.context.engine) as db:
        left = db.exec(select(DPoPProofRow.key)).all()
    assert left == ["f" * 64]


# --------------------------------------------------------------------------- the CLI's client


def test_the_client_logs_in_with_dpop_and_uploads_and_fetches(live: LiveServer, tmp_path: Path):
    client = ExchangeClient(
        base_url=live.url, client_id=TH_INVESTIGATOR, signer=dev_signer("TH-RTP")
    )
    with client:
        case = client.create_case(case_ref="TH-D", title="t", classification="restricted")
        assert client.token_type == "DPoP"
        package = make_package(tmp_path)
        client.register_package(case["case_id"], manifest=package.manifest, jws=package.jws)
        # A nonce gone stale mid-session: the streamed PUT is refused once, then made again.
        client._nonce = NonceSource(b"s" * 32).current(now())
        for entry in package.manifest["files"]:
            client.upload_file(case["case_id"], package.package_id, entry["path"],
                               package.folder / "data" / entry["path"])  # fmt: skip
        client.seal_package(case["case_id"], package.package_id)
        client._nonce = None
        first = package.manifest["files"][0]
        with (tmp_path / "out.bin").open("wb") as sink:
            client.download_file(case["case_id"], package.package_id, first["path"], sink)
        assert (tmp_path / "out.bin").read_bytes() == package.data(first["path"])


# --------------------------------------------------------------------------- replicas


@pytest.fixture(scope="module", params=BACKENDS)
def replicas(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, LiveServer, str]]:
    """Two nodes on one database and data dir (one issuer key), known by one public URL."""
    data_dir = tmp_path_factory.mktemp("replicas") / "var"
    public = "https://exchange.example"
    live_server = contextmanager(serve_live)
    settings = lambda _: make_settings(request, request.param, data_dir, public_url=public)  # noqa: E731
    with live_server(settings) as a, live_server(settings) as b:
        yield a, b, public


def test_a_proof_spent_on_one_replica_is_refused_by_the_other(
    replicas: tuple[LiveServer, LiveServer, str],
):
    a, b, public = replicas
    session = login(a.url, public=public)  # its nonce came from A
    proof = session.proof("GET", "/v1/cases")
    assert session.send("GET", "/v1/cases", proof=proof).status_code == 200
    session.connect = b.url
    replay = session.send("GET", "/v1/cases", proof=proof)
    assert_401(replay, "invalid_dpop_proof", "invalid DPoP proof: replayed jti",
               f'DPoP error="invalid_dpop_proof", {ALGS}')  # fmt: skip
    # B takes A's nonce and A's token with a fresh proof.
    assert (
        session.send("GET", "/v1/cases", proof=session.proof("GET", "/v1/cases")).status_code == 200
    )


# --------------------------------------------------------------------------- bearer tokens


def bearer(live: LiveServer) -> str:
    response = httpx.post(f"{live.url}/v1/token", data=token_form(live.url, TH_INVESTIGATOR))
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"
    return str(response.json()["access_token"])


def test_bearer_tokens_work_in_development_by_default(live: LiveServer):
    response = httpx.get(
        f"{live.url}/v1/cases", headers={"Authorization": f"Bearer {bearer(live)}"}
    )
    assert response.status_code == 200


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A production node (SQLite, own keys, no dev bootstrap), with the dev clients registered."""
    root = tmp_path_factory.mktemp("prod")
    keys = root / "keys"
    keys.mkdir()
    for name in ("issuer", "ledger"):
        (keys / f"{name}.key.pem").write_bytes(Signer.generate().private_pem())
    trust = root / "trust"
    shutil.copytree(DEV_KEY_DIR / "trust", trust)

    def settings_for(url: str) -> Settings:
        return Settings(
            env="production",
            data_dir=root / "var",
            public_url=url,
            issuer_key_path=keys / "issuer.key.pem",
            ledger_key_path=keys / "ledger.key.pem",
            trust_dir=trust,
        )

    for running in serve_live(settings_for):
        # Registered as an operator would (here: the dev clients, from a copy of their trust).
        bootstrap_development(running.context, trust)
        yield running


def test_production_refuses_bearer_logins_and_tokens(production: LiveServer):
    before = case_count(production)
    response = httpx.post(f"{production.url}/v1/token",
                          data=token_form(production.url, TH_INVESTIGATOR))  # fmt: skip
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_dpop_proof",
        "error_description": "a DPoP proof is required: this exchange binds every token",
    }
    # A bearer token (as an older node, or the development setting, would have issued).
    unbound = production.context.issuer.issue(
        client_id=TH_INVESTIGATOR, agency="TH-RTP", country="TH", role=Role.INVESTIGATOR,
        case_ids=[], now=now(),
    )  # fmt: skip
    refused = httpx.post(f"{production.url}/v1/cases", json=NEW_CASE,
                         headers={"Authorization": f"Bearer {unbound}"})  # fmt: skip
    assert_401(refused, "dpop_required",
               "invalid access token: bearer tokens are refused here; log in with DPoP",
               f'DPoP error="invalid_token", {ALGS}')  # fmt: skip
    assert case_count(production) == before
    # DPoP works there, by hand and through the CLI's client.
    session = login(production.url)
    assert session.send("POST", "/v1/cases", proof=session.proof("POST", "/v1/cases"),
                        json=NEW_CASE).status_code == 201  # fmt: skip
    with ExchangeClient(base_url=production.url, client_id=PH_PARTNER,
                        signer=dev_signer("PH-NBI")) as partner:  # fmt: skip
        assert partner.list_cases() == []
        assert partner.token_type == "DPoP"


def test_bearer_setting_defaults(tmp_path: Path):
    assert Settings(data_dir=tmp_path).bearer_tokens_allowed is True
    assert Settings(data_dir=tmp_path, allow_bearer_tokens=False).bearer_tokens_allowed is False
    keys: dict[str, Any] = {
        "issuer_key_path": tmp_path / "i.pem",
        "ledger_key_path": tmp_path / "l.pem",
    }
    production = Settings(env="production", trust_dir=tmp_path, **keys)
    assert production.bearer_tokens_allowed is False
    assert Settings(env="production", trust_dir=tmp_path, allow_bearer_tokens=True,
                    **keys).bearer_tokens_allowed is True  # fmt: skip


def test_the_replay_cache_refuses_a_key_twice_and_keeps_the_ledgers_durability(tmp_path: Path):
    # One pooled connection, so the one the insert used is the one inspected afterwards.
    engine = make_engine(f"sqlite:///{tmp_path / 'replay.db'}", pool_size=1, max_overflow=0)
    try:
        create_schema(engine)
        cache = ProofReplayCache(engine)
        until = now() + timedelta(seconds=70)
        assert cache.remember("a" * 64, until, now=now()) is True
        assert cache.remember("a" * 64, until, now=now()) is False
        with engine.connect() as connection:
            # FULL (2), as the node set it: the insert's NORMAL went back before pooling.
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2
        with session_scope(engine) as db:
            assert db.exec(select(DPoPProofRow.key)).all() == ["a" * 64]
    finally:
        engine.dispose()
