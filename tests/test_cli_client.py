"""The client commands against the real exchange (`exchange serve` on a free port, SQLite + files).

login, case, upload, grant, fetch and custody export/verify, as a user runs them, and each
refusal with its exact message: nothing that did not verify is left on disk.
"""

from __future__ import annotations

import json
import secrets
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from exchange.cli import main
from exchange.cli.client import grant_body, upload_package
from exchange.cli.demo import AGENCY_OF, PH_PARTNER, TH_INVESTIGATOR, TH_PROSECUTOR, VN_PARTNER
from exchange.cli.profile import Profile
from exchange.client import ClientError, ExchangeClient, make_client_assertion
from exchange.settings import DEV_KEY_DIR
from exchange.signing import Signer
from tests.builders import build, read_manifest
from tests.exchange_server import RunningExchange, free_port, running_exchange

pytestmark = pytest.mark.slow  # one real server for the module: a few seconds to start


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningExchange]:
    with running_exchange(tmp_path_factory.mktemp("exchange") / "var") as running:
        yield running


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "config"
    monkeypatch.setenv("EXCHANGE_CONFIG_DIR", str(folder))
    return folder


def login(server: RunningExchange, client_id: str, profile: str) -> None:
    key = DEV_KEY_DIR / f"{AGENCY_OF[client_id]}.key.pem"
    args = ["login", "--server", server.url, "--client", client_id, "--key", str(key)]
    assert main([*args, "--profile", profile]) == 0


@pytest.fixture
def profiles(server: RunningExchange, config: Path) -> dict[str, str]:
    names = {TH_INVESTIGATOR: "th", TH_PROSECUTOR: "pros", PH_PARTNER: "ph", VN_PARTNER: "vn"}
    for client_id, name in names.items():
        login(server, client_id, name)
    return names


def out_of(capsys: pytest.CaptureFixture[str]) -> str:
    return capsys.readouterr().out


def new_case(capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["case", "create", "--case-ref", "TH-1", "--title", "Scam [ring]",
                 "--classification", "restricted", "--profile", "th"]) == 0  # fmt: skip
    line = out_of(capsys).strip()
    assert line.startswith("created case ")
    return line.removeprefix("created case ")


def th_package(tmp_path: Path, name: str = "pkg", *, tar: bool = False) -> Path:
    th = Signer.from_pem((DEV_KEY_DIR / "TH-RTP.key.pem").read_bytes())
    pkg = build(tmp_path, th, created_at=datetime.now(UTC) - timedelta(minutes=5), out_name=name)
    if not tar:
        return pkg
    archive = tmp_path / f"{name}.tar"
    with tarfile.open(archive, "w") as t:
        t.add(pkg, arcname=name)
    return archive


def upload(capsys: pytest.CaptureFixture[str], pkg: Path, case_id: str) -> str:
    assert main(["upload", str(pkg), "--case", case_id, "--profile", "th"]) == 0
    out = out_of(capsys)
    assert f"in case {case_id}" in out
    return out.split("sealed package ", 1)[1].split()[0]


def grant_ph(capsys: pytest.CaptureFixture[str], case_id: str) -> str:
    assert main(["grant", "add", "--case", case_id, "--country", "PH", "--agency", "PH-NBI",
                 "--legal-basis", "mla", "--legal-reference", "MLA-7", "--days", "30",
                 "--profile", "th"]) == 0  # fmt: skip
    out = out_of(capsys)
    assert f"granted PH-NBI read access to case {case_id}" in out
    return out.split("grant id", 1)[1].split()[0]


# ------------------------------------------------------------------ without a server


def test_grant_body_names_country_agency_basis_and_expiry():
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    body = grant_body(country="PH", agency="PH-NBI", legal_basis="mla", reference="MLA-7",
                      days=30, now=now)  # fmt: skip
    assert body == {
        "grantee_country": "PH",
        "grantee_agency": "PH-NBI",
        "scope": ["read"],
        "legal_basis": {"type": "mla", "reference": "MLA-7"},
        "expires_at": "2026-12-29T12:00:00Z",
    }
    assert "grantee_agency" not in grant_body(
        country="PH", agency=None, legal_basis="mla", reference="R", days=1, now=now
    )


