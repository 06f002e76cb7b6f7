"""Custody ledger: entries, stored Merkle hashes, signed checkpoints.

Revision ID: 0001_ledger
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_ledger"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# INTEGER PRIMARY KEY is SQLite's rowid alias (no second index); BIGINT on PostgreSQL.
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "ledger_entry",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("entry_hash", sa.LargeBinary(), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("case_id", sa.String(128), nullable=True),
        sa.Column("package_id", sa.String(36), nullable=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ledger_entry_case_id", "ledger_entry", ["case_id"])
    op.create_index("ix_ledger_entry_package_id", "ledger_entry", ["package_id"])
    op.create_table(
        "ledger_hash",
        sa.Column("idx", SEQ, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "ledger_checkpoint",
        sa.Column("size", SEQ, primary_key=True, autoincrement=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ledger_checkpoint")
    op.drop_table("ledger_hash")
    op.drop_index("ix_ledger_entry_package_id", table_name="ledger_entry")
    op.drop_index("ix_ledger_entry_case_id", table_name="ledger_entry")
    op.drop_table("ledger_entry")
