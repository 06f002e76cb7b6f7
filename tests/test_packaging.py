"""The base package installs without the server and verifies a real exchange's artefacts offline.

A fresh venv gets `pip install <this project>` with no extra: FastAPI, uvicorn, SQLModel and the
rest of the `server` extra must not be importable in it, and the offline verifiers
(`custody verify`, `package verify`, `ledger check-proof`) must check a bundle, a fetched package
and a proof made by a real exchange, while `exchange serve` names the extra to install.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.cli import main
from exchange.cli.demo import PH_PARTNER, TH_INVESTIGATOR
from exchange.client import ExchangeClient
from exchange.settings import DEV_KEY_DIR
from exchange.signing import Signer
from tests.exchange_server import RunningExchange, clean_env, running_exchange
from tests.test_cli_client import grant_ph, login, new_case, out_of, th_package, upload

pytestmark = pytest.mark.slow  # a venv and a pip install: about half a minute

REPO = Path(__file__).resolve().parent.parent
SERVER_ONLY = ("fastapi", "starlette", "uvicorn", "sqlmodel", "sqlalchemy", "alembic", "psycopg",
               "minio", "prometheus_client", "multipart")  # fmt: skip


@pytest.fixture(scope="module")
def base_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv holding the project installed without extras; returns its bin folder."""
    root = tmp_path_factory.mktemp("install")
    # Build from a copy: pip builds in the source tree, and the work tree is not ours to litter.
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("exchange", "schemas"):
        shutil.copytree(
            REPO / name,
            source / name,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    venv.create(root / "venv", with_pip=True)
    bin_dir = root / "venv" / "bin"
    subprocess.run(
        [bin_dir / "python", "-m", "pip", "install", "--quiet", str(source)],
        check=True,
        capture_output=True,
        timeout=300,
        cwd=root,
    )
    return bin_dir


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningExchange]:
    with running_exchange(tmp_path_factory.mktemp("exchange") / "var") as running:
        yield running


def run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [bin_dir / "exchange", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(EXCHANGE_CONFIG_DIR=str(cwd / "offline-config")),
        timeout=120,
        check=False,
    )


def test_the_base_install_has_no_server_parts(base_install: Path):
    for module in SERVER_ONLY:
        done = subprocess.run(
            [base_install / "python", "-c", f"import {module}"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 1, f"{module} is importable in the base install"
        assert f"No module named '{module}'" in done.stderr


def test_the_base_install_verifies_a_real_exchanges_bundle_package_and_proof(
    base_install: Path, server: RunningExchange, tmp_path: Path, capsys, monkeypatch
):
    monkeypatch.setenv("EXCHANGE_CONFIG_DIR", str(tmp_path / "config"))
    for client_id, name in ((TH_INVESTIGATOR, "th"), (PH_PARTNER, "ph")):
        login(server, client_id, name)
    capsys.readouterr()
    case_id = new_case(capsys)
    package_id = upload(capsys, th_package(tmp_path), case_id)
    grant_ph(capsys, case_id)
    fetched = tmp_path / "fetched"
    assert main(["fetch", case_id, "--out", str(fetched), "--profile", "ph"]) == 0
    bundle = tmp_path / "custody.json"
    assert main(["custody", "export", case_id, "--out", str(bundle), "--profile", "th"]) == 0
    key = tmp_path / "ledger.pub.pem"
    assert main(["custody", "log-key", "--out", str(key), "--profile", "th"]) == 0
    vkey = out_of(capsys).split("  vkey  ", 1)[1].split()[0]
    th = Signer.from_pem((DEV_KEY_DIR / "TH-RTP.key.pem").read_bytes())
    with ExchangeClient(base_url=server.url, client_id=TH_INVESTIGATOR, signer=th) as client:
        seq = json.loads(bundle.read_text())["entries"][0]["seq"]
        proof = client.get_json(f"/v1/ledger/entries/{seq}")
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(json.dumps(proof))

    done = run(base_install, "custody", "verify", str(bundle), "--log-key", str(key),
               "--files", str(fetched), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"VERIFIED custody of case {case_id}" in done.stdout
    assert f"  log key   vkey {vkey}\n" in done.stdout
    assert "  files     3 files" in done.stdout

    done = run(base_install, "package", "verify", str(fetched / package_id),
               "--trust", str(DEV_KEY_DIR / "trust"), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "VERIFIED" in done.stdout
    assert package_id in done.stdout

    done = run(base_install, "ledger", "check-proof", str(proof_file), "--log-key", str(key),
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"PROVED entry {seq} is in ledger exchange.example/ledger")

    # A tampered bundle is refused by the base install just the same.
    doc = json.loads(bundle.read_text())
    doc["packages"][0]["manifest"]["notes"] = "edited after sealing"
    bundle.write_text(json.dumps(doc))
    done = run(base_install, "custody", "verify", str(bundle), "--log-key", str(key),
               cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("error: custody verification failed: ")

    done = run(base_install, "serve", cwd=tmp_path)
    assert done.returncode == 2
    assert "install evidence-exchange[server]" in done.stderr
