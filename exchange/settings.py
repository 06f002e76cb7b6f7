"""The one settings object (environment prefix EXCHANGE_); built by the entry points, passed down."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from exchange.storage.db import PostgresLiveness

REPO_ROOT = Path(__file__).resolve().parent.parent
DEV_KEY_DIR = REPO_ROOT / "keys" / "dev"


class Settings(BaseSettings):
    """Configuration of one exchange node. Every field reads EXCHANGE_<NAME> from the environment."""

    model_config = SettingsConfigDict(env_prefix="EXCHANGE_", extra="ignore")

    env: Literal["development", "production"] = "development"
    data_dir: Path = Path("./var")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file exchange.db in data_dir"
    )
    trust_dir: Path = DEV_KEY_DIR / "trust"
    # Connections one node keeps open to the database, and how many more it opens under load
    # (SQLAlchemy's QueuePool): at most pool size + overflow per node; a request finding none
    # free waits `db_pool_timeout` seconds, then fails.
    db_pool_size: int = Field(default=5, ge=1, description="connections kept open per node")
    db_max_overflow: int = Field(default=10, ge=0, description="extra connections under load")
    db_pool_timeout: float = Field(default=30.0, gt=0, description="seconds to wait for one")
    # PostgreSQL only: how soon a vanished peer is noticed (see storage.db.PostgresLiveness).
    db_keepalives_idle: int = Field(default=30, ge=1, description="TCP keepalive idle, seconds")
    db_keepalives_interval: int = Field(default=10, ge=1, description="between probes, seconds")
    db_keepalives_count: int = Field(default=3, ge=1, description="lost probes before giving up")
    db_client_check_interval_ms: int = Field(
        default=5000,
        ge=0,
        description="client_connection_check_interval (PostgreSQL >= 14); 0 leaves it off",
    )

    storage: Literal["local", "s3"] = "local"
    s3_endpoint: str | None = None
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_bucket: str = "evidence"
    s3_secure: bool = True
    s3_region: str | None = None
    s3_object_lock: bool = False
    s3_retention_days: int = Field(default=3650, ge=1)
    # A frozen or unreachable store must fail a request in seconds: each S3 call gives up after
    # (connect + read timeout) x (retries + 1) plus a short backoff, about 20 s by default.
    s3_connect_timeout: float = Field(default=2.0, gt=0, description="seconds to open a connection")
    s3_read_timeout: float = Field(
        default=10.0, gt=0, description="seconds of silence from the store before an attempt fails"
    )
    s3_retries: int = Field(default=1, ge=0, le=10, description="retries of a failed S3 call")
    health_timeout: float = Field(
        default=2.0, gt=0, le=60, description="deadline in seconds of /readyz and /healthz"
    )

    issuer_key_path: Path | None = Field(
        default=None, description="Ed25519 PEM signing access tokens; default: dev key in data_dir"
    )
    ledger_key_path: Path | None = Field(
        default=None, description="Ed25519 PEM signing checkpoints; default: dev key in data_dir"
    )
    access_token_alg: Literal["Ed25519", "EdDSA"] = Field(
        default="Ed25519",
        description="JWS alg of issued access tokens; EdDSA only while older replicas still serve",
    )
    allow_bearer_tokens: bool | None = Field(
        default=None,
        description="accept tokens not bound to a DPoP key; default: in development only",
    )
    dpop_nonce: bool = Field(
        default=True, description="DPoP proofs must carry a server nonce (RFC 9449 §8-9)"
    )
    ledger_origin: str = "exchange.example/ledger"
    public_url: str = "http://127.0.0.1:8000"

    max_file_bytes: int = Field(default=64 * 1024**3, ge=1)
    max_files_per_package: int = Field(default=10_000, ge=1)
    max_manifest_bytes: int = Field(
        default=16 * 1024**2, ge=1024, description="largest package registration body (413)"
    )
    max_json_body_bytes: int = Field(
        default=1024**2, ge=1024, description="largest body of any other JSON request (413)"
    )
    validation_threads: int = Field(
        default=2, ge=1, description="manifests parsed and checked at once, in worker threads"
    )

    @property
    def resolved_database_url(self) -> str:
        """The database URL in force."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'exchange.db').resolve()}"

    def postgres_liveness(self) -> PostgresLiveness:
        """The keepalive and client-check settings of PostgreSQL connections."""
        from exchange.storage.db import PostgresLiveness  # the database layer only when used

        return PostgresLiveness(
            keepalives_idle=self.db_keepalives_idle,
            keepalives_interval=self.db_keepalives_interval,
            keepalives_count=self.db_keepalives_count,
            client_check_interval_ms=self.db_client_check_interval_ms,
        )

    @property
    def bearer_tokens_allowed(self) -> bool:
        """Whether unbound (bearer) access tokens are issued and accepted."""
        if self.allow_bearer_tokens is not None:
            return self.allow_bearer_tokens
        return self.env == "development"

    @model_validator(mode="after")
    def _refuse_dev_material_in_production(self) -> Settings:
        if self.env != "production":
            return self
        for name in ("issuer_key_path", "ledger_key_path"):
            value: Path | None = getattr(self, name)
            if value is None:
                raise ValueError(f"EXCHANGE_{name.upper()} must be set in production")
            if _is_dev_key(value):
                raise ValueError(f"EXCHANGE_{name.upper()} points at a development key ({value})")
        if _is_dev_key(self.trust_dir):
            raise ValueError("EXCHANGE_TRUST_DIR points at development keys")
        if self.storage == "s3":
            secret = self.s3_secret_key.get_secret_value() if self.s3_secret_key else ""
            if secret in ("", "minioadmin", "changeme"):
                raise ValueError("EXCHANGE_S3_SECRET_KEY is unset or a default value")
        return self


def _is_dev_key(path: Path) -> bool:
    resolved = path.resolve()
    return resolved == DEV_KEY_DIR or DEV_KEY_DIR in resolved.parents
