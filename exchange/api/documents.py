"""The response documents of the API as pydantic models: what /openapi.json declares.

The services build these documents as plain dicts; the routes return them as they are (no
second validation per request). The models exist so the published contract is typed and true:
tests validate every response of the API scenarios against /openapi.json with an independent
validator, and compare the models that mirror a file of schemas/ against that file.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

# Patterns shared with schemas/ (a test compares them).
BASE64: Final = "^[A-Za-z0-9+/]*={0,2}$"
HASH_B64: Final = "^[A-Za-z0-9+/]{43}=$"
UUID: Final = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
CASE_ID: Final = "^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
SHA256_HEX: Final = "^[0-9a-f]{64}$"
KEY_ID: Final = "^[0-9a-f]{32}$"
AGENCY: Final = "^[A-Z]{2}-[A-Z0-9][A-Z0-9-]{0,62}$"
COUNTRY: Final = "^[A-Z]{2}$"
TIMESTAMP: Final = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})$"


def _no_default(schema: dict[str, Any]) -> None:
    # An absent member is omitted, never null: a `"default": null` would contradict the type.
    schema.pop("default", None)


# The value of a member the server omits when it has none.
ABSENT: Any = Field(default=None, json_schema_extra=_no_default)

Hash = Annotated[str, Field(pattern=HASH_B64)]
Timestamp = Annotated[AwareDatetime, Field(json_schema_extra={"pattern": TIMESTAMP})]
Checkpoint = Annotated[str, Field(min_length=1, max_length=65536)]


class Document(BaseModel):
    """A response document: closed, so a field the server adds must be declared first."""

    model_config = ConfigDict(extra="forbid")


Probe = Literal["ok", "timeout", "failed"]


class Checks(Document):
    """Each dependency's readiness probe: answered ("ok"), not in time, or failed."""

    database: Probe
    storage: Probe


class Problem(BaseModel):
    """An RFC 9457 problem document (`application/problem+json`), the body of every API error."""

    model_config = ConfigDict(extra="allow")  # RFC 9457 §3.2: extension members

    type: str = Field(description="Stable URI of the problem type; the last segment is `code`.")
    title: str = Field(description="Short summary of the problem type.")
    status: int = Field(ge=100, le=599, description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request, for people.")
    code: str = Field(description="The problem type's stable code, for simple clients.")
    retry_after: int | SkipJsonSchema[None] = Field(
        default=None,
        json_schema_extra=_no_default,
        description="Seconds to wait before retrying (503, as `Retry-After`).",
    )
    reason: str | SkipJsonSchema[None] = Field(
        default=None,
        json_schema_extra=_no_default,
        description="Stable machine reason of a verification failure.",
    )
    path: str | None = Field(default=None, description="The package file at fault, if any.")
    incident: str | SkipJsonSchema[None] = Field(
        default=None,
        json_schema_extra=_no_default,
        description="Id of a server-side failure (5xx); the server log holds its cause.",
    )
    checks: Checks | SkipJsonSchema[None] = Field(
        default=None,
        json_schema_extra=_no_default,
        description="The readiness probes, on a 503 of /readyz or /healthz.",
    )


class OAuthError(Document):
    """An OAuth 2.0 error response (RFC 6749 §5.2) of the token endpoint."""

    error: Literal[
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_dpop_proof",
        "use_dpop_nonce",
    ]
    error_description: str | SkipJsonSchema[None] = ABSENT
    error_uri: str | SkipJsonSchema[None] = ABSENT


class TokenResponse(Document):
    """An access token (RFC 6749 §5.1; the token itself is an RFC 9068 JWT)."""

    access_token: str
    token_type: Literal["Bearer", "DPoP"]
    expires_in: int = Field(ge=0)
    scope: str


class JsonWebKey(Document):
    """An Ed25519 public key as an RFC 8037 OKP JWK."""

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str
    kid: str
    alg: str
    use: Literal["sig"]


class JsonWebKeySet(Document):
    """The token issuer's public keys (RFC 7517 §5), current key first."""

    keys: list[JsonWebKey]


class AuthorizationServerMetadata(BaseModel):
    """OAuth 2.0 Authorization Server Metadata (RFC 8414 §2)."""

    model_config = ConfigDict(extra="allow")  # RFC 8414 §2: more metadata may be added

    issuer: str
    token_endpoint: str
    jwks_uri: str
    grant_types_supported: list[str]
    token_endpoint_auth_methods_supported: list[str]
    token_endpoint_auth_signing_alg_values_supported: list[str]
    response_types_supported: list[str]
    scopes_supported: list[str]
    service_documentation: str | SkipJsonSchema[None] = ABSENT


class Alive(Document):
    """The process serves requests (no dependency was asked)."""

    status: Literal["alive"]


class Ready(Document):
    """The database and the object store answered within the health deadline."""

    status: Literal["ready"]
    checks: Checks


class Health(Document):
    """The node answers and its database and object store do."""

    status: Literal["ok"]
    ledger_origin: str
    checks: Checks


class CaseDocument(Document):
    """A case."""

    case_id: str
    owner_agency: str
    case_ref: str
    title: str
    classification: str
    created_at: AwareDatetime


class CaseList(Document):
    """One page of the cases the caller may see, oldest first."""

    cases: list[CaseDocument]
    next: str | None = Field(
        description="Path of the next page (also in `Link: rel=next`); null after the last page"
    )


class LegalBasis(Document):
    """The legal instrument a grant rests on."""

    type: str
    reference: str


class GrantDocument(Document):
    """A grant of read access to a case."""

    grant_id: str
    case_id: str
    grantee_country: str
    grantee_agency: str | None
    scope: list[str]
    legal_basis: LegalBasis
    expires_at: AwareDatetime
    issued_by: str
    created_at: AwareDatetime
    revoked_at: AwareDatetime | None
    live: bool


class GrantList(Document):
    """Every grant of a case, live or not."""

    grants: list[GrantDocument]


class FileDocument(Document):
    """One file of a package as its manifest states it, and whether the exchange holds it."""

    path: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_HEX)
    media_type: str
    stored: bool


