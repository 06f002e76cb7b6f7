"""Several nodes starting at once on one fresh database and data folder (uvicorn --workers N)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from sqlmodel import select

from exchange.api.app import bootstrap_development, build_context
from exchange.api.metrics import Metrics
from exchange.ledger.audit import verify_log
from exchange.settings import Settings
from exchange.storage import ledger_store
from exchange.storage.db import make_engine, session_scope
from exchange.storage.tables import AgencyRow, ClientRow


def _start_node(url: str, data_dir: str) -> None:
    settings = Settings(env="development", database_url=url, data_dir=Path(data_dir))
    context = build_context(settings, metrics=Metrics())
    try:
        bootstrap_development(context, settings.trust_dir)
    finally:
        context.engine.dispose()


def test_four_nodes_starting_together_register_the_dev_agencies_once(
    fresh_pg_url: str, tmp_path: Path
):
    ctx = multiprocessing.get_context("spawn")
    nodes = [ctx.Process(target=_start_node, args=(fresh_pg_url, str(tmp_path))) for _ in range(4)]
    for node in nodes:
        node.start()
    for node in nodes:
        node.join(timeout=120)
    assert [node.exitcode for node in nodes] == [0, 0, 0, 0]
    keys = sorted(p.name for p in (tmp_path / "keys").iterdir())
    assert keys == ["issuer.key.pem", "ledger.key.pem"]  # one of each, no temporaries left
    engine = make_engine(fresh_pg_url)
    try:
        with session_scope(engine) as session:
            agencies = session.exec(select(AgencyRow.id)).all()
            clients = session.exec(select(ClientRow.id)).all()
            assert sorted(agencies) == ["PH-NBI", "TH-RTP", "VN-C06"]
            assert len(clients) == 4
            log = build_context(
                Settings(env="development", database_url=fresh_pg_url, data_dir=tmp_path),
                metrics=Metrics(),
            ).log
            with ledger_store.log_rows(session) as (rows, stored):
                summary = verify_log(
                    rows,
                    stored,
                    checkpoint_note=ledger_store.latest_checkpoint(session),
                    verify_note=log.verifier().verify,
                )
        # 3 agencies + 3 keys + 4 clients, each recorded once.
        assert summary.entries == 10
    finally:
        engine.dispose()
