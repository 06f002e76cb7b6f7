"""Disk full on the local store, through the API: the exchange's blob folder is a 2 MiB tmpfs.

The server runs in a private mount namespace (unshare -m, needs root) where its `blobs/` folder
is a tiny tmpfs. A file larger than the space left must be refused cleanly (503 with
Retry-After), leave no byte in the store, record nothing, and leave the node able to take a
file that fits.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from exchange.client import ClientError, file_url
from tests.exchange_server import clean_env, free_port
from tests.reliability.harness import (
    dev_client,
    ledger_actions,
    ledger_verify,
    one_file_package,
    open_case,
    random_bytes,
)

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
STARTUP_SECONDS = 60.0
MOUNT_AND_SERVE = 'mount -t tmpfs -o size=2m tmpfs "$1" && exec "$2" -m exchange serve --host 127.0.0.1 --port "$3"'


@contextmanager
def server_on_tiny_blob_store(data_dir: Path) -> Iterator[tuple[str, int]]:
    """`exchange serve` whose data_dir/blobs is a 2 MiB tmpfs; yields (URL, pid)."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None or shutil.which("nsenter") is None:
        pytest.skip("needs root, unshare(1) and nsenter(1) to mount a tiny tmpfs")
    blobs = data_dir / "blobs"
    blobs.mkdir(parents=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = data_dir.parent / "server.log"
    env = clean_env(EXCHANGE_DATA_DIR=str(data_dir), EXCHANGE_PUBLIC_URL=url)
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [
                unshare,
                "-m",
                "sh",
                "-c",
                MOUNT_AND_SERVE,
                "sh",
                str(blobs),
                sys.executable,
                str(port),
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=data_dir.parent,
        )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                text = log.read_text(errors="replace")
                if "mount" in text and "exchange" not in text.lower():
                    pytest.skip(f"cannot mount tmpfs here: {text.strip()}")
                raise AssertionError(text)
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.2)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def files_in_store(pid: int, blobs: Path) -> list[str]:
    """Every file under the server's (namespaced) blob folder, seen from inside its namespace."""
    found = subprocess.run(
        ["nsenter", "-t", str(pid), "-m", "find", str(blobs), "-type", "f"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return sorted(found.stdout.split())


def test_disk_full_refuses_the_upload_cleanly_and_keeps_serving(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    db_url = f"sqlite:///{data_dir / 'exchange.db'}"
    with server_on_tiny_blob_store(data_dir) as (url, pid):
        client = dev_client(url)
        case_id = open_case(client)
        big = random_bytes(3 * MiB)
        manifest, jws = one_file_package("disk/image.dd", big)
        big_id = str(manifest["package_id"])
        client.register_package(case_id, manifest=manifest, jws=jws)
        before = ledger_actions(db_url)

        with pytest.raises(ClientError) as refused:
            client.put_stream(
                file_url(case_id, big_id, "disk/image.dd"), lambda: io.BytesIO(big), len(big)
            )
        assert refused.value.status == 503, refused.value
        assert files_in_store(pid, data_dir / "blobs") == []
        with pytest.raises(ClientError) as not_sealed:
            client.seal_package(case_id, big_id)
        assert not_sealed.value.status == 409
        assert ledger_actions(db_url) == before

        # The refused body was cleaned up, so a file that fits is taken at once.
        small = random_bytes(512 * 1024)
        manifest, jws = one_file_package("notes.bin", small)
        small_id = str(manifest["package_id"])
        client.register_package(case_id, manifest=manifest, jws=jws)
        client.put_stream(
            file_url(case_id, small_id, "notes.bin"), lambda: io.BytesIO(small), len(small)
        )
        assert client.seal_package(case_id, small_id)["state"] == "sealed"
        assert len(files_in_store(pid, data_dir / "blobs")) == 1
        client.close()
    verified = ledger_verify(db_url, data_dir)
    assert verified.returncode == 0, verified.stdout + verified.stderr
