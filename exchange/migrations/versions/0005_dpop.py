"""DPoP proof replay cache (RFC 9449): the ids of proofs already used, until they expire.

Revision ID: 0005_dpop
Revises: 0004_access_indexes
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_dpop"
down_revision: str | None = "0004_access_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dpop_proof",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_dpop_proof_expires_at", "dpop_proof", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_dpop_proof_expires_at", table_name="dpop_proof")
    op.drop_table("dpop_proof")
