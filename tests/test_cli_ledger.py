"""`exchange ledger verify | proof | check-proof` against real databases, with real tampering."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from collections.abc import Generator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from exchange.cli import main
from exchange.errors import VerificationError
from exchange.keyfiles import ledger_key, load_or_create_dev_key
from exchange.ledger import tlog
from exchange.ledger.audit import verify_log_parallel
from exchange.ledger.signer import LogSigner
from exchange.signing import Signer, public_key_pem
from exchange.storage import ledger_store as store
from exchange.storage.db import session_scope
from tests.ledger_fixtures import ORIGIN, new_entry

SIZE = 37


@pytest.fixture
def ledger(engine: Engine, log: LogSigner, now: datetime) -> Engine:
    """A ledger of 37 entries written in four transactions (checkpoints at 1, 10, 20, 37)."""
    for lo, hi in ((0, 1), (1, 10), (10, 20), (20, SIZE)):
        with session_scope(engine) as session:
            store.append_many(session, [new_entry(i) for i in range(lo, hi)], log=log, now=now)
    return engine


@pytest.fixture
def pub(tmp_path: Path, log_key: Signer) -> Path:
    path = tmp_path / "ledger.pub.pem"
    path.write_text(public_key_pem(log_key.public_key), encoding="ascii")
    return path


@pytest.fixture(autouse=True)
def _settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EXCHANGE_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("EXCHANGE_LEDGER_ORIGIN", ORIGIN)


def verify(engine: Engine, pub: Path) -> int:
    return main(
        [
            "ledger",
            "verify",
            "--db",
            engine.url.render_as_string(hide_password=False),
            "--log-key",
            str(pub),
        ]
    )


def sql(engine: Engine, statement: str, **params: object) -> None:
    with session_scope(engine) as session:
        session.connection().execute(text(statement), params)


def test_verify_a_good_ledger(
    ledger: Engine, pub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert verify(ledger, pub) == 0
    out = capsys.readouterr().out
    assert f"VERIFIED ledger {ORIGIN}" in out
    assert f"entries        {SIZE}" in out
    assert f"tree size      {SIZE}" in out
    assert f"stored hashes  {tlog.stored_hash_count(SIZE)}" in out


def test_verify_deep(ledger: Engine, pub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = ledger.url.render_as_string(hide_password=False)
    assert main(["ledger", "verify", "--db", url, "--log-key", str(pub), "--deep"]) == 0


def _read_data(engine: Engine, seq: int) -> tuple[bytes, bytes]:
    with session_scope(engine) as session:
        row = store.get_entry(session, seq)
        return bytes(row.data), bytes(row.entry_hash)


def _edit(engine: Engine) -> None:
    data, _ = _read_data(engine, 5)
    sql(
        engine,
        "UPDATE ledger_entry SET data = :d WHERE seq = 5",
        d=data.replace(b'"n":5', b'"n":6'),
    )


def _swap(engine: Engine) -> None:
    (d3, h3), (d4, h4) = _read_data(engine, 3), _read_data(engine, 4)
    sql(engine, "UPDATE ledger_entry SET data = :d, entry_hash = :h WHERE seq = 3", d=d4, h=h4)
    sql(engine, "UPDATE ledger_entry SET data = :d, entry_hash = :h WHERE seq = 4", d=d3, h=h3)


TAMPERING = [
    (
        "edit a row",
        _edit,
        "seq 5: entry_hash_mismatch: SHA-256 of the entry differs from its stored hash",
    ),
    (
        "delete a row",
        lambda e: sql(e, "DELETE FROM ledger_entry WHERE seq = 9"),
        "seq 9: seq_gap: missing (next row is seq 10)",
    ),
    ("swap two rows", _swap, "seq 3: seq_mismatch: the entry does not carry this seq"),
    (
        "truncate the tail",
        lambda e: sql(e, "DELETE FROM ledger_entry WHERE seq >= 30"),
        "seq 30: truncated: the log ends at 30 entries but checkpoint covers 37",
    ),
    (
        "alter a stored hash",
        lambda e: sql(
            e,
            "UPDATE ledger_hash SET hash = :h WHERE idx = :i",
            h=b"\x00" * 32,
            i=tlog.stored_hash_index(1, 6),
        ),
        "seq 13: stored_hash_mismatch: stored hash 24 (node) is wrong or missing",
    ),
    (
        "plant a row below seq 0",
        lambda e: sql(
            e,
            "INSERT INTO ledger_entry (seq, data, entry_hash, action, time)"
            " SELECT -1, data, entry_hash, action, time FROM ledger_entry WHERE seq = 0",
        ),
        "seq 0: seq_gap: repeated or out of order",
    ),
    (
        "delete the checkpoints",
        lambda e: sql(e, "DELETE FROM ledger_checkpoint"),
        "seq 0: no_checkpoint: 37 entries but no signed checkpoint",
    ),
]


@pytest.mark.parametrize(("name", "tamper", "message"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_verify_names_the_first_bad_seq(
    ledger: Engine,
    pub: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    tamper: object,
    message: str,
) -> None:
    tamper(ledger)  # type: ignore[operator]  # one of the TAMPERING callables
    assert verify(ledger, pub) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"error: ledger verification failed: {message}"


@pytest.mark.parametrize(("name", "tamper", "message"), TAMPERING, ids=[t[0] for t in TAMPERING])
def test_parallel_verification_names_the_same_seq(
    ledger: Engine, log: LogSigner, name: str, tamper: object, message: str
) -> None:
    # Chunks of 4 entries: the 37-entry ledger gives forked workers nine chunks to check.
    tamper(ledger)  # type: ignore[operator]  # one of the TAMPERING callables
    with session_scope(ledger) as session, pytest.raises(VerificationError) as caught:
        store.verify_stored_log(session, verify_note=log.verifier().verify, workers=2, chunk_size=4)
    assert caught.value.message == message


class _NoInOrderRead(store.StoredLog):
    def entries(self, lo: int, hi: int | None) -> Generator[tuple[int, bytes, bytes], None, None]:
        assert (lo, hi) != (0, None), "fell back to the in-order verification"
        return super().entries(lo, hi)


def test_parallel_verification_of_a_good_ledger(ledger: Engine, log: LogSigner) -> None:
    verify_note = log.verifier().verify
    with session_scope(ledger) as session:
        in_order = store.verify_stored_log(session, verify_note=verify_note, workers=1)
    with session_scope(ledger) as session:
        # The workers, not a fall-back in this process, checked the 9 aligned chunks.
        source = _NoInOrderRead(session, ledger.url.render_as_string(hide_password=False))
        parallel = verify_log_parallel(
            source,
            checkpoint_note=store.latest_checkpoint(session),
            verify_note=verify_note,
            workers=2,
            chunk_size=4,
        )
    assert parallel == in_order
    assert (parallel.entries, parallel.stored_hashes) == (SIZE, tlog.stored_hash_count(SIZE))


def test_verify_with_another_key_fails(
    ledger: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.pub.pem"
    other.write_text(public_key_pem(Signer.generate().public_key), encoding="ascii")
    assert verify(ledger, other) == 1
    assert (
        "error: ledger verification failed: latest checkpoint: bad_checkpoint_signature: "
        in capsys.readouterr().err
    )


def test_verify_with_the_dev_key_from_settings(
    engine: Engine, now: datetime, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No --log-key: the development key in <data_dir>/keys/ is created on first use.
    signer = ledger_key(key_path=None, data_dir=tmp_path / "var", development=True)
    with session_scope(engine) as session:
        store.append(
            session, new_entry(0), log=LogSigner.from_signer(signer, origin=ORIGIN), now=now
        )
    url = engine.url.render_as_string(hide_password=False)
    assert main(["ledger", "verify", "--db", url]) == 0
    key_file = tmp_path / "var" / "keys" / "ledger.key.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_or_create_dev_key(key_file).key_id == signer.key_id


def test_proof_round_trip(
    ledger: Engine, pub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ledger.url.render_as_string(hide_password=False)
    capsys.readouterr()
    assert main(["ledger", "proof", "--seq", "12", "--against", "10", "--db", url]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["seq"], document["tree_size"], document["origin"]) == (12, SIZE, ORIGIN)
    assert document["consistency"]["old_size"] == 10
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(json.dumps(document), encoding="utf-8")
    assert main(["ledger", "check-proof", str(proof_file), "--log-key", str(pub)]) == 0
    out = capsys.readouterr().out
    assert f"PROVED entry 12 is in ledger {ORIGIN} at tree size {SIZE}" in out
    assert "action   package.sealed" in out
    assert "and the log at size 10 (its signed checkpoint) is a prefix of this log" in out


def _tampered(document: dict[str, object], field: str) -> dict[str, object]:
    doc: dict[str, Any] = json.loads(json.dumps(document))
    if field == "leaf":
        leaf = base64.b64decode(doc["leaf"]).replace(b'"n":12', b'"n":13')
        doc["leaf"] = base64.b64encode(leaf).decode()
    elif field == "inclusion":
        doc["inclusion"][0] = base64.b64encode(b"\x00" * 32).decode()
    elif field == "checkpoint":
        doc["checkpoint"] = doc["checkpoint"].replace(f"\n{SIZE}\n", f"\n{SIZE + 1}\n")
    elif field == "consistency":
        doc["consistency"]["proof"][0] = base64.b64encode(b"\x00" * 32).decode()
    elif field == "seq":
        doc["seq"] = 11
    elif field == "extra":
        doc["extra"] = 1
    return doc


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ("leaf", "error: proof rejected: computed root"),
        ("inclusion", "error: proof rejected: computed root"),
        ("checkpoint", "error: proof rejected: "),
        ("consistency", "error: proof rejected: computed old root"),
        ("seq", "error: proof rejected: the entry's seq 12 is not 11"),
        (
            "extra",
            "error: proof rejected: not valid against proof.v1.json: /: Additional properties",
        ),
    ],
)
def test_tampered_proof_is_rejected(
    ledger: Engine,
    pub: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    field: str,
    message: str,
) -> None:
    with session_scope(ledger) as session:
        document = store.proof(session, 12, against=10)
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(json.dumps(_tampered(document, field)), encoding="utf-8")
    assert main(["ledger", "check-proof", str(proof_file), "--log-key", str(pub)]) == 1
    assert capsys.readouterr().err.startswith(message)


def test_proof_of_a_missing_entry(ledger: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    url = ledger.url.render_as_string(hide_password=False)
    assert main(["ledger", "proof", "--seq", str(SIZE), "--db", url]) == 1
    assert capsys.readouterr().err.strip() == f"error: no ledger entry {SIZE}"
    assert main(["ledger", "proof", "--seq", "1", "--against", "11", "--db", url]) == 1
    assert capsys.readouterr().err.strip() == "error: no ledger checkpoint for tree size 11"


def test_cli_as_a_process(ledger: Engine, pub: Path, tmp_path: Path) -> None:
    url = ledger.url.render_as_string(hide_password=False)
    proof = subprocess.run(
        [sys.executable, "-m", "exchange", "ledger", "proof", "--seq", "0", "--db", url],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    (tmp_path / "p.json").write_text(proof.stdout, encoding="utf-8")
    checked = subprocess.run(
        [sys.executable, "-m", "exchange", "ledger", "check-proof", str(tmp_path / "p.json"), "--log-key", str(pub)],
        capture_output=True, check=False, text=True,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert f"PROVED entry 0 is in ledger {ORIGIN} at tree size {SIZE}" in checked.stdout
