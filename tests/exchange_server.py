"""Start the real exchange (`exchange serve`) as a subprocess on a free port, for client tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

STARTUP_SECONDS = 60


@dataclass(frozen=True)
class RunningExchange:
    """A server process, its URL, its data folder and its log file."""

    url: str
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes]

    def log_text(self) -> str:
        """What the server printed so far."""
        return self.log.read_text(errors="replace")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any EXCHANGE_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXCHANGE_")}
    env.update(extra)
    return env


@contextmanager
def running_exchange(
    data_dir: Path, *, public_url: str | None = None, **settings: str
) -> Iterator[RunningExchange]:
    """`exchange serve` in `data_dir`: embedded defaults (SQLite + local store) unless
    `settings` (EXCHANGE_* variables) say otherwise. `public_url` (default: its own URL) is
    the URL clients use, e.g. a load balancer's in front of several servers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir.parent / f"server-{port}.log"
    env = clean_env(
        EXCHANGE_DATA_DIR=str(data_dir), EXCHANGE_PUBLIC_URL=public_url or url, **settings
    )
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "exchange", "serve", "--host", "127.0.0.1", "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=data_dir.parent,
        )
    server = RunningExchange(url=url, data_dir=data_dir, log=log, process=process)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"exchange serve exited {process.returncode}:\n{server.log_text()}"
                )
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"exchange serve did not start:\n{server.log_text()}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
