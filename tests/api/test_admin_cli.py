"""`exchange admin`: the operator registers agencies, keys and clients; each change is in the ledger."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from exchange.cli import main
from exchange.settings import Settings
from exchange.signing import Signer, public_key_pem
from exchange.storage import ledger_store
from exchange.storage.db import make_engine, session_scope
from exchange.storage.tables import AgencyKeyRow, ClientRow


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("EXCHANGE_DATABASE_URL", "EXCHANGE_ENV", "EXCHANGE_LEDGER_KEY_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("EXCHANGE_DATA_DIR", str(tmp_path / "var"))
    return tmp_path / "var"


def test_register_an_agency_a_client_and_revoke_the_key(node: Path, tmp_path: Path, capsys):
    assert main(["migrate"]) == 0  # admin never creates the database itself
    signer = Signer.generate()
    pem = tmp_path / "agency.pub.pem"
    pem.write_text(public_key_pem(signer.public_key))
    add = ["admin", "agency", "add", "--id", "MY-PDRM", "--country", "MY",
           "--name", "Royal Malaysia Police", "--public-key", str(pem)]  # fmt: skip
    assert main(add) == 0
    assert f"with key {signer.key_id}" in capsys.readouterr().out
    assert main(add) == 1  # already registered
    client = ["admin", "client", "add", "--id", "my-pdrm-partner", "--agency", "MY-PDRM",
              "--role", "partner", "--public-key", str(pem)]  # fmt: skip
    assert main(client) == 0
    assert main(["admin", "client", "add", "--id", "x", "--agency", "ZZ-NONE", "--role",
                 "partner", "--public-key", str(pem)]) == 1  # fmt: skip
    revoke = ["admin", "agency", "revoke-key", "--id", "MY-PDRM", "--key-id", signer.key_id]
    assert main(revoke) == 0
    assert main(revoke) == 1  # already revoked
    engine = make_engine(Settings().resolved_database_url)
    with session_scope(engine) as session:
        key = session.get(AgencyKeyRow, signer.key_id)
        assert key is not None
        assert key.revoked_at is not None
        assert session.exec(select(ClientRow)).one().id == "my-pdrm-partner"
        actions = [
            ledger_store.get_entry(session, seq).action
            for seq in range(ledger_store.tree_size(session))
        ]
    engine.dispose()
    assert actions == ["agency.registered", "key.registered", "client.registered", "key.revoked"]
