"""Ledger key pinning and log consistency on the client, against real exchanges.

`fetch` and `custody verify` keep the last checkpoint seen per ledger origin in the profile
folder. A log rewritten behind the same key and origin (a second exchange with another history),
a different key under the same origin, or a saved checkpoint the log no longer extends must be
refused, naming what happened, with exit 1 and the saved checkpoint left as it was.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from exchange.cli import main
from exchange.cli.checkpoints import checkpoint_path
from exchange.cli.demo import PH_PARTNER, TH_INVESTIGATOR
from exchange.ledger.checkpoint import Checkpoint, key_fingerprint, verify_checkpoint
from exchange.ledger.signer import LogSigner
from exchange.signing import Signer, public_key_pem
from tests import test_cli_client as cli_tests
from tests.exchange_server import RunningExchange, running_exchange
from tests.test_cli_client import grant_ph, login, new_case, out_of, th_package, upload

pytestmark = pytest.mark.slow  # three real exchanges for the module

ORIGIN = "exchange.example/ledger"
# The client tests' fixtures: a fresh profile folder per test, and the four dev logins.
config = cli_tests.config
profiles = cli_tests.profiles
SAVED = Path("checkpoints") / "exchange.example%2Fledger.json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningExchange]:
    with running_exchange(tmp_path_factory.mktemp("exchange") / "var") as running:
        yield running


@pytest.fixture(scope="module")
def fork(
    server: RunningExchange, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningExchange]:
    """Another ledger signed with the SAME key under the same origin: a rewritten history.

    Nothing may append to it in these tests, so it stays at its bootstrap size.
    """
    key = server.data_dir / "keys" / "ledger.key.pem"
    with running_exchange(
        tmp_path_factory.mktemp("fork") / "var", EXCHANGE_LEDGER_KEY_PATH=str(key)
    ) as running:
        yield running


@pytest.fixture(scope="module")
def impostor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningExchange]:
    """An exchange with its own ledger key under the same origin."""
    with running_exchange(tmp_path_factory.mktemp("impostor") / "var") as running:
        yield running


def log_signer(server: RunningExchange) -> LogSigner:
    # The fork has no key of its own: it signs with the first exchange's (so never ask its).
    pem = (server.data_dir / "keys" / "ledger.key.pem").read_bytes()
    return LogSigner.from_signer(Signer.from_pem(pem), origin=ORIGIN)


def current(exchange: RunningExchange, *, signed_by: RunningExchange | None = None) -> Checkpoint:
    note = httpx.get(f"{exchange.url}/v1/ledger/checkpoint").json()["checkpoint"]
    signer = log_signer(signed_by or exchange)
    return verify_checkpoint(note, verifiers=[signer.vkey], origin=ORIGIN)


def saved(config_dir: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((config_dir / SAVED).read_text())
    return document


def saved_checkpoint(config_dir: Path) -> Checkpoint:
    doc = saved(config_dir)
    return verify_checkpoint(doc["checkpoint"], verifiers=[doc["vkey"]], origin=ORIGIN)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def shared_case(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> str:
    """A case of TH with one sealed package, granted to PH."""
    case_id = new_case(capsys)
    upload(capsys, th_package(tmp_path), case_id)
    grant_ph(capsys, case_id)
    return case_id


def fetch(case_id: str, out: Path, profile: str = "ph") -> int:
    return main(["fetch", case_id, "--out", str(out), "--profile", profile])


def forge_saved(config_dir: Path, server: RunningExchange, size: int) -> str:
    """Replace the saved checkpoint by one the log key really signed, of another tree."""
    forged = Checkpoint(ORIGIN, size, hashlib.sha256(b"another history").digest())
    doc = saved(config_dir)
    doc["checkpoint"] = log_signer(server).sign(forged)
    (config_dir / SAVED).write_text(json.dumps(doc))
    return b64(forged.root_hash)


# ------------------------------------------------------------------ fetch


def test_fetch_pins_the_key_then_checks_that_the_log_only_grew(
    server, profiles, config, capsys, tmp_path: Path
):
    case_id = shared_case(capsys, tmp_path)
    before = current(server)
    assert fetch(case_id, tmp_path / "first") == 0
    out = out_of(capsys)
    signer = log_signer(server)
    assert (
        f"ledger {ORIGIN} at tree size {before.size}: first seen by this client; "
        "its key is now pinned"
    ) in out
    assert f"  vkey         {signer.vkey}\n" in out
    assert f"  fingerprint  {key_fingerprint(signer.private_key.public_key())}\n" in out
    assert saved(config)["vkey"] == signer.vkey
    assert saved_checkpoint(config) == before
    # The fetch itself was logged, so the log grew; the next fetch checks and saves that.
    grown = current(server)
    assert grown.size > before.size
    assert fetch(case_id, tmp_path / "second") == 0
    assert (
        f"ledger {ORIGIN} at tree size {grown.size} extends the checkpoint at size "
        f"{before.size} this client saw before"
    ) in out_of(capsys)
    assert saved_checkpoint(config) == grown
    assert sorted(p.name for p in (config / "checkpoints").iterdir()) == [SAVED.name]


def test_fetch_from_a_log_rewritten_under_the_same_key_is_refused(
    server, fork, profiles, config, capsys, tmp_path: Path
):
    case_id = shared_case(capsys, tmp_path)
    assert fetch(case_id, tmp_path / "f") == 0
    pinned = (config / SAVED).read_bytes()
    seen = saved_checkpoint(config)
    shorter = current(fork, signed_by=server)
    assert shorter.size < seen.size
    login(fork, PH_PARTNER, "ph-fork")
    capsys.readouterr()
    out = tmp_path / "from-fork"
    assert fetch(case_id, out, "ph-fork") == 1
    assert capsys.readouterr().err.replace("\n", "") == (
        f"error: fetch refused: the ledger {ORIGIN} is now at tree size {shorter.size}, smaller "
        f"than the size {seen.size} this client saw before: the log was rolled back or rewritten"
    )
    assert (config / SAVED).read_bytes() == pinned
    assert not out.exists()


def test_a_log_that_does_not_extend_the_pinned_fork_is_refused(
    server, fork, config, capsys, tmp_path: Path
):
    # Pin the fork first (its bootstrap checkpoint); the real exchange, further on, cannot
    # prove it extends that tree: the first entries differ.
    login(fork, PH_PARTNER, "ph-fork")
    assert fetch("no-such-case", tmp_path / "f", "ph-fork") == 1  # pinned before the 404
    pinned = saved_checkpoint(config)
    assert pinned == current(fork, signed_by=server)
    login(server, PH_PARTNER, "ph")
    capsys.readouterr()
    later = current(server)
    assert later.size > pinned.size
    assert fetch("no-such-case", tmp_path / "g") == 1
    err = capsys.readouterr().err.replace("\n", "")
    assert err.startswith(
        f"error: fetch refused: the ledger {ORIGIN} at tree size {later.size} does not extend "
        f"the checkpoint at size {pinned.size} this client saw (computed "
    ), err
    assert err.endswith("): the log was rewritten")
    assert saved_checkpoint(config) == pinned


def test_a_saved_checkpoint_of_the_same_size_with_another_root_is_refused(
    server, profiles, config, capsys, tmp_path: Path
):
    case_id = shared_case(capsys, tmp_path)
    assert fetch(case_id, tmp_path / "f") == 0
    now = current(server)
    forged_root = forge_saved(config, server, now.size)
    pinned = (config / SAVED).read_bytes()
    capsys.readouterr()
    assert fetch(case_id, tmp_path / "g") == 1
    assert capsys.readouterr().err.replace("\n", "") == (
        f"error: fetch refused: the ledger {ORIGIN} has root {b64(now.root_hash)} at tree size "
        f"{now.size}, but this client saw root {forged_root} at that size: the log was rewritten"
    )
    assert (config / SAVED).read_bytes() == pinned
    assert not (tmp_path / "g").exists()


def test_a_saved_checkpoint_the_log_does_not_extend_is_refused(
    server, profiles, config, capsys, tmp_path: Path
):
    case_id = shared_case(capsys, tmp_path)
    assert fetch(case_id, tmp_path / "f") == 0
    seen = saved_checkpoint(config)
    forge_saved(config, server, seen.size)
    capsys.readouterr()
    assert fetch(case_id, tmp_path / "g") == 1
    err = capsys.readouterr().err.replace("\n", "")
    assert err.startswith(
        f"error: fetch refused: the ledger {ORIGIN} at tree size {current(server).size} does not "
        f"extend the checkpoint at size {seen.size} this client saw (computed old root "
    ), err
    assert err.endswith("): the log was rewritten")


def test_another_key_under_the_pinned_origin_is_refused(
    server, impostor, profiles, config, capsys, tmp_path: Path
):
    case_id = shared_case(capsys, tmp_path)
    assert fetch(case_id, tmp_path / "f") == 0
    pinned = (config / SAVED).read_bytes()
    login(impostor, PH_PARTNER, "ph-impostor")
    capsys.readouterr()
    assert fetch(case_id, tmp_path / "g", "ph-impostor") == 1
    assert capsys.readouterr().err.replace("\n", "") == (
        f"error: fetch refused: the ledger key of {ORIGIN} changed: this client pinned "
        f"{log_signer(server).vkey} ({config / SAVED}), but the key the exchange now reports is "
        f"{log_signer(impostor).vkey}"
    )
    assert (config / SAVED).read_bytes() == pinned


def test_a_damaged_saved_checkpoint_is_refused_not_replaced(
    server, profiles, config, capsys, tmp_path: Path
):
    case_id = shared_case(capsys, tmp_path)
    assert fetch(case_id, tmp_path / "f") == 0
    doc = saved(config)
    # Signed by another key than the vkey saved beside it.
    doc["checkpoint"] = LogSigner.from_signer(Signer.generate(), origin=ORIGIN).sign(
        saved_checkpoint(config)
    )
    (config / SAVED).write_text(json.dumps(doc))
    capsys.readouterr()
    assert fetch(case_id, tmp_path / "g") == 1
    err = capsys.readouterr().err.replace("\n", "")
    assert err.startswith(f"error: the saved checkpoint {config / SAVED} is damaged (no signature")
    assert err.endswith("; restore it, or delete it to trust the ledger's current state afresh")
    assert saved(config) == doc


# ------------------------------------------------------------------ custody verify


def export(case_id: str, tmp_path: Path, name: str = "custody.json") -> Path:
    bundle = tmp_path / name
    assert main(["custody", "export", case_id, "--out", str(bundle), "--profile", "th"]) == 0
    return bundle


def log_key_pem(server: RunningExchange, tmp_path: Path) -> Path:
    path = tmp_path / f"ledger-{server.url.rsplit(':', 1)[1]}.pub.pem"
    path.write_text(public_key_pem(log_signer(server).private_key.public_key()))
    return path


def test_custody_verify_prints_the_key_pins_it_and_compares_checkpoints(
    server, profiles, config, capsys, tmp_path: Path
):
    bundle = export(new_case(capsys), tmp_path)
    key = log_key_pem(server, tmp_path)
    size = json.loads(bundle.read_text())["checkpoint"].split("\n")[1]
    signer = log_signer(server)
    capsys.readouterr()
    assert main(["custody", "verify", str(bundle), "--log-key", str(key)]) == 0
    out = out_of(capsys)
    assert f"  log key   vkey {signer.vkey}\n" in out
    fingerprint = key_fingerprint(signer.private_key.public_key())
    assert f"            SHA-256 fingerprint {fingerprint}\n" in out
    assert (
        "  log       first checkpoint of this ledger seen here: saved, and the key pinned\n" in out
    )
    assert saved(config)["vkey"] == signer.vkey
    assert main(["custody", "verify", str(bundle), "--log-key", str(key)]) == 0
    assert f"  log       same root as the checkpoint at size {size} seen before\n" in out_of(capsys)
    # Online: the exchange proves its current log (grown by one more case) extends the
    # bundle's checkpoint and the one saved.
    new_case(capsys)
    now = current(server)
    assert now.size > int(size)
    assert main(["custody", "verify", str(bundle), "--log-key", str(key), "--profile", "th",
                 "--json"]) == 0  # fmt: skip
    result = json.loads(out_of(capsys))
    assert result["ledger"] == {
        "vkey": signer.vkey,
        "fingerprint": fingerprint,
        "last_seen_size": int(size),
        "exchange_size": now.size,
        "log": f"the exchange's log at tree size {now.size} extends this checkpoint and the "
        f"one at size {size} seen before",
    }
    assert saved_checkpoint(config) == now


def test_custody_verify_refuses_a_bundle_from_a_rewritten_log_offline(
    server, profiles, config, capsys, tmp_path: Path
):
    bundle = export(new_case(capsys), tmp_path)
    key = log_key_pem(server, tmp_path)
    assert main(["custody", "verify", str(bundle), "--log-key", str(key)]) == 0
    size = saved_checkpoint(config).size
    forged_root = forge_saved(config, server, size)
    bundle_root = json.loads(bundle.read_text())["checkpoint"].split("\n")[2]
    capsys.readouterr()
    assert main(["custody", "verify", str(bundle), "--log-key", str(key)]) == 1
    assert capsys.readouterr().err.replace("\n", "") == (
        f"error: custody verification failed: the ledger {ORIGIN} has root {bundle_root} at tree "
        f"size {size}, but this client saw root {forged_root} at that size: the log was rewritten"
    )
    assert main(["custody", "verify", str(bundle), "--log-key", str(key), "--json"]) == 1
    assert json.loads(out_of(capsys))["error"]["reason"] == "log_rewritten"


def test_custody_verify_online_refuses_an_exchange_whose_log_was_rewritten(
    server, fork, profiles, config, capsys, tmp_path: Path
):
    bundle = export(new_case(capsys), tmp_path)
    key = log_key_pem(server, tmp_path)
    bundle_size = int(json.loads(bundle.read_text())["checkpoint"].split("\n")[1])
    login(fork, PH_PARTNER, "ph-fork")
    capsys.readouterr()
    assert main(["custody", "verify", str(bundle), "--log-key", str(key),
                 "--profile", "ph-fork"]) == 1  # fmt: skip
    assert capsys.readouterr().err.replace("\n", "") == (
        f"error: custody verification failed: the ledger {ORIGIN} is now at tree size "
        f"{current(fork, signed_by=server).size}, smaller than the size {bundle_size} this client saw before: "
        "the log was rolled back or rewritten"
    )
    assert not (config / SAVED).exists()


def test_custody_verify_online_refuses_a_checkpoint_the_log_key_did_not_sign(
    server, impostor, profiles, config, capsys, tmp_path: Path
):
    bundle = export(new_case(capsys), tmp_path)
    key = log_key_pem(server, tmp_path)
    login(impostor, TH_INVESTIGATOR, "th-impostor")
    capsys.readouterr()
    assert main(["custody", "verify", str(bundle), "--log-key", str(key),
                 "--profile", "th-impostor"]) == 1  # fmt: skip
    vkey = log_signer(server).vkey
    assert capsys.readouterr().err.replace("\n", "") == (
        f"error: custody verification failed: the exchange's current checkpoint of {ORIGIN} "
        f"does not verify with the ledger key {vkey}: no signature by a known key (known: "
        f"{'+'.join(vkey.split('+', 2)[:2])})"
    )
    assert not (config / SAVED).exists()


def test_custody_verify_refuses_a_log_key_other_than_the_pinned_one(
    server, impostor, profiles, config, capsys, tmp_path: Path
):
    case_id = shared_case(capsys, tmp_path)
    assert fetch(case_id, tmp_path / "f") == 0  # pins the first exchange's key
    pinned = (config / SAVED).read_bytes()
    # A bundle that is sound under the impostor's own key, which has the same origin.
    login(impostor, TH_INVESTIGATOR, "th-impostor")
    capsys.readouterr()
    assert main(["case", "create", "--case-ref", "X-1", "--title", "t",
                 "--classification", "restricted", "--profile", "th-impostor"]) == 0  # fmt: skip
    other_case = out_of(capsys).strip().removeprefix("created case ")
    bundle = tmp_path / "impostor.json"
    assert main(["custody", "export", other_case, "--out", str(bundle),
                 "--profile", "th-impostor"]) == 0  # fmt: skip
    capsys.readouterr()
    key = log_key_pem(impostor, tmp_path)
    assert main(["custody", "verify", str(bundle), "--log-key", str(key)]) == 1
    assert capsys.readouterr().err.replace("\n", "") == (
        f"error: custody verification failed: the ledger key of {ORIGIN} changed: this client "
        f"pinned {log_signer(server).vkey} ({config / SAVED}), but the given --log-key is "
        f"{log_signer(impostor).vkey}"
    )
    assert (config / SAVED).read_bytes() == pinned


@pytest.mark.parametrize(
    ("origin", "name"),
    [
        ("exchange.example/ledger", "exchange.example%2Fledger.json"),
        ("..", hashlib.sha256(b"..").hexdigest() + ".json"),
        ("x" * 250, hashlib.sha256(b"x" * 250).hexdigest() + ".json"),
    ],
)
def test_each_origin_has_one_file_inside_the_checkpoints_folder(config, origin: str, name: str):
    path = checkpoint_path(origin)
    assert path == config / "checkpoints" / name
