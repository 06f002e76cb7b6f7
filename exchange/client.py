"""HTTP client of the exchange API for the CLI: private_key_jwt login, problem errors, streaming.

Speaks only HTTP (httpx) and the core; it knows nothing of the server's storage or database.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import httpx
import jwt

from exchange.dpop import make_proof
from exchange.signing import Signer, signing_algorithm

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CHUNK_SIZE = 1024 * 1024
# Authorization schemes: RFC 6750 bearer tokens, RFC 9449 DPoP-bound tokens.
BEARER_SCHEME = "Bearer"
DPOP_SCHEME = "DPoP"


class ClientError(Exception):
    """The server answered with an error (an RFC 9457 problem where it could).

    `incident` is the server's id of a server-side failure (5xx), shown in the message so a
    partner can quote it to the exchange's operators, whose log holds the cause.
    """

    def __init__(self, status: int, code: str, detail: str, incident: str | None = None) -> None:
        shown = f"{status} {code}: {detail}"
        super().__init__(f"{shown} (incident {incident})" if incident else shown)
        self.status = status
        self.code = code
        self.detail = detail
        self.incident = incident


# Client assertions from an Ed25519 key still say `EdDSA`: only the exchange's token endpoint
# reads them, and one not yet updated for RFC 9864 refuses `Ed25519`, while every exchange
# accepts `EdDSA`. A partner's CLI is often newer than the foreign exchange it logs in to.
ASSERTION_ED25519_ALG = "EdDSA"


def make_client_assertion(
    *,
    client_id: str,
    signer: Signer,
    audience: str,
    lifetime_seconds: int = 120,
    algorithm: str | None = None,
    act: Mapping[str, str] | None = None,
) -> str:
    """An RFC 7523 client assertion: iss = sub = client id, aud = the token endpoint, fresh jti.

    `act` (``{"sub": officer id, "name": display name}``) names the officer acting through the
    client; signed with the rest of the assertion, it is carried into the access token and
    recorded in every ledger entry made with it.

    `algorithm` overrides the JWS alg (``Ed25519`` or ``EdDSA`` for an Ed25519 key); by default
    ``EdDSA`` for Ed25519 keys (see `ASSERTION_ED25519_ALG`) and ``ES256`` for P-256 keys.
    """
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + lifetime_seconds,
        "jti": str(uuid.uuid4()),
    }
    if act is not None:
        claims["act"] = dict(act)
    if algorithm is None:
        algorithm = ASSERTION_ED25519_ALG if signer.is_ed25519 else signer.algorithm
    return jwt.encode(
        claims,
        signer.private_key,
        algorithm=signing_algorithm(signer, algorithm),
        headers={"kid": signer.key_id},
    )


def raise_for_problem(response: httpx.Response) -> None:
    """Raise `ClientError` for any 4xx/5xx, reading the problem document when there is one."""
    if response.status_code < 400:
        return
    code, detail, incident = "error", response.reason_phrase, None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("code") or body.get("error") or code)
        detail = str(body.get("detail") or body.get("error_description") or detail)
        if isinstance(body.get("incident"), str):
            incident = body["incident"]
    raise ClientError(response.status_code, code, detail, incident)


def _asks_for_nonce(response: httpx.Response) -> bool:
    """Whether the server refused a DPoP proof for want of its nonce (RFC 9449 §8-9)."""
    if "dpop-nonce" not in response.headers:
        return False
    if response.status_code == 400:  # the token endpoint: an RFC 6749 error body
        try:
            body = response.json()
        except ValueError:
            return False
        return isinstance(body, dict) and body.get("error") == "use_dpop_nonce"
    challenge = response.headers.get("www-authenticate", "")
    return response.status_code == 401 and 'error="use_dpop_nonce"' in challenge


@dataclass
class ExchangeClient:
    """A logged-in session against one exchange: fetches and renews its access token itself.

    With `dpop` (the default) its tokens are bound (RFC 9449) to `dpop_signer`, a fresh Ed25519
    key of this session's own that never leaves memory: the tokens are not saved either, so a
    token copied off the wire or out of a log is useless without a key that dies with the
    process, and the client's long-term key keeps its one job, signing assertions. Against an
    exchange that answers `token_type` Bearer (one without DPoP) it sends bearer tokens.
    """

    base_url: str
    client_id: str
    signer: Signer
    # The officer acting through this client ({"sub": id, "name": display name}), if any.
    act: Mapping[str, str] | None = None
    http: httpx.Client = field(
        default_factory=lambda: httpx.Client(timeout=httpx.Timeout(30.0, read=300.0))
    )
    dpop: bool = True
    dpop_signer: Signer = field(default_factory=Signer.generate)
    _token: str | None = None
    _token_type: str = BEARER_SCHEME
    _token_expires: float = 0.0
    _nonce: str | None = None

    @property
    def token_endpoint(self) -> str:
        """Absolute URL of POST /v1/token (also the assertion's audience)."""
        return self.base_url.rstrip("/") + "/v1/token"

    @property
    def token_type(self) -> str:
        """``DPoP`` once logged in with a bound token, else ``Bearer``."""
        return self._token_type

    def _proof(self, method: str, url: str, access_token: str | None = None) -> str:
        return make_proof(
            self.dpop_signer,
            htm=method,
            htu=url,
            now=datetime.now(UTC),
            access_token=access_token,
            nonce=self._nonce,
        )

    def _keep_nonce(self, response: httpx.Response) -> None:
        nonce = response.headers.get("dpop-nonce")
        if nonce:
            self._nonce = nonce

    def login(self) -> dict[str, Any]:
        """Exchange a signed client assertion for an access token; returns the token response."""
        response = self._token_request()
        if self.dpop and _asks_for_nonce(response):
            response = self._token_request()  # now with the nonce the answer carried
        raise_for_problem(response)
        body: dict[str, Any] = response.json()
        self._token = body["access_token"]
        kind = str(body.get("token_type")).lower()
        self._token_type = DPOP_SCHEME if kind == "dpop" else BEARER_SCHEME
        self._token_expires = time.monotonic() + float(body.get("expires_in", 60)) - 30
        return body

    def _token_request(self) -> httpx.Response:
        assertion = make_client_assertion(
            client_id=self.client_id,
            signer=self.signer,
            audience=self.token_endpoint,
            act=self.act,
        )
        headers = {"DPoP": self._proof("POST", self.token_endpoint)} if self.dpop else {}
        response = self.http.post(
            self.token_endpoint,
            data={
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": assertion,
            },
            headers=headers,
        )
        self._keep_nonce(response)
        return response

    def _auth(self, method: str, url: str) -> dict[str, str]:
        """The Authorization header (and DPoP proof) for one request to `url`."""
        if self._token is None or time.monotonic() >= self._token_expires:
            self.login()
        assert self._token is not None  # noqa: S101  # login() set it or raised
        if self._token_type != DPOP_SCHEME:
            return {"Authorization": f"Bearer {self._token}"}
        return {
            "Authorization": f"DPoP {self._token}",
            "DPoP": self._proof(method, url, access_token=self._token),
        }

    def request(
        self,
        method: str,
        path: str,
        *,
        content_factory: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """An authorized request; raises `ClientError` on an error answer.

        A request refused for want of the server's DPoP nonce is sent once more with it; a
        streamed body is then made afresh by `content_factory` (a plain `content` is re-sent).
        """
        url = self.base_url.rstrip("/") + path
        extra = kwargs.pop("headers", {})
        for attempt in (1, 2):
            if content_factory is not None:
                kwargs["content"] = content_factory()
            headers = {**self._auth(method, url), **extra}
            response = self.http.request(method, url, headers=headers, **kwargs)
            self._keep_nonce(response)
            if attempt == 1 and self._token_type == DPOP_SCHEME and _asks_for_nonce(response):
                continue
            break
        raise_for_problem(response)
        return response

    def get_json(self, path: str, **kwargs: Any) -> Any:
        """GET and parse JSON."""
        return self.request("GET", path, **kwargs).json()

    def post_json(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST a JSON body and parse the JSON answer."""
        return self.request("POST", path, json=dict(body)).json()

    def put_file(
        self, path: str, source: Path, *, on_bytes: Callable[[int], None] | None = None
    ) -> Any:
        """PUT a file as a streamed body (constant memory), reporting progress."""
        return self.put_stream(
            path, lambda: source.open("rb"), source.stat().st_size, on_bytes=on_bytes
        )

    def put_stream(
        self,
        path: str,
        opener: Callable[[], BinaryIO],
        size: int,
        *,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Any:
        """PUT `size` bytes read from a fresh `opener()` stream, in chunks, reporting progress."""

        def chunks() -> Iterator[bytes]:
            with opener() as f:
                while chunk := f.read(CHUNK_SIZE):
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                    yield chunk

        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        response = self.request("PUT", path, content_factory=chunks, headers=headers)
        return response.json() if response.content else None

    def download(
        self, path: str, sink: BinaryIO, *, on_bytes: Callable[[int], None] | None = None
    ) -> int:
        """Stream a GET body into `sink`; returns the byte count.

        A body the server breaks off once it has answered 200 (closing the connection before its
        Content-Length) raises `ClientError` with code ``stored_object_corrupt``: the exchange
        breaks off a started download only when it finds its stored object no longer matching
        the sealed hash, and it records that in the ledger first. A connection that fails
        otherwise (reset, timeout, closed before any answer) raises ``stream_aborted``.
        """
        total = 0
        expected: str | None = None  # the Content-Length, once a 2xx answer has begun
        url = self.base_url.rstrip("/") + path
        try:
            for attempt in (1, 2):
                with self.http.stream("GET", url, headers=self._auth("GET", url)) as response:
                    self._keep_nonce(response)
                    if response.status_code >= 400:
                        response.read()
                        if attempt == 1 and _asks_for_nonce(response):
                            continue  # once more, with the nonce this answer carried
                        raise_for_problem(response)
                    expected = response.headers.get("content-length", "?")
                    for chunk in response.iter_bytes(CHUNK_SIZE):
                        sink.write(chunk)
                        total += len(chunk)
                        if on_bytes is not None:
                            on_bytes(len(chunk))
                    return total
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout) as exc:
            if expected is None:
                raise ClientError(
                    0, "stream_aborted", f"the connection broke off before an answer: {exc}"
                ) from exc
            if isinstance(exc, httpx.RemoteProtocolError):
                raise ClientError(
                    0,
                    "stored_object_corrupt",
                    f"the exchange broke off the download after {total} of {expected} bytes: "
                    "it detected a corrupt stored object (no longer matching its sealed hash) "
                    "and recorded it in the ledger",
                ) from exc
            raise ClientError(
                0,
                "stream_aborted",
                f"the connection broke off after {total} of {expected} bytes: {exc}",
            ) from exc
        raise AssertionError("unreachable: the second attempt returns or raises")

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.http.close()

    def __enter__(self) -> ExchangeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ the API, one call each

    def create_case(self, *, case_ref: str, title: str, classification: str) -> dict[str, Any]:
        """POST /v1/cases; returns the created case."""
        body = {"case_ref": case_ref, "title": title, "classification": classification}
        created: dict[str, Any] = self.post_json("/v1/cases", body)
        return created

    def list_cases(self) -> list[dict[str, Any]]:
        """GET /v1/cases: the cases this client may see, every page of them."""
        # The largest page the server allows: fewest round trips.
        url: str | None = "/v1/cases?limit=1000"
        cases: list[dict[str, Any]] = []
        while url is not None:
            body = self.get_json(url)
            cases.extend(_items(body, "cases"))
            following = body.get("next") if isinstance(body, dict) else None
            # Only a path on this server: the token must never travel to a host the answer names.
            if following is not None and (
                not isinstance(following, str)
                or not following.startswith("/")
                or following.startswith("//")
            ):
                raise ClientError(0, "bad_response", "the server's next page is not a local path")
            url = following
        return cases

    def get_case(self, case_id: str) -> dict[str, Any]:
        """GET /v1/cases/{id}."""
        case: dict[str, Any] = self.get_json(f"/v1/cases/{_seg(case_id)}")
        return case

    def register_package(self, case_id: str, *, manifest: Mapping[str, Any], jws: str) -> Any:
        """POST /v1/cases/{id}/packages with the signed manifest; returns the server's answer."""
        return self.post_json(
            f"/v1/cases/{_seg(case_id)}/packages", {"manifest": dict(manifest), "jws": jws}
        )

    def upload_file(
        self,
        case_id: str,
        package_id: str,
        path: str,
        source: Path,
        *,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Any:
        """PUT one evidence file of a registered package, streamed."""
        return self.put_file(file_url(case_id, package_id, path), source, on_bytes=on_bytes)

    def seal_package(self, case_id: str, package_id: str) -> Any:
        """POST .../packages/{pid}/seal."""
        return self.request(
            "POST", f"/v1/cases/{_seg(case_id)}/packages/{_seg(package_id)}/seal"
        ).json()

    def list_packages(self, case_id: str) -> list[dict[str, Any]]:
        """GET /v1/cases/{id}/packages."""
        return _items(self.get_json(f"/v1/cases/{_seg(case_id)}/packages"), "packages")

    def get_package(self, case_id: str, package_id: str) -> dict[str, Any]:
        """GET /v1/cases/{id}/packages/{pid}: the manifest and its JWS."""
        package: dict[str, Any] = self.get_json(
            f"/v1/cases/{_seg(case_id)}/packages/{_seg(package_id)}"
        )
        return package

    def download_file(
        self,
        case_id: str,
        package_id: str,
        path: str,
        sink: BinaryIO,
        *,
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        """GET one evidence file into `sink`."""
        return self.download(file_url(case_id, package_id, path), sink, on_bytes=on_bytes)

    def add_grant(self, case_id: str, grant: Mapping[str, Any]) -> dict[str, Any]:
        """POST /v1/cases/{id}/grants."""
        created: dict[str, Any] = self.post_json(f"/v1/cases/{_seg(case_id)}/grants", grant)
        return created

    def revoke_grant(self, case_id: str, grant_id: str) -> Any:
        """DELETE /v1/cases/{id}/grants/{gid}."""
        response = self.request("DELETE", f"/v1/cases/{_seg(case_id)}/grants/{_seg(grant_id)}")
        return response.json() if response.content else None

    def list_grants(self, case_id: str) -> list[dict[str, Any]]:
        """GET /v1/cases/{id}/grants (the case owner only)."""
        return _items(self.get_json(f"/v1/cases/{_seg(case_id)}/grants"), "grants")

    def ledger_key(self) -> dict[str, Any]:
        """GET /v1/ledger/key; see `get_ledger_key`."""
        return get_ledger_key(self.base_url, http=self.http)

    def ledger_checkpoint(self) -> dict[str, Any]:
        """GET /v1/ledger/checkpoint: origin, tree_size, root_hash and the signed note."""
        checkpoint: dict[str, Any] = self.get_json("/v1/ledger/checkpoint")
        return checkpoint

    def ledger_consistency(self, *, old: int, new: int) -> dict[str, Any]:
        """GET /v1/ledger/consistency: the proof that tree size `new` extends size `old`."""
        proof: dict[str, Any] = self.get_json(
            "/v1/ledger/consistency", params={"old": old, "new": new}
        )
        return proof

    def custody(self, case_id: str) -> dict[str, Any]:
        """GET /v1/cases/{id}/custody: the custody bundle."""
        bundle: dict[str, Any] = self.get_json(f"/v1/cases/{_seg(case_id)}/custody")
        return bundle


def get_ledger_key(base_url: str, *, http: httpx.Client | None = None) -> dict[str, Any]:
    """GET /v1/ledger/key (no login needed): origin, public_key_pem and the C2SP vkey."""
    url = base_url.rstrip("/") + "/v1/ledger/key"
    response = http.get(url) if http is not None else httpx.get(url, timeout=30.0)
    raise_for_problem(response)
    key: dict[str, Any] = response.json()
    return key


def _seg(value: str) -> str:
    """One URL path segment, percent-encoded."""
    return quote(value, safe="")


def file_url(case_id: str, package_id: str, path: str) -> str:
    """The API path of one evidence file of a package."""
    return f"/v1/cases/{_seg(case_id)}/packages/{_seg(package_id)}/files/{quote(path, safe='/')}"


def _items(body: Any, key: str) -> list[dict[str, Any]]:
    """A list answer, whether bare or wrapped as {key: [...]}/{"items": [...]}."""
    if isinstance(body, dict):
        body = body.get(key, body.get("items"))
    if not isinstance(body, list):
        raise ClientError(0, "bad_response", f"expected a list of {key} from the server")
    return body
