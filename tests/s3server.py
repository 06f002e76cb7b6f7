"""moto's S3 server as a real subprocess on 127.0.0.1, and the pytest fixtures built on it.

Registered as a pytest plugin in tests/conftest.py, so every test module can ask for
`s3_server` (one server per test session) and `s3_store` (an `S3BlobStore` on a fresh bucket
of that server). A test that stops the server (outage tests) starts its own `S3Server`, so the
shared one is never disturbed.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from exchange.errors import ExchangeError
from exchange.storage.s3 import S3BlobStore

STARTUP_SECONDS = 30.0
STOP_SECONDS = 10.0
ACCESS_KEY = "testing"
SECRET_KEY = "testing"
TEST_PART_SIZE = 5 * 1024 * 1024  # the S3 minimum, so small test files already go multipart


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class S3Server:
    """One `python -m moto.server` process on 127.0.0.1; stop and start it again on the same port."""

    def __init__(self, port: int | None = None, log_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = (log_dir or Path(tempfile.gettempdir())) / f"moto-s3-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """host:port, as the minio SDK wants it."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://{self.endpoint}"

    @property
    def running(self) -> bool:
        """True while the subprocess is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers HTTP; fail with its log if it does not."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            process = self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited at start:\n{self.log_text()}")
            if self._answers():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer in {STARTUP_SECONDS} s:\n{self.log_text()}")

    def stop(self) -> None:
        """Terminate the server (kill it if it lingers) and wait until the port is closed."""
        process, self._process = self._process, None
        if process is None:
            return
        process.send_signal(signal.SIGCONT)  # a frozen server would never see the SIGTERM
        process.terminate()
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_SECONDS)

    def freeze(self) -> None:
        """SIGSTOP the server: it keeps its port (the kernel still accepts connections) but
        never answers, like a hung store. `thaw` (or `stop`) ends it."""
        assert self._process is not None, "the server is not running"
        self._process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen server: it answers again, with everything it stored."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        """Start again on the same port (moto keeps nothing: buckets must be created anew)."""
        self.stop()
        self.start()

    def log_text(self) -> str:
        """What the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def store(self, bucket: str | None = None, **options: Any) -> S3BlobStore:
        """An `S3BlobStore` on this server with short timeouts; its bucket is created."""
        settings: dict[str, Any] = {
            "part_size": TEST_PART_SIZE,
            "connect_timeout": 2.0,
            "read_timeout": 20.0,
            "retries": 1,
        }
        settings.update(options)
        store = S3BlobStore(
            endpoint=self.endpoint,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
            bucket=bucket or f"test-{uuid.uuid4().hex[:16]}",
            secure=False,
            **settings,
        )
        store.ensure_bucket()
        return store

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/", timeout=1) as response:  # noqa: S310
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def __enter__(self) -> S3Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One moto S3 server for the whole test session."""
    with S3Server(log_dir=tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def s3_store(s3_server: S3Server) -> Iterator[S3BlobStore]:
    """An `S3BlobStore` on a bucket of its own (no object lock); emptied afterwards."""
    store = s3_server.store()
    yield store
    if s3_server.running:
        # Give moto its memory back; locked objects (lock tests) stay until the server stops.
        for name in set(store.stored_names()):
            with contextlib.suppress(ExchangeError):
                store.delete(name)