def test_a_command_without_a_profile_says_to_log_in(config: Path, capsys):
    assert main(["case", "list", "--profile", "nobody"]) == 1
    assert "no profile 'nobody': run `exchange login` first" in capsys.readouterr().err


def test_login_to_nothing_listening_fails_and_saves_nothing(config: Path, capsys):
    key = DEV_KEY_DIR / "TH-RTP.key.pem"
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["login", "--server", url, "--client", "x", "--key", str(key)]) == 1
    assert f"cannot reach {url}" in capsys.readouterr().err
    assert not (config / "default.json").exists()


def test_upload_of_a_folder_that_is_no_package_fails_before_any_request(
    config: Path, tmp_path: Path, capsys
):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("x")
    assert main(["upload", str(tmp_path), "--case", "c", "--profile", "th"]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: package has no manifest.json"


def test_custody_verify_refuses_unreadable_input(tmp_path: Path, capsys):
    key = tmp_path / "log.pub.pem"
    key.write_text((DEV_KEY_DIR / "TH-RTP.pub.pem").read_text())
    missing = tmp_path / "nope.json"
    assert main(["custody", "verify", str(missing), "--log-key", str(key)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: cannot read {missing}: No such file or directory"
    )
    duplicate = tmp_path / "dup.json"
    duplicate.write_text('{"case_id": "a", "case_id": "b"}')
    assert main(["custody", "verify", str(duplicate), "--log-key", str(key)]) == 1
    assert capsys.readouterr().err.strip() == f"error: {duplicate}: duplicate key 'case_id'"


# ------------------------------------------------------------------ against the real server


def test_login_proves_the_key_and_saves_a_private_profile(server, config: Path, capsys):
    login(server, TH_INVESTIGATOR, "th")
    out = out_of(capsys)
    assert f"logged in to {server.url} as {TH_INVESTIGATOR}" in out
    assert "evidence:upload" in out
    saved = config / "th.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    profile = Profile.load("th")
    assert (profile.server, profile.client_id) == (server.url, TH_INVESTIGATOR)


def test_login_with_another_agencys_key_is_refused(server, config: Path, capsys):
    key = DEV_KEY_DIR / "VN-C06.key.pem"
    assert main(["login", "--server", server.url, "--client", TH_INVESTIGATOR,
                 "--key", str(key)]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "login failed: the exchange refused (401" in err
    assert not (config / "default.json").exists()


def test_case_create_and_list(server, profiles, capsys):
    case_id = new_case(capsys)
    assert main(["case", "list", "--profile", "th"]) == 0
    out = out_of(capsys)
    assert case_id in out
    assert "Scam [ring]" in out  # printed as text, not as rich markup
    assert main(["case", "list", "--profile", "vn", "--json"]) == 0
    assert case_id not in out_of(capsys)


def test_upload_dir_and_tar_then_partner_fetches_verified_files(
    server, profiles, capsys, tmp_path: Path
):
    case_id = new_case(capsys)
    first = upload(capsys, th_package(tmp_path, "a"), case_id)
    second = upload(capsys, th_package(tmp_path, "b", tar=True), case_id)
    grant_ph(capsys, case_id)
    out = tmp_path / "fetched"
    assert main(["fetch", case_id, "--out", str(out), "--profile", "ph",
                 "--trust", str(DEV_KEY_DIR / "trust")]) == 0  # fmt: skip
    printed = out_of(capsys)
    assert f"VERIFIED package {first} from TH-RTP: 3 files" in printed
    assert f"VERIFIED package {second} from TH-RTP: 3 files" in printed
    assert sorted(p.name for p in out.iterdir()) == sorted([first, second])
    # The fetched folder is a package: the offline verifier accepts it as it stands.
    assert main(["package", "verify", str(out / first), "--trust", str(DEV_KEY_DIR / "trust")]) == 0
    assert read_manifest(out / first)["package_id"] == first
    data = out / first / "data" / "chats" / "line-export.txt"
    assert stat.S_IMODE(data.stat().st_mode) == 0o444


def test_fetch_without_trust_uses_the_signer_key_the_exchange_reports(
    server, profiles, capsys, tmp_path: Path
):
    case_id = new_case(capsys)
    package_id = upload(capsys, th_package(tmp_path), case_id)
    grant_ph(capsys, case_id)
    assert main(["fetch", case_id, "--out", str(tmp_path / "f"), "--profile", "ph"]) == 0
    assert f"VERIFIED package {package_id}" in out_of(capsys)


def test_fetch_with_a_trust_store_lacking_the_signer_fails_and_leaves_nothing(
    server, profiles, capsys, tmp_path: Path
):
    case_id = new_case(capsys)
    package_id = upload(capsys, th_package(tmp_path), case_id)
    grant_ph(capsys, case_id)
    trust = tmp_path / "trust" / "agencies"
    trust.mkdir(parents=True)
    (trust / "PH-NBI.json").write_bytes((DEV_KEY_DIR / "trust/agencies/PH-NBI.json").read_bytes())
    out = tmp_path / "f"
    assert main(["fetch", case_id, "--out", str(out), "--profile", "ph",
                 "--trust", str(trust.parent)]) == 1  # fmt: skip
    th_key = json.loads((DEV_KEY_DIR / "trust/agencies/TH-RTP.json").read_text())["key_id"]
    assert capsys.readouterr().err.replace("\n", "") == (
        f"error: fetch refused: package {package_id}: manifest signature does not verify: "
        f"key {th_key} is not in the trust store"
    )
    assert list(out.iterdir()) == []


def test_reuploading_a_sealed_package_is_a_conflict(server, profiles, capsys, tmp_path: Path):
    case_id = new_case(capsys)
    pkg = th_package(tmp_path)
    upload(capsys, pkg, case_id)
    assert main(["upload", str(pkg), "--case", case_id, "--profile", "th"]) == 1
    assert "the exchange refused (409" in capsys.readouterr().err


def test_grants_list_and_revoke_and_the_partner_is_refused_after(
    server, profiles, capsys, tmp_path: Path
):
    case_id = new_case(capsys)
    upload(capsys, th_package(tmp_path), case_id)
    grant_id = grant_ph(capsys, case_id)
    assert main(["grant", "list", "--case", case_id, "--profile", "th"]) == 0
    listed = out_of(capsys)
    assert grant_id in listed
    assert "live" in listed
    assert main(["grant", "revoke", "--case", case_id, "--grant", grant_id, "--profile", "th"]) == 0
    assert f"revoked grant {grant_id}" in out_of(capsys)
    assert main(["grant", "list", "--case", case_id, "--profile", "th", "--json"]) == 0
    [grant] = json.loads(out_of(capsys))
    assert grant.get("revoked_at")
    assert main(["fetch", case_id, "--out", str(tmp_path / "f"), "--profile", "ph"]) == 1
    assert "the exchange refused (404" in capsys.readouterr().err


def test_a_partner_without_a_grant_gets_404_not_403(server, profiles, capsys, tmp_path: Path):
    case_id = new_case(capsys)
    upload(capsys, th_package(tmp_path), case_id)
    assert main(["fetch", case_id, "--out", str(tmp_path / "f"), "--profile", "vn"]) == 1
    assert "the exchange refused (404" in capsys.readouterr().err


def test_custody_export_then_verify_offline(server, profiles, capsys, tmp_path: Path):
    case_id = new_case(capsys)
    package_id = upload(capsys, th_package(tmp_path), case_id)
    grant_ph(capsys, case_id)
    fetched = tmp_path / "fetched"
    assert main(["fetch", case_id, "--out", str(fetched), "--profile", "ph"]) == 0
    bundle = tmp_path / "custody.json"
    assert main(["custody", "export", case_id, "--out", str(bundle), "--profile", "pros"]) == 0
    assert f"exported custody of case {case_id}" in out_of(capsys)
    log_key = ledger_key_file(tmp_path, capsys)
    assert main(["custody", "verify", str(bundle), "--log-key", str(log_key),
                 "--files", str(fetched)]) == 0  # fmt: skip
    out = out_of(capsys)
    assert f"VERIFIED custody of case {case_id}" in out
    assert "files     3 files" in out
    assert "package sealed (3 files" in out
    assert f"PH-NBI (PH) {PH_PARTNER}" in out or "PH-NBI (PH)" in out
    assert package_id in out
    # A second export refuses to overwrite the first.
    assert main(["custody", "export", case_id, "--out", str(bundle), "--profile", "pros"]) == 1
    assert "already exists; refusing to overwrite" in capsys.readouterr().err


def test_custody_verify_names_the_first_failure(server, profiles, capsys, tmp_path: Path):
    case_id = new_case(capsys)
    upload(capsys, th_package(tmp_path), case_id)
    bundle = tmp_path / "custody.json"
    assert main(["custody", "export", case_id, "--out", str(bundle), "--profile", "th"]) == 0
    other = tmp_path / "other.pub.pem"
    from exchange.signing import public_key_pem

    other.write_text(public_key_pem(Signer.generate().public_key))
    assert main(["custody", "verify", str(bundle), "--log-key", str(other)]) == 1
    assert capsys.readouterr().err.startswith(
        "error: custody verification failed: ledger checkpoint does not verify with the given "
        "log key: "
    )
    doc: dict[str, Any] = json.loads(bundle.read_text())
    doc["packages"][0]["manifest"]["notes"] = "edited after sealing"
    bundle.write_text(json.dumps(doc))
    log_key = ledger_key_file(tmp_path, capsys)
    assert main(["custody", "verify", str(bundle), "--log-key", str(log_key), "--json"]) == 1
    result = json.loads(out_of(capsys))
    assert result["ok"] is False
    assert result["error"]["reason"] == "manifest_mismatch"


def test_fetch_refuses_bytes_replaced_behind_the_exchanges_back(
    server, profiles, capsys, tmp_path: Path
):
    case_id = new_case(capsys)
    pkg = th_package(tmp_path)
    package_id = upload(capsys, pkg, case_id)
    grant_ph(capsys, case_id)
    entry = next(f for f in read_manifest(pkg)["files"] if f["path"] == "chats/line-export.txt")
    blob = stored_blob(server, entry["sha256"])
    original = blob.read_bytes()
    blob.chmod(0o644)
    blob.write_bytes(original.replace(b"50,000", b"90,000"))  # same size, other bytes
    out = tmp_path / "f"
    try:
        assert main(["fetch", case_id, "--out", str(out), "--profile", "ph"]) == 1
    finally:
        blob.write_bytes(original)
        blob.chmod(0o444)
    # A small object is verified whole before anything is sent: a problem answer, named.
    assert capsys.readouterr().err.replace("\n", "") == (
        f"error: fetch refused: package {package_id}: the exchange detected a corrupt stored "
        "object: its copy of data/chats/line-export.txt no longer matches the sealed manifest; "
        "it recorded this in the ledger (integrity.failure) and refused the fetch; nothing of "
        "the package was kept"
    )
    assert list(out.iterdir()) == []
    # ...and the custody record says so.
    bundle = tmp_path / "custody.json"
    assert main(["custody", "export", case_id, "--out", str(bundle), "--profile", "th"]) == 0
    log_key = ledger_key_file(tmp_path, capsys)
    assert main(["custody", "verify", str(bundle), "--log-key", str(log_key)]) == 0
    assert "INTEGRITY FAILURE: stored bytes did not match (chats/line-export.txt)" in out_of(capsys)


@pytest.fixture
def th_client(server: RunningExchange) -> Iterator[ExchangeClient]:
    key = Signer.from_pem((DEV_KEY_DIR / "TH-RTP.key.pem").read_bytes())
    with ExchangeClient(base_url=server.url, client_id=TH_INVESTIGATOR, signer=key) as client:
        yield client


@contextmanager
def broken_store(server: RunningExchange) -> Iterator[Callable[[], None]]:
    """Make the server's local store fail every write until the returned `repair()` is called."""
    staging = server.data_dir / "blobs" / "staging"
    moved = staging.with_name("staging.away")
    staging.rename(moved)
    staging.write_bytes(b"")  # a file where the store wants its staging folder

    def repair() -> None:
        if moved.exists():
            staging.unlink()
            moved.rename(staging)

    try:
        yield repair
    finally:
        repair()


def unique_package(tmp_path: Path) -> Path:
    th = Signer.from_pem((DEV_KEY_DIR / "TH-RTP.key.pem").read_bytes())
    files = {"unique.bin": secrets.token_bytes(4096)}  # not yet stored: the store must write it
    return build(tmp_path, th, created_at=datetime.now(UTC) - timedelta(minutes=1), files=files)


def test_upload_retries_a_failed_file_once(
    server: RunningExchange, th_client: ExchangeClient, tmp_path: Path
):
    case_id = th_client.create_case(case_ref="R", title="T", classification="c")["case_id"]
    pkg = unique_package(tmp_path)
    failures: list[tuple[str, Exception]] = []
    with broken_store(server) as repair:

        def on_retry(path: str, error: Exception) -> None:
            failures.append((path, error))
            repair()

        result = upload_package(th_client, pkg, case_id, on_retry=on_retry)
    assert result.retried == ("unique.bin",)
    [(path, error)] = failures
    assert path == "unique.bin"
    assert isinstance(error, ClientError)
    assert (error.status, error.code) == (502, "storage_error")
    [package] = th_client.list_packages(case_id)
    assert (package["package_id"], package["state"]) == (result.package_id, "sealed")


def test_upload_gives_up_after_one_retry_and_seals_nothing(
    server: RunningExchange, th_client: ExchangeClient, tmp_path: Path
):
    case_id = th_client.create_case(case_ref="R", title="T", classification="c")["case_id"]
    pkg = unique_package(tmp_path)
    retried: list[str] = []
    with broken_store(server), pytest.raises(ClientError) as info:
        upload_package(th_client, pkg, case_id, on_retry=lambda path, _: retried.append(path))
    assert retried == ["unique.bin"]
    assert info.value.status == 502
    [package] = th_client.list_packages(case_id)
    assert package["state"] == "registered"  # visible to its uploader only, never sealed
    # Once storage is back, the same upload resumes and seals.
    assert upload_package(th_client, pkg, case_id).package_id == package["package_id"]


# ------------------------------------------------------------------ helpers reading the server


def ledger_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """The ledger public key saved by `exchange custody log-key` (its output swallowed)."""
    path = tmp_path / "ledger.pub.pem"
    if not path.exists():
        assert main(["custody", "log-key", "--out", str(path), "--profile", "th"]) == 0
        assert "vkey  exchange.example/ledger+" in capsys.readouterr().out
    return path


def stored_blob(server: RunningExchange, sha256: str) -> Path:
    """The local store's file holding the object with this hash."""
    found = [p for p in server.data_dir.rglob(sha256) if p.is_file()]
    assert len(found) == 1, f"no single stored object {sha256} under {server.data_dir}: {found}"
    return found[0]


def test_the_server_fixture_really_listens(server):
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_login_with_an_officer_records_them_in_every_entry_and_the_timeline(
    server, profiles, config: Path, capsys, tmp_path: Path
):
    key = DEV_KEY_DIR / "TH-RTP.key.pem"
    assert main(["login", "--server", server.url, "--client", TH_INVESTIGATOR, "--key", str(key),
                 "--officer-id", "th-rtp-officer-0042", "--officer-name", "Pol. Lt. Somchai K.",
                 "--profile", "th"]) == 0  # fmt: skip
    assert "  officer  Pol. Lt. Somchai K. (th-rtp-officer-0042)" in out_of(capsys)
    saved = json.loads((config / "th.json").read_text(encoding="utf-8"))
    assert (saved["officer_id"], saved["officer_name"]) == (
        "th-rtp-officer-0042",
        "Pol. Lt. Somchai K.",
    )
    case_id = new_case(capsys)
    bundle = tmp_path / "custody.json"
    assert main(["custody", "export", case_id, "--out", str(bundle), "--profile", "pros"]) == 0
    out_of(capsys)
    log_key = ledger_key_file(tmp_path, capsys)
    assert main(["custody", "verify", str(bundle), "--log-key", str(log_key)]) == 0
    out = out_of(capsys)
    assert (
        f"TH-RTP (TH) client:{TH_INVESTIGATOR}, acting: Pol. Lt. Somchai K. "
        "(th-rtp-officer-0042): case opened"
    ) in out
    # The prosecutor's profile names no officer: its export records none.
    assert f"TH-RTP (TH) client:{TH_PROSECUTOR}: custody record exported" in out


def test_an_officer_name_without_an_id_is_refused_before_any_request(config: Path, capsys):
    key = DEV_KEY_DIR / "TH-RTP.key.pem"
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["login", "--server", url, "--client", TH_INVESTIGATOR, "--key", str(key),
                 "--officer-name", "Somchai"]) == 1  # fmt: skip
    assert "--officer-name needs --officer-id" in capsys.readouterr().err
    assert not (config / "default.json").exists()


def test_a_bad_officer_is_refused_by_the_exchange_and_no_profile_is_saved(
    server, config: Path, capsys
):
    key = DEV_KEY_DIR / "TH-RTP.key.pem"
    assert main(["login", "--server", server.url, "--client", TH_INVESTIGATOR, "--key", str(key),
                 "--officer-id", "x" * 201]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert (
        "login failed: the exchange refused (401 invalid_client): invalid client assertion: "
        "act.sub must be 1 to 200 characters of text, not blank"
    ) in err
    assert not (config / "default.json").exists()


def test_the_cli_works_end_to_end_where_only_dpop_is_accepted(config: Path, capsys, tmp_path: Path):
    # A node refusing bearer tokens (as production does by default): every command must use DPoP.
    with running_exchange(tmp_path / "node" / "var", EXCHANGE_ALLOW_BEARER_TOKENS="false") as node:
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": make_client_assertion(
                client_id=TH_INVESTIGATOR,
                signer=Signer.from_pem((DEV_KEY_DIR / "TH-RTP.key.pem").read_bytes()),
                audience=f"{node.url}/v1/token",
            ),
        }
        refused = httpx.post(f"{node.url}/v1/token", data=form)
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid_dpop_proof"
        login(node, TH_INVESTIGATOR, "th")
        assert "tokens   DPoP-bound to a key of this process (RFC 9449)" in out_of(capsys)
        login(node, PH_PARTNER, "ph")
        out_of(capsys)
        case_id = new_case(capsys)
        package_id = upload(capsys, th_package(tmp_path), case_id)
        grant_ph(capsys, case_id)
        fetched = tmp_path / "fetched"
        assert main(["fetch", case_id, "--out", str(fetched), "--profile", "ph",
                     "--trust", str(DEV_KEY_DIR / "trust")]) == 0  # fmt: skip
        assert f"VERIFIED package {package_id} from TH-RTP: 3 files" in out_of(capsys)
