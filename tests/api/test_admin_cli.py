"""`exchange admin`: the operator registers agencies, keys and clients; each change is in the ledger."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from exchange.cli import main
from exchange.client import CLIENT_ASSERTION_TYPE, make_client_assertion
from exchange.ledger.entry import parse_entry
from exchange.service import agencies
from exchange.settings import DEV_KEY_DIR, Settings
from exchange.signing import Signer, public_key_pem
from exchange.storage import ledger_store
from exchange.storage.db import make_engine, session_scope
from exchange.storage.tables import AgencyKeyRow, ClientRow
from exchange.trust import TrustedKey
from tests.exchange_server import clean_env, running_exchange


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


def _register_my_pdrm(tmp_path: Path) -> Signer:
    signer = Signer.generate()
    pem = tmp_path / "MY-PDRM.pub.pem"
    pem.write_text(public_key_pem(signer.public_key))
    assert main(["migrate"]) == 0
    assert main(["admin", "agency", "add", "--id", "MY-PDRM", "--country", "MY",
                 "--name", "Royal Malaysia Police", "--public-key", str(pem),
                 "--not-before", "2026-01-01T00:00:00Z",
                 "--not-after", "2031-01-01T00:00:00Z"]) == 0  # fmt: skip
    assert main(["admin", "client", "add", "--id", "my-pdrm-partner", "--agency", "MY-PDRM",
                 "--role", "partner", "--public-key", str(pem)]) == 0  # fmt: skip
    return signer


def _actions(node: Path) -> list[str]:
    engine = make_engine(Settings().resolved_database_url)
    with session_scope(engine) as session:
        actions = [
            ledger_store.get_entry(session, seq).action
            for seq in range(ledger_store.tree_size(session))
        ]
    engine.dispose()
    return actions


def test_list_agencies_keys_and_clients(node: Path, tmp_path: Path, capsys) -> None:
    signer = _register_my_pdrm(tmp_path)
    capsys.readouterr()
    assert main(["admin", "agency", "list", "--json"]) == 0
    agencies_json = json.loads(capsys.readouterr().out)
    assert len(agencies_json) == 1
    assert agencies_json[0]["id"] == "MY-PDRM"
    assert agencies_json[0]["country"] == "MY"
    assert agencies_json[0]["name"] == "Royal Malaysia Police"
    assert set(agencies_json[0]) == {"id", "country", "name", "registered_at"}

    assert main(["admin", "agency", "keys", "--id", "MY-PDRM", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {
            "key_id": signer.key_id,
            "agency": "MY-PDRM",
            "state": "valid",
            "not_before": "2026-01-01T00:00:00Z",
            "not_after": "2031-01-01T00:00:00Z",
            "revoked_at": None,
        }
    ]
    assert main(["admin", "agency", "keys", "--id", "XX-NONE", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    assert main(["admin", "client", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {
            "id": "my-pdrm-partner",
            "agency": "MY-PDRM",
            "role": "partner",
            "key_id": signer.key_id,
            "state": "enabled",
            "disabled_at": None,
        }
    ]

    # The readable tables: a header, a rule, then one row per record, never wrapped.
    assert main(["admin", "client", "list"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines[0] == ["id", "agency", "role", "key", "id", "state", "disabled", "at"]
    assert lines[2:] == [["my-pdrm-partner", "MY-PDRM", "partner", signer.key_id, "enabled", "-"]]
    assert main(["admin", "agency", "keys"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines[2:] == [[signer.key_id, "MY-PDRM", "valid", "2026-01-01T00:00:00Z",
                          "2031-01-01T00:00:00Z", "-"]]  # fmt: skip
    assert main(["admin", "agency", "list"]) == 0
    assert "MY-PDRM" in capsys.readouterr().out
    assert main(["admin", "client", "list", "--agency", "TH-RTP"]) == 0
    assert capsys.readouterr().out == "no clients registered\n"


def test_disable_and_enable_a_client(node: Path, tmp_path: Path, capsys) -> None:
    _register_my_pdrm(tmp_path)
    capsys.readouterr()
    assert main(["admin", "client", "disable", "--id", "my-pdrm-partner"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("disabled client my-pdrm-partner as of ")
    assert out.endswith(": its logins are refused\n")
    assert main(["admin", "client", "disable", "--id", "my-pdrm-partner"]) == 1
    assert capsys.readouterr().err.startswith(
        "error: client my-pdrm-partner was already disabled at "
    )
    assert main(["admin", "client", "list", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert listed["state"] == "disabled"
    assert listed["disabled_at"] is not None
    engine = make_engine(Settings().resolved_database_url)
    with session_scope(engine) as session:
        row = session.get(ClientRow, "my-pdrm-partner")
        assert row is not None
        assert row.disabled_at is not None
    engine.dispose()

    assert main(["admin", "client", "enable", "--id", "my-pdrm-partner"]) == 0
    assert capsys.readouterr().out == "enabled client my-pdrm-partner: it may log in again\n"
    assert main(["admin", "client", "enable", "--id", "my-pdrm-partner"]) == 1
    assert capsys.readouterr().err == "error: client my-pdrm-partner is not disabled\n"
    assert main(["admin", "client", "disable", "--id", "nobody"]) == 1
    assert capsys.readouterr().err == "error: client nobody is not registered\n"
    # Each change is in the ledger; the refusals added nothing.
    assert _actions(node) == [
        "agency.registered", "key.registered", "client.registered",
        "client.disabled", "client.enabled",
    ]  # fmt: skip
    with session_scope(make_engine(Settings().resolved_database_url)) as session:
        row = session.get(ClientRow, "my-pdrm-partner")
        assert row is not None
        assert row.disabled_at is None
        disabled = parse_entry(ledger_store.get_entry(session, 3).data)
        assert disabled.details == {"client_id": "my-pdrm-partner", "agency": "MY-PDRM"}
        assert disabled.actor.agency == "MY-PDRM"
        assert disabled.actor.subject.startswith("operator:")


def _trust_entry(tmp_path: Path, name: str, **fields: object) -> tuple[Signer, Path]:
    signer = Signer.generate()
    entry = TrustedKey(
        agency="MY-PDRM",
        country="MY",
        key_id=signer.key_id,
        public_key=signer.public_key,
        not_before=datetime(2026, 6, 1, 8, 30, tzinfo=UTC),
        not_after=datetime(2028, 6, 1, 8, 30, tzinfo=UTC),
    ).to_entry()
    entry.update(fields)
    path = tmp_path / name
    path.write_text(json.dumps(entry))
    return signer, path


def test_add_key_takes_the_validity_window_from_the_trust_entry(
    node: Path, tmp_path: Path, capsys
) -> None:
    _register_my_pdrm(tmp_path)
    signer, entry = _trust_entry(tmp_path, "MY-PDRM.json")
    capsys.readouterr()
    assert main(["admin", "agency", "add-key", "--id", "MY-PDRM", "--trust-entry", str(entry)]) == 0
    assert capsys.readouterr().out == (
        f"registered key {signer.key_id} of agency MY-PDRM, "
        "valid 2026-06-01T08:30:00Z to 2028-06-01T08:30:00Z\n"
    )
    engine = make_engine(Settings().resolved_database_url)
    with session_scope(engine) as session:
        key = session.get(AgencyKeyRow, signer.key_id)
        assert key is not None
        assert key.not_before == datetime(2026, 6, 1, 8, 30, tzinfo=UTC)
        assert key.not_after == datetime(2028, 6, 1, 8, 30, tzinfo=UTC)
        # A manifest signed before the registration (but inside the entry's window) counts.
        trusted = agencies.trust_store(session, agency_ids=["MY-PDRM"]).get(signer.key_id)
        trusted.check_usable(
            agency="MY-PDRM",
            signed_at=datetime(2026, 6, 1, 8, 31, tzinfo=UTC),
            now=datetime.now(UTC),
        )
        last = ledger_store.tree_size(session) - 1
        registered = parse_entry(ledger_store.get_entry(session, last).data)
        assert registered.details["not_before"] == "2026-06-01T08:30:00+00:00"
    engine.dispose()


def test_agency_add_with_a_trust_entry(node: Path, tmp_path: Path, capsys) -> None:
    signer, entry = _trust_entry(tmp_path, "MY-PDRM.json")
    assert main(["migrate"]) == 0
    add = ["admin", "agency", "add", "--id", "MY-PDRM", "--country", "MY", "--name", "PDRM",
           "--trust-entry", str(entry)]  # fmt: skip
    capsys.readouterr()
    assert main(add) == 0
    assert capsys.readouterr().out == (
        f"registered agency MY-PDRM (MY) with key {signer.key_id}, "
        "valid 2026-06-01T08:30:00Z to 2028-06-01T08:30:00Z\n"
    )


@pytest.mark.parametrize(
    ("extra", "fields", "message"),
    [
        (["--not-before", "2026-01-01T00:00:00Z"], {},
         "--not-before and --not-after come from the trust entry; give them only with --public-key"),
        ([], {"agency": "TH-RTP", "country": "TH"},
         "{entry} is a key of agency TH-RTP, not of MY-PDRM"),
        ([], {"revoked_at": "2026-07-01T00:00:00Z"},
         "{entry} is revoked (revoked_at 2026-07-01T00:00:00+00:00)"),
        ([], {"key_id": "0" * 32},
         "{entry}: {entry}: key_id 00000000000000000000000000000000 does not match the public key ({kid})"),
    ],
    ids=["window-given-twice", "other-agency", "revoked", "wrong-key-id"],
)  # fmt: skip
def test_add_key_refuses_a_bad_trust_entry(
    node: Path, tmp_path: Path, capsys, extra: list[str], fields: dict[str, str], message: str
) -> None:
    _register_my_pdrm(tmp_path)
    signer, entry = _trust_entry(tmp_path, "entry.json", **fields)
    before = _actions(node)
    capsys.readouterr()
    command = ["admin", "agency", "add-key", "--id", "MY-PDRM", "--trust-entry", str(entry)]
    assert main(command + extra) == 1
    assert (
        capsys.readouterr().err == "error: " + message.format(entry=entry, kid=signer.key_id) + "\n"
    )
    assert _actions(node) == before
    with session_scope(make_engine(Settings().resolved_database_url)) as session:
        assert session.get(AgencyKeyRow, signer.key_id) is None


def _token_status(url: str, client_id: str, signer: Signer) -> tuple[int, dict[str, object]]:
    endpoint = f"{url}/v1/token"
    response = httpx.post(
        endpoint,
        data={
            "grant_type": "client_credentials",
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": make_client_assertion(
                client_id=client_id, signer=signer, audience=endpoint
            ),
        },
        timeout=30,
    )
    return response.status_code, response.json()


@pytest.mark.slow
def test_a_disabled_client_cannot_log_in_until_enabled(tmp_path: Path) -> None:
    """Through the real commands and a running node: make a client key, register the client,
    disable it (its logins answer 401), enable it again (they work)."""
    with running_exchange(tmp_path / "var") as server:
        env = clean_env(EXCHANGE_DATA_DIR=str(server.data_dir), COLUMNS="500")

        def exchange(*args: str) -> str:
            result = subprocess.run(
                [sys.executable, "-m", "exchange", *args],
                capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path, check=False,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout + result.stderr
            return result.stdout

        exchange("keys", "generate", "--client", "ph-nbi-analyst", "--out", str(tmp_path / "k"))
        exchange("admin", "client", "add", "--id", "ph-nbi-analyst", "--agency", "PH-NBI",
                 "--role", "partner", "--public-key", str(tmp_path / "k/ph-nbi-analyst.pub.pem"))  # fmt: skip
        signer = Signer.from_pem((tmp_path / "k/ph-nbi-analyst.key.pem").read_bytes())
        status, body = _token_status(server.url, "ph-nbi-analyst", signer)
        assert status == 200, body

        exchange("admin", "client", "disable", "--id", "ph-nbi-analyst")
        status, body = _token_status(server.url, "ph-nbi-analyst", signer)
        assert status == 401
        assert body["error"] == "invalid_client"
        # The other clients of the agency are untouched.
        ph = Signer.from_pem((DEV_KEY_DIR / "PH-NBI.key.pem").read_bytes())
        assert _token_status(server.url, "ph-nbi-partner", ph)[0] == 200

        exchange("admin", "client", "enable", "--id", "ph-nbi-analyst")
        status, body = _token_status(server.url, "ph-nbi-analyst", signer)
        assert status == 200, body
        listed = json.loads(exchange("admin", "client", "list", "--agency", "PH-NBI", "--json"))
        assert [(c["id"], c["state"]) for c in listed] == [
            ("ph-nbi-analyst", "enabled"),
            ("ph-nbi-partner", "enabled"),
        ]