class PackageSummary(Document):
    """A package without its manifest."""

    package_id: str
    case_id: str
    state: Literal["registered", "sealed"]
    agency: str
    manifest_sha256: str = Field(pattern=SHA256_HEX)
    signer_key_id: str
    file_count: int = Field(ge=0)
    total_bytes: int = Field(ge=0)
    created_at: AwareDatetime
    sealed_at: AwareDatetime | None


class PackageList(Document):
    """The packages of a case the caller may see."""

    packages: list[PackageSummary]


class PackageRegistration(PackageSummary):
    """A registered package and the files the exchange still expects."""

    expected_files: list[FileDocument]


class TrustEntry(Document):
    """A signer key as a trust-store entry (schemas/trust-agency.v1.json#/$defs/entry)."""

    agency: str = Field(pattern=AGENCY)
    country: str = Field(pattern=COUNTRY)
    public_key_pem: str = Field(pattern="^-----BEGIN PUBLIC KEY-----")
    key_id: str = Field(pattern=KEY_ID)
    not_before: Timestamp
    not_after: Timestamp
    revoked_at: Timestamp | SkipJsonSchema[None] = ABSENT


class PackageDocument(PackageSummary):
    """A package with its manifest (schemas/manifest.v1.json), detached JWS, signer and files."""

    manifest: dict[str, Any] = Field(description="The manifest object (schemas/manifest.v1.json).")
    jws: str
    signer_key: TrustEntry
    files: list[FileDocument]


Seq = Annotated[int, Field(ge=0, le=2**53 - 1)]


class DisclosedEntry(Document):
    """A ledger entry of the case the audience may read, in full."""

    seq: Seq
    entry: dict[str, Any] = Field(description="The entry (schemas/ledger-entry.v2.json or v1).")


class RedactedStub(Document):
    """A ledger entry of the case the audience may not read: where it is and its leaf hash."""

    seq: Seq
    case_seq: Seq
    leaf_hash: Hash


class KeyEntry(Document):
    """A key.registered or key.revoked entry of a signer key, with its inclusion proof."""

    seq: Seq
    entry: dict[str, Any] = Field(description="The entry (schemas/ledger-entry.v2.json or v1).")
    inclusion: list[Hash] = Field(max_length=64)


class CustodyPackage(Document):
    """A sealed package of the case."""

    package_id: Annotated[str, Field(pattern=UUID)] | SkipJsonSchema[None] = ABSENT
    manifest: dict[str, Any] = Field(description="The manifest object (schemas/manifest.v1.json).")
    jws: str = Field(min_length=1, max_length=10000)


class Audience(Document):
    """Whom a custody bundle was exported for."""

    agency: str = Field(pattern=AGENCY)
    country: str = Field(pattern=COUNTRY)
    view: Literal["owner", "partner"]


class CustodyBundle(Document):
    """The custody bundle of a case (schemas/custody-bundle.v2.json)."""

    format: Literal["exchange.custody-bundle/v2"]
    case_id: str = Field(pattern=CASE_ID)
    origin: Annotated[str, Field(min_length=1, max_length=256)] | SkipJsonSchema[None] = ABSENT
    tree_size: Annotated[int, Field(ge=1)] | SkipJsonSchema[None] = ABSENT
    exported_at: AwareDatetime | SkipJsonSchema[None] = ABSENT
    audience: Audience | SkipJsonSchema[None] = ABSENT
    checkpoint: Checkpoint
    entries: list[DisclosedEntry | RedactedStub] = Field(min_length=1)
    export_inclusion: list[Hash] = Field(max_length=64)
    key_entries: list[KeyEntry]
    packages: list[CustodyPackage]
    signer_keys: list[TrustEntry]


class ConsistencyPart(Document):
    """The consistency part of a proof document."""

    old_size: int = Field(ge=1)
    old_checkpoint: Checkpoint
    proof: list[Hash] = Field(max_length=128)


class ProofDocument(Document):
    """One ledger entry with its inclusion proof (schemas/proof.v1.json)."""

    format: Literal["exchange.ledger-proof/v1"]
    origin: str = Field(min_length=1, max_length=256, pattern="^[^\\s]+$")
    checkpoint: Checkpoint
    seq: int = Field(ge=0)
    tree_size: int = Field(ge=1)
    leaf: str = Field(max_length=2000000, pattern=BASE64)
    inclusion: list[Hash] = Field(max_length=64)
    consistency: ConsistencyPart | SkipJsonSchema[None] = ABSENT


class LedgerKey(Document):
    """The ledger's public key: PEM, the C2SP verifier key, and its fingerprint to publish."""

    origin: str
    public_key_pem: str
    vkey: str
    fingerprint: str = Field(
        pattern="^[0-9a-f]{4}( [0-9a-f]{4}){15}$",
        description="SHA-256 of the raw 32-byte Ed25519 public key, lowercase hex in groups of 4",
    )


class CheckpointDocument(Document):
    """The latest signed checkpoint."""

    origin: str
    tree_size: int = Field(ge=1)
    root_hash: Hash
    checkpoint: Checkpoint


class ConsistencyDocument(Document):
    """A consistency proof between two signed checkpoints (RFC 9162 §2.1.4)."""

    old_size: int = Field(ge=1)
    old_checkpoint: Checkpoint
    tree_size: int = Field(ge=1)
    checkpoint: Checkpoint
    proof: list[Hash]
