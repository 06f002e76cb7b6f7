"""The per-request grant check's query plan on SQLite: the composite index, never a scan of
every grant of the caller's country."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exchange.service.access import _CASE_WITH_GRANTS, _GRANTS_TO_COUNTRY
from exchange.service.fetch import _TARGET
from exchange.storage.db import create_schema, make_engine, session_scope
from exchange.storage.tables import AgencyRow
from tests.builders import insert_granted_cases

NOW = datetime(2026, 12, 1, tzinfo=UTC)


GRANT_SEARCH = (
    "SEARCH case_grant USING INDEX ix_case_grant_case_country (case_id=? AND grantee_country=?)"
)
# Each query that reads a case's grants for the caller's country, and its plan's grant step.
QUERIES = {
    "grants of a case": (_GRANTS_TO_COUNTRY, GRANT_SEARCH),
    "case with its grants": (_CASE_WITH_GRANTS, GRANT_SEARCH + " LEFT-JOIN"),
    "fetch target": (_TARGET, GRANT_SEARCH + " LEFT-JOIN"),
}


@pytest.mark.parametrize("query", sorted(QUERIES))
@pytest.mark.parametrize("analyzed", [False, True], ids=["no-statistics", "analyzed"])
def test_the_grant_check_searches_the_composite_index(tmp_path: Path, analyzed: bool, query: str):
    engine = make_engine(f"sqlite:///{tmp_path / 'exchange.db'}")
    try:
        create_schema(engine)
        with session_scope(engine) as session:
            for agency, country in (("TH-RTP", "TH"), ("PH-NBI", "PH")):
                session.add(AgencyRow(id=agency, country=country, name=agency, created_at=NOW))
        # Most grants go to one country: the shape that made the country index look good.
        case_ids = insert_granted_cases(
            engine, count=3000, created_from=NOW, grant_expires_at=NOW + timedelta(days=30)
        )
        with engine.connect() as connection:
            if analyzed:
                connection.exec_driver_sql("ANALYZE")
            compiled = _GRANTS_TO_COUNTRY.compile(dialect=engine.dialect)
            plan = connection.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {compiled}", (case_ids[0], "PH")
            ).all()
    finally:
        engine.dispose()
    assert [row[3] for row in plan] == [
        "SEARCH case_grant USING INDEX ix_case_grant_case_country (case_id=? AND grantee_country=?)"
    ]
