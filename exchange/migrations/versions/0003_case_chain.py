"""Ledger v2: find a case's newest entry and the key registrations without scanning.

The per-case chain (ledger entry v2) reads each case's newest entry on every append, and a
custody export reads the `key.registered`/`key.revoked` entries of its signer keys. A composite
(case_id, seq) index serves the first on PostgreSQL too (SQLite's case_id index already ends in
the rowid); a partial index over the few entries that name no case serves the second.

Revision ID: 0003_case_chain
Revises: 0002_service
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_case_chain"
down_revision: str | None = "0002_service"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_ledger_entry_case_id", table_name="ledger_entry")
    op.create_index("ix_ledger_entry_case_seq", "ledger_entry", ["case_id", "seq"])
    op.create_index(
        "ix_ledger_entry_caseless",
        "ledger_entry",
        ["action", "seq"],
        sqlite_where=sa.text("case_id IS NULL"),
        postgresql_where=sa.text("case_id IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_ledger_entry_caseless", table_name="ledger_entry")
    op.drop_index("ix_ledger_entry_case_seq", table_name="ledger_entry")
    op.create_index("ix_ledger_entry_case_id", "ledger_entry", ["case_id"])
