"""Indexes for the per-request access reads: grants by case and country, cases in list order.

A partner's grant check reads `WHERE case_id = ? AND grantee_country = ?`. With one index on
`case_id` and one on `(grantee_country, grantee_agency)`, SQLite without statistics picked the
country index and scanned every grant of the partner's country (90,000 of them at 100k grants).
The composite index answers both equalities and also serves every `case_id`-only lookup (the
case's grant list, the foreign key), so it replaces the `case_id` index.

Listing cases walks them in `(created_at, id)` order, one page at a time; the index lets a page
stop after its last row instead of sorting every case first.

Revision ID: 0004_access_indexes
Revises: 0003_case_chain
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004_access_indexes"
down_revision: str | None = "0003_case_chain"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_case_grant_case_country", "case_grant", ["case_id", "grantee_country"])
    op.drop_index("ix_case_grant_case_id", table_name="case_grant")
    op.create_index("ix_evidence_case_created", "evidence_case", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_evidence_case_created", table_name="evidence_case")
    op.create_index("ix_case_grant_case_id", "case_grant", ["case_id"])
    op.drop_index("ix_case_grant_case_country", table_name="case_grant")
