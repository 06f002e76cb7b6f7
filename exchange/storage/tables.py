"""The service's tables: agencies and their keys, clients, replay store, cases, packages, grants.

Signed artefacts (manifests) are kept as their canonical bytes plus indexed columns, never
rebuilt from rows before verification. Every time column is timezone-aware UTC on both
databases (`UtcDateTime`), because SQLite hands back naive datetimes otherwise.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
)
from sqlmodel import Field, SQLModel


class UtcDateTime(TypeDecorator[datetime]):
    """A DateTime column that stores and returns aware UTC datetimes on SQLite too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _time(*, nullable: bool = False, index: bool = False) -> Any:
    return Field(
        default=None if nullable else ...,
        sa_column=Column(UtcDateTime(), nullable=nullable, index=index),
    )


class AgencyRow(SQLModel, table=True):
    """A registered agency: `TH-RTP`, its country and display name."""

    __tablename__ = "agency"

    id: str = Field(sa_column=Column(String(66), primary_key=True))
    country: str = Field(sa_column=Column(String(2), nullable=False))
    name: str = Field(sa_column=Column(String(500), nullable=False))
    created_at: datetime = _time()


class AgencyKeyRow(SQLModel, table=True):
    """One signing key of an agency, with its validity window and revocation."""

    __tablename__ = "agency_key"

    key_id: str = Field(sa_column=Column(String(32), primary_key=True))
    agency_id: str = Field(
        sa_column=Column(String(66), ForeignKey("agency.id"), nullable=False, index=True)
    )
    public_key_pem: str = Field(sa_column=Column(Text(), nullable=False))
    not_before: datetime = _time()
    not_after: datetime = _time()
    revoked_at: datetime | None = _time(nullable=True)
    created_at: datetime = _time()


class ClientRow(SQLModel, table=True):
    """An API client of an agency: its role and the public key its assertions are signed with."""

    __tablename__ = "api_client"

    id: str = Field(sa_column=Column(String(128), primary_key=True))
    agency_id: str = Field(
        sa_column=Column(String(66), ForeignKey("agency.id"), nullable=False, index=True)
    )
    role: str = Field(sa_column=Column(String(32), nullable=False))
    public_key_pem: str = Field(sa_column=Column(Text(), nullable=False))
    key_id: str = Field(sa_column=Column(String(32), nullable=False))
    created_at: datetime = _time()
    disabled_at: datetime | None = _time(nullable=True)


class UsedJtiRow(SQLModel, table=True):
    """A client-assertion id already used, kept until the assertion would have expired."""

    __tablename__ = "used_jti"

    jti: str = Field(sa_column=Column(String(255), primary_key=True))
    expires_at: datetime = _time(index=True)


class DPoPProofRow(SQLModel, table=True):
    """A DPoP proof already used (RFC 9449 §11.1), by SHA-256 of its key's thumbprint and jti,
    kept until the proof would be too old anyway; shared by every replica through the database."""

    __tablename__ = "dpop_proof"

    key: str = Field(sa_column=Column(String(64), primary_key=True))
    expires_at: datetime = _time(index=True)


class CaseRow(SQLModel, table=True):
    """A case, owned by one agency."""

    __tablename__ = "evidence_case"
    # Listing walks cases in this order, a page at a time (migration 0004).
    __table_args__ = (Index("ix_evidence_case_created", "created_at", "id"),)

    id: str = Field(sa_column=Column(String(36), primary_key=True))
    owner_agency: str = Field(
        sa_column=Column(String(66), ForeignKey("agency.id"), nullable=False, index=True)
    )
    case_ref: str = Field(sa_column=Column(String(500), nullable=False))
    title: str = Field(sa_column=Column(String(500), nullable=False))
    classification: str = Field(sa_column=Column(String(100), nullable=False))
    created_by: str = Field(sa_column=Column(String(128), nullable=False))
    created_at: datetime = _time()


class PackageRow(SQLModel, table=True):
    """An evidence package of a case: registered, then sealed once every file is stored."""

    __tablename__ = "package"

    id: str = Field(sa_column=Column(String(36), primary_key=True))
    case_id: str = Field(
        sa_column=Column(String(36), ForeignKey("evidence_case.id"), nullable=False, index=True)
    )
    state: str = Field(sa_column=Column(String(16), nullable=False))
    manifest: bytes = Field(sa_column=Column(LargeBinary(), nullable=False))
    jws: str = Field(sa_column=Column(Text(), nullable=False))
    manifest_sha256: str = Field(sa_column=Column(String(64), nullable=False))
    signer_key_id: str = Field(
        sa_column=Column(String(32), ForeignKey("agency_key.key_id"), nullable=False)
    )
    uploader_client: str = Field(sa_column=Column(String(128), nullable=False))
    uploader_agency: str = Field(sa_column=Column(String(66), nullable=False))
    file_count: int = Field(sa_column=Column(BigInteger(), nullable=False))
    total_bytes: int = Field(sa_column=Column(BigInteger(), nullable=False))
    created_at: datetime = _time()
    sealed_at: datetime | None = _time(nullable=True)


class PackageFileRow(SQLModel, table=True):
    """One file of a package as the signed manifest states it, and whether it is stored."""

    __tablename__ = "package_file"

    package_id: str = Field(
        sa_column=Column(String(36), ForeignKey("package.id"), primary_key=True)
    )
    path: str = Field(sa_column=Column(String(1024), primary_key=True))
    size: int = Field(sa_column=Column(BigInteger(), nullable=False))
    sha256: str = Field(sa_column=Column(String(64), nullable=False))
    media_type: str = Field(sa_column=Column(String(255), nullable=False))
    blob_key: str = Field(sa_column=Column(String(80), nullable=False))
    stored: bool = Field(sa_column=Column(Boolean(), nullable=False, default=False))


class GrantRow(SQLModel, table=True):
    """Read access to one case for a country, or one agency of it, under a legal basis."""

    __tablename__ = "case_grant"
    __table_args__ = (
        Index("ix_case_grant_grantee", "grantee_country", "grantee_agency"),
        # The grant check's `case_id = ? AND grantee_country = ?`; also every case_id lookup.
        Index("ix_case_grant_case_country", "case_id", "grantee_country"),
    )

    id: str = Field(sa_column=Column(String(36), primary_key=True))
    case_id: str = Field(
        sa_column=Column(String(36), ForeignKey("evidence_case.id"), nullable=False)
    )
    grantee_country: str = Field(sa_column=Column(String(2), nullable=False))
    grantee_agency: str | None = Field(default=None, sa_column=Column(String(66)))
    scope: str = Field(sa_column=Column(String(100), nullable=False))
    legal_basis_type: str = Field(sa_column=Column(String(32), nullable=False))
    legal_basis_reference: str = Field(sa_column=Column(String(500), nullable=False))
    expires_at: datetime = _time()
    issued_by: str = Field(sa_column=Column(String(128), nullable=False))
    created_at: datetime = _time()
    revoked_at: datetime | None = _time(nullable=True)
    revoked_by: str | None = Field(default=None, sa_column=Column(String(128)))
