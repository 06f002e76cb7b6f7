"""The CLI without the server extra: offline commands work, server commands name the extra.

Each case runs `exchange` in a fresh interpreter in which the `server` extra's packages cannot
be imported (an import hook refuses them, as an install without them would), so an import that
crept into an offline command's path fails here. tests/test_packaging.py does the same with a
real install of the base package.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from exchange.cli.server import SERVER_HINT, SERVER_PACKAGES
from exchange.settings import DEV_KEY_DIR
from exchange.signing import Signer
from tests.builders import build
from tests.exchange_server import clean_env

REPO = Path(__file__).resolve().parent.parent

# Runs `exchange ARGS...` with the server packages unimportable, then reports (on stderr, last
# line) whether any of them was imported after all.
RUNNER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Refuse())
from exchange.cli import main
try:
    code = main(sys.argv[2:])
finally:
    loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
    print("loaded:", ",".join(loaded) or "-", file=sys.stderr)
sys.exit(code)
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUNNER, ",".join(sorted(SERVER_PACKAGES)), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(PYTHONPATH=str(REPO), EXCHANGE_CONFIG_DIR=str(cwd / "config")),
        timeout=60,
        check=False,
    )


def test_package_verify_works_without_the_server_parts(tmp_path: Path):
    signer = Signer.from_pem((DEV_KEY_DIR / "TH-RTP.key.pem").read_bytes())
    pkg = build(tmp_path, signer, created_at=datetime.now(UTC) - timedelta(minutes=5))
    done = run("package", "verify", str(pkg), "--trust", str(DEV_KEY_DIR / "trust"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "VERIFIED" in done.stdout
    assert done.stderr.splitlines()[-1] == "loaded: -"


@pytest.mark.parametrize(
    ("args", "stdout_part"),
    [
        (["custody", "verify", "nope.json", "--log-key", "k.pem"], ""),
        (["ledger", "check-proof", "nope.json", "--log-key", "k.pem"], ""),
        (["--help"], "custody"),
    ],
)
def test_offline_commands_import_no_server_part(tmp_path: Path, args: list[str], stdout_part: str):
    (tmp_path / "k.pem").write_text((DEV_KEY_DIR / "TH-RTP.pub.pem").read_text())
    done = run(*args, cwd=tmp_path)
    lines = done.stderr.splitlines()
    if args != ["--help"]:
        # Past the imports: the command itself ran and refused the missing file.
        assert done.returncode == 1
        assert lines[0].startswith("error: ")
        assert "nope.json" in lines[0]
    assert stdout_part in done.stdout
    assert lines[-1] == "loaded: -"


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["serve"], "serve"),
        (["migrate"], "migrate"),
        (["admin", "agency", "add", "--agency", "X"], "admin"),
        (["ledger", "verify"], "ledger verify"),
        (["ledger", "proof", "--seq", "0"], "ledger proof"),
    ],
)
def test_server_commands_say_to_install_the_server_extra(
    tmp_path: Path, args: list[str], command: str
):
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == f"error: `exchange {command}` {SERVER_HINT}"
    assert "install evidence-exchange[server]" in SERVER_HINT
