"""The composition root of the web service: settings in, a FastAPI app with its resources out.

Run with `exchange serve`, or `uvicorn exchange.api.app:create_app --factory`. This is the only
module that knows every concrete class: the lifespan builds the engine (migrated to head), the
blob store, the ledger signer and the token issuer into one frozen `AppContext`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import anyio
from fastapi import FastAPI

from exchange import __version__
from exchange.api import errors, openapi
from exchange.api.bodies import BodyLimit, JsonBodyLimitMiddleware
from exchange.api.context import AppContext
from exchange.api.dpop import DPoPNonceMiddleware
from exchange.api.metrics import Metrics, MetricsMiddleware
from exchange.api.routes import cases, custody, grants, health, ledger, packages, token
from exchange.auth import TokenIssuer, TokenVerifier
from exchange.dpop import NonceSource
from exchange.errors import InvalidInputError
from exchange.keyfiles import ledger_key, load_ed25519_key, load_or_create_dev_key
from exchange.ledger.signer import LogSigner
from exchange.model import Role
from exchange.service.agencies import DevClient, bootstrap_dev_registry
from exchange.service.dpop import ProofReplayCache
from exchange.service.packages import Limits
from exchange.settings import Settings
from exchange.signing import Signer
from exchange.storage.blobstore import BlobStore
from exchange.storage.db import create_schema, make_engine, session_scope
from exchange.storage.local import LocalBlobStore
from exchange.trust import TrustStore

logger = logging.getLogger("exchange")

# The one JSON route allowed a large body: package registration (the manifest). Matched at the
# end of the path, which may carry a prefix the app is mounted under (root_path).
PACKAGE_REGISTRATION: Final = re.compile(r"/v1/cases/[^/]+/packages\Z")

# The clients the development bootstrap registers, each signing with its agency's dev key.
DEV_CLIENTS: Final = (
    DevClient("th-rtp-investigator", "TH-RTP", Role.INVESTIGATOR),
    DevClient("th-rtp-prosecutor", "TH-RTP", Role.PROSECUTOR),
    DevClient("ph-nbi-partner", "PH-NBI", Role.PARTNER),
    DevClient("vn-c06-partner", "VN-C06", Role.PARTNER),
)


def blob_store(settings: Settings) -> BlobStore:
    """The configured store: a folder under the data dir, or S3 (minio SDK imported only then)."""
    if settings.storage == "s3":
        from exchange.storage.s3 import S3BlobStore  # minio only when used

        if settings.s3_endpoint is None or settings.s3_access_key is None:
            raise InvalidInputError("EXCHANGE_S3_ENDPOINT and EXCHANGE_S3_ACCESS_KEY must be set")
        secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else ""
        store = S3BlobStore(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=secret,
            bucket=settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
            object_lock=settings.s3_object_lock,
            retention_days=settings.s3_retention_days,
            connect_timeout=settings.s3_connect_timeout,
            read_timeout=settings.s3_read_timeout,
            retries=settings.s3_retries,
        )
        store.ensure_bucket()
        return store
    return LocalBlobStore(settings.data_dir / "blobs")


def issuer_signer(settings: Settings) -> Signer:
    """The token issuer key: the configured file, or (development) one made in the data dir."""
    if settings.issuer_key_path is not None:
        return load_ed25519_key(settings.issuer_key_path)
    return load_or_create_dev_key(settings.data_dir / "keys" / "issuer.key.pem")


def build_context(settings: Settings, *, metrics: Metrics) -> AppContext:
    """Build every resource of one node (creating the data dir, schema and dev keys if needed)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(
        settings.resolved_database_url,
        liveness=settings.postgres_liveness(),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
    )
    create_schema(engine)
    development = settings.env == "development"
    log = LogSigner.from_signer(
        ledger_key(
            key_path=settings.ledger_key_path, data_dir=settings.data_dir, development=development
        ),
        origin=settings.ledger_origin,
    )
    public_url = settings.public_url.rstrip("/")
    token_signer = issuer_signer(settings)
    issuer = TokenIssuer(
        token_signer,
        issuer=public_url,
        audience=public_url,
        algorithm=settings.access_token_alg,
    )
    verifier = TokenVerifier(issuer.verification_keys(), issuer=public_url, audience=public_url)
    return AppContext(
        settings=settings,
        engine=engine,
        store=blob_store(settings),
        log=log,
        issuer=issuer,
        verifier=verifier,
        token_endpoint=f"{public_url}/v1/token",
        limits=Limits(
            max_file_bytes=settings.max_file_bytes,
            max_files_per_package=settings.max_files_per_package,
        ),
        metrics=metrics,
        validation=anyio.CapacityLimiter(settings.validation_threads),
        public_url=public_url,
        nonces=NonceSource.from_signer(token_signer),
        proofs=ProofReplayCache(engine),
    )


def bootstrap_development(context: AppContext, trust_dir: Path) -> list[str]:
    """Register the dev agencies of `trust_dir` and `DEV_CLIENTS` that are not registered yet."""
    keys = list(TrustStore.from_directory(trust_dir))
    with session_scope(context.engine) as session:
        done = bootstrap_dev_registry(
            session, log=context.log, now=datetime.now(UTC), keys=keys, clients=DEV_CLIENTS
        )
    for line in done:
        logger.warning("development bootstrap registered %s", line)
    return done


def create_app(settings: Settings | None = None) -> FastAPI:
    """The exchange's web app; resources are built when it starts (lifespan), not here."""
    config = settings if settings is not None else Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context = build_context(config, metrics=metrics)
        if config.env == "development":
            bootstrap_development(context, config.trust_dir)
        app.state.context = context
        logger.info(
            "exchange %s serving %s; database %s; storage %s",
            __version__,
            config.public_url,
            context.engine.url.render_as_string(hide_password=True),
            config.storage,
        )
        try:
            yield
        finally:
            context.engine.dispose()

    app = FastAPI(
        title="Evidence Exchange",
        version=__version__,
        summary="Cross-border exchange of signed digital evidence with a verifiable custody ledger.",
        lifespan=lifespan,
    )
    errors.install(app)
    openapi.install(app)
    for module in (token, cases, packages, grants, custody, ledger, health):
        app.include_router(module.router)
    app.add_middleware(DPoPNonceMiddleware)
    app.add_middleware(
        JsonBodyLimitMiddleware,
        max_bytes=config.max_json_body_bytes,
        limits=[BodyLimit("POST", PACKAGE_REGISTRATION, config.max_manifest_bytes)],
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
