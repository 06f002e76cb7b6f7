"""End to end over a real socket: `exchange serve` in one process, `exchange demo` in another."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.exchange_server import clean_env, running_exchange

pytestmark = pytest.mark.slow

STEPS = [
    "✓ the exchange is up",
    "✓ the four dev clients log in (private_key_jwt)",
    "✓ TH-RTP investigator opens a case",
    "✓ TH-RTP investigator builds, uploads and seals a signed package",
    "✓ PH-NBI partner cannot see the case before any grant (404)",
    "✓ TH-RTP grants PH read access",
    "✓ PH-NBI partner fetches the package and verifies it",
    "✓ VN-C06 partner, with no grant, is refused (404)",
    "✓ TH-RTP revokes the grant",
    "✓ PH-NBI is refused at once, with its old token (404)",
    "✓ TH-RTP prosecutor exports the custody bundle",
    "✓ the custody bundle verifies offline with the ledger key alone",
]


def run_demo(url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exchange", "demo", "--server", url],
        capture_output=True,
        text=True,
        timeout=180,
        env=clean_env(PYTHONIOENCODING="utf-8", COLUMNS="200"),
        cwd=cwd,
        check=False,
    )


def test_the_demo_passes_against_a_fresh_server_twice(tmp_path: Path):
    with running_exchange(tmp_path / "var") as server:
        first = run_demo(server.url, tmp_path)
        assert first.returncode == 0, f"{first.stdout}\n{first.stderr}\n{server.log_text()}"
        lines = [line.strip() for line in first.stdout.splitlines()]
        assert [line for line in lines if line[:1] in ("✓", "✗")] == STEPS
        assert "demo passed: every step behaved as expected" in first.stdout
        timeline = first.stdout.split("(verified):", 1)[1]
        for action in ("case opened", "package sealed", "read access granted to all agencies of PH",
                       "fetched data/phone/extraction.bin", "revoked"):  # fmt: skip
            assert action in timeline
        # The story runs again on the same server: new case, new package, same outcome.
        second = run_demo(server.url, tmp_path)
        assert second.returncode == 0, second.stdout + second.stderr


def test_the_demo_passes_on_postgresql_and_s3(tmp_path: Path, fresh_pg_url: str, s3_server):
    """The production shape: PostgreSQL and an S3 server (moto) with object lock."""
    settings = {
        "EXCHANGE_DATABASE_URL": fresh_pg_url,
        "EXCHANGE_STORAGE": "s3",
        "EXCHANGE_S3_ENDPOINT": s3_server.endpoint,
        "EXCHANGE_S3_ACCESS_KEY": "testing",
        "EXCHANGE_S3_SECRET_KEY": "testing",
        "EXCHANGE_S3_SECURE": "false",
        "EXCHANGE_S3_BUCKET": f"demo-{uuid.uuid4().hex[:12]}",
        "EXCHANGE_S3_OBJECT_LOCK": "true",
    }
    with running_exchange(tmp_path / "var", **settings) as server:
        result = run_demo(server.url, tmp_path)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{server.log_text()}"
        assert "demo passed: every step behaved as expected" in result.stdout


def test_the_demo_fails_with_exit_1_when_no_server_answers(tmp_path: Path):
    from tests.exchange_server import free_port

    result = run_demo(f"http://127.0.0.1:{free_port()}", tmp_path)
    assert result.returncode == 1
    assert "✗ the exchange is up" in result.stdout
    assert "demo failed" in result.stdout
