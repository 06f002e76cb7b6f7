"""Service tables: agencies, keys, clients, used assertion ids, cases, packages, files, grants.

Revision ID: 0002_service
Revises: 0001_ledger
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_service"
down_revision: str | None = "0001_ledger"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "agency",
        sa.Column("id", sa.String(66), primary_key=True),
        sa.Column("country", sa.String(2), nullable=False),
        sa.Column("name", sa.String(500), nullable=False),
        _time("created_at"),
    )
    op.create_table(
        "agency_key",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("agency_id", sa.String(66), sa.ForeignKey("agency.id"), nullable=False),
        sa.Column("public_key_pem", sa.Text(), nullable=False),
        _time("not_before"),
        _time("not_after"),
        _time("revoked_at", nullable=True),
        _time("created_at"),
    )
    op.create_index("ix_agency_key_agency_id", "agency_key", ["agency_id"])
    op.create_table(
        "api_client",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("agency_id", sa.String(66), sa.ForeignKey("agency.id"), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("public_key_pem", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        _time("created_at"),
        _time("disabled_at", nullable=True),
    )
    op.create_index("ix_api_client_agency_id", "api_client", ["agency_id"])
    op.create_table(
        "used_jti",
        sa.Column("jti", sa.String(255), primary_key=True),
        _time("expires_at"),
    )
    op.create_index("ix_used_jti_expires_at", "used_jti", ["expires_at"])
    op.create_table(
        "evidence_case",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner_agency", sa.String(66), sa.ForeignKey("agency.id"), nullable=False),
        sa.Column("case_ref", sa.String(500), nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("classification", sa.String(100), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        _time("created_at"),
    )
    op.create_index("ix_evidence_case_owner_agency", "evidence_case", ["owner_agency"])
    op.create_table(
        "package",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("case_id", sa.String(36), sa.ForeignKey("evidence_case.id"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("manifest", sa.LargeBinary(), nullable=False),
        sa.Column("jws", sa.Text(), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column(
            "signer_key_id", sa.String(32), sa.ForeignKey("agency_key.key_id"), nullable=False
        ),
        sa.Column("uploader_client", sa.String(128), nullable=False),
        sa.Column("uploader_agency", sa.String(66), nullable=False),
        sa.Column("file_count", sa.BigInteger(), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        _time("created_at"),
        _time("sealed_at", nullable=True),
    )
    op.create_index("ix_package_case_id", "package", ["case_id"])
    op.create_table(
        "package_file",
        sa.Column("package_id", sa.String(36), sa.ForeignKey("package.id"), primary_key=True),
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("media_type", sa.String(255), nullable=False),
        sa.Column("blob_key", sa.String(80), nullable=False),
        sa.Column("stored", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "case_grant",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("case_id", sa.String(36), sa.ForeignKey("evidence_case.id"), nullable=False),
        sa.Column("grantee_country", sa.String(2), nullable=False),
        sa.Column("grantee_agency", sa.String(66), nullable=True),
        sa.Column("scope", sa.String(100), nullable=False),
        sa.Column("legal_basis_type", sa.String(32), nullable=False),
        sa.Column("legal_basis_reference", sa.String(500), nullable=False),
        _time("expires_at"),
        sa.Column("issued_by", sa.String(128), nullable=False),
        _time("created_at"),
        _time("revoked_at", nullable=True),
        sa.Column("revoked_by", sa.String(128), nullable=True),
    )
    op.create_index("ix_case_grant_case_id", "case_grant", ["case_id"])
    op.create_index("ix_case_grant_grantee", "case_grant", ["grantee_country", "grantee_agency"])


def downgrade() -> None:
    op.drop_table("case_grant")
    op.drop_table("package_file")
    op.drop_table("package")
    op.drop_table("evidence_case")
    op.drop_table("used_jti")
    op.drop_table("api_client")
    op.drop_table("agency_key")
    op.drop_table("agency")
