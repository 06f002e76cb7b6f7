"""The resources one running app holds, built once by the lifespan in `exchange.api.app`."""

from __future__ import annotations

from dataclasses import dataclass

from anyio import CapacityLimiter
from sqlalchemy import Engine

from exchange.api.metrics import Metrics
from exchange.auth import TokenIssuer, TokenVerifier
from exchange.dpop import NonceSource
from exchange.ledger.signer import LogSigner
from exchange.service.dpop import ProofReplayCache
from exchange.service.packages import Limits
from exchange.settings import Settings
from exchange.storage.blobstore import BlobStore


@dataclass(frozen=True)
class AppContext:
    """Everything the routes need, typed; stored on `app.state.context`."""

    settings: Settings
    engine: Engine
    store: BlobStore
    log: LogSigner
    issuer: TokenIssuer
    verifier: TokenVerifier
    token_endpoint: str
    limits: Limits
    metrics: Metrics
    # Worker threads parsing and checking request documents (manifests) at once.
    validation: CapacityLimiter
    # DPoP (RFC 9449): the origin proofs' `htu` must name, nonces, and used proofs.
    public_url: str
    nonces: NonceSource
    proofs: ProofReplayCache
