"""deploy/nginx.conf, run by Debian's nginx in front of two `exchange serve` processes on one
PostgreSQL database: the demo passes through it, and still passes after one backend is killed.

The config is used as shipped, with only what a test machine needs changed: its listen port
and upstream servers (127.0.0.1 and free ports), and the paths nginx writes (pid, logs, temp
files) moved under a temporary prefix so nginx needs no root and leaves nothing behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO
from tests.exchange_server import RunningExchange, clean_env, free_port, running_exchange

pytestmark = pytest.mark.slow

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)
UPSTREAM_LINE = re.compile(r"^(\s*)server exchange:8000( [^;]*);$", re.MULTILINE)


def nginx_config(
    prefix: Path, *, port: int, backends: list[str], down: frozenset[str] = frozenset()
) -> str:
    """deploy/nginx.conf with the test machine's port, backends and writable paths; the
    backends in `down` marked as an operator takes one out for a restart."""
    text = (REPO / "deploy" / "nginx.conf").read_text()
    [(indent, parameters)] = UPSTREAM_LINE.findall(text)
    assert "max_fails=" in parameters
    assert "fail_timeout=" in parameters
    text = UPSTREAM_LINE.sub(
        "\n".join(
            f"{indent}server {backend}{parameters}{' down' if backend in down else ''};"
            for backend in backends
        ),
        text,
    )
    assert text.count("listen 8000;") == 1
    text = text.replace("listen 8000;", f"listen 127.0.0.1:{port};")
    writable = "".join(
        f"\n  {name}_temp_path {prefix / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    assert text.count("\nhttp {") == 1
    return text.replace("\nhttp {", f"\nhttp {{\n  access_log {prefix / 'access.log'};{writable}")


@dataclass
class Nginx:
    """A running nginx: its URL, and a reload with other upstream servers (`nginx -s reload`)."""

    url: str
    prefix: Path
    port: int
    process: subprocess.Popen[bytes]

    def reconfigure(self, backends: list[str], *, down: frozenset[str] = frozenset()) -> None:
        """Rewrite the upstream servers and reload: old workers finish what they hold."""
        config = nginx_config(self.prefix, port=self.port, backends=backends, down=down)
        (self.prefix / "nginx.conf").write_text(config)
        self.process.send_signal(signal.SIGHUP)  # what `nginx -s reload` sends
        time.sleep(1)  # the new workers start within milliseconds; no request waits on this


@contextmanager
def running_nginx(prefix: Path, *, port: int, backends: list[str]) -> Iterator[Nginx]:
    """Debian's nginx with deploy/nginx.conf in the foreground on `port`."""
    assert NGINX is not None
    prefix.mkdir(parents=True)
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(prefix, port=port, backends=backends))
    # Run as root, nginx would hand its workers to `nobody`, who cannot enter pytest's
    # private temporary folders.
    user = "user root;" if os.geteuid() == 0 else ""
    globals_ = f"daemon off; pid {prefix / 'nginx.pid'}; {user}"
    command = [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config)]
    checked = subprocess.run(
        [*command, "-t", "-g", globals_], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stderr
    process = subprocess.Popen([*command, "-g", globals_], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, (prefix / "error.log").read_text(errors="replace")
            try:
                httpx.get(f"{url}/livez", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield Nginx(url=url, prefix=prefix, port=port, process=process)
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful: finish what is in flight
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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


def requests_served(log: str) -> int:
    """Requests uvicorn's access log shows a server answered."""
    return len(re.findall(r'"(?:GET|POST|PUT|DELETE|PATCH|HEAD) /\S* HTTP/1\.1" \d{3}', log))


@pytest.mark.skipif(
    NGINX is None,
    reason="nginx is not installed: `apt-get install -y nginx` (Debian's 1.22; .ci/run does it)",
)
def test_the_demo_runs_through_nginx_and_survives_a_killed_backend(
    tmp_path: Path, fresh_pg_url: str
) -> None:
    nginx_port = free_port()
    public_url = f"http://127.0.0.1:{nginx_port}"
    settings = {"EXCHANGE_DATABASE_URL": fresh_pg_url}
    with ExitStack() as stack:
        # One data dir for both: they share the development issuer and ledger keys (as
        # replicas share their secrets) and the local evidence store (as they share a bucket).
        first = stack.enter_context(
            running_exchange(tmp_path / "var", public_url=public_url, **settings)
        )
        second = stack.enter_context(
            running_exchange(tmp_path / "var", public_url=public_url, **settings)
        )
        backends = [first.url.removeprefix("http://"), second.url.removeprefix("http://")]
        nginx_url = stack.enter_context(
            running_nginx(tmp_path / "nginx", port=nginx_port, backends=backends)
        ).url
        assert nginx_url == public_url

        demo = run_demo(nginx_url, tmp_path)
        assert demo.returncode == 0, f"{demo.stdout}\n{demo.stderr}"
        assert "demo passed: every step behaved as expected" in demo.stdout
        # Both backends took part.
        assert requests_served(first.log_text()) > 5
        assert requests_served(second.log_text()) > 5

        second.process.kill()
        second.process.wait()
        for _ in range(20):
            response = httpx.get(f"{nginx_url}/v1/ledger/key", timeout=10)
            assert response.status_code == 200
        again = run_demo(nginx_url, tmp_path)
        assert again.returncode == 0, f"{again.stdout}\n{again.stderr}"
        assert "demo passed: every step behaved as expected" in again.stdout


class Poller:
    """GETs through the load balancer, one after another, in a thread; counts the failures."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[int | str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # A fresh connection per request: when nginx reloads, its old worker closes idle
        # keep-alive connections, and a request racing that close never reaches nginx at all
        # (RFC 9112 §9.3.1: a client retries it on a new connection). That race is the
        # client's, not a dropped request; what this counts is whether a replica drops one.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=15, limits=limits) as http:
            while not self._stop.is_set():
                try:
                    self.answers.append(http.get(f"{self.url}/v1/ledger/key").status_code)
                except httpx.HTTPError as exc:
                    self.answers.append(type(exc).__name__)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.mark.skipif(
    NGINX is None,
    reason="nginx is not installed: `apt-get install -y nginx` (Debian's 1.22; .ci/run does it)",
)
def test_a_rolling_restart_as_documented_drops_no_request(
    tmp_path: Path, fresh_pg_url: str
) -> None:
    """docs/operations.md's rolling restart, step by step, with requests running throughout:
    mark the replica `down` and reload, SIGTERM it, start its successor, wait for /readyz,
    put the successor in and reload."""
    nginx_port = free_port()
    public_url = f"http://127.0.0.1:{nginx_port}"
    settings = {"EXCHANGE_DATABASE_URL": fresh_pg_url}

    def address(server: RunningExchange) -> str:
        return server.url.removeprefix("http://")

    with ExitStack() as stack:
        first = stack.enter_context(
            running_exchange(tmp_path / "var", public_url=public_url, **settings)
        )
        old = ExitStack()
        second = old.enter_context(
            running_exchange(tmp_path / "var", public_url=public_url, **settings)
        )
        nginx = stack.enter_context(
            running_nginx(
                tmp_path / "nginx", port=nginx_port, backends=[address(first), address(second)]
            )
        )
        with Poller(nginx.url) as poller:
            time.sleep(1)
            nginx.reconfigure([address(first), address(second)], down=frozenset({address(second)}))
            old.close()  # SIGTERM, then wait for the process to exit
            # A graceful stop: uvicorn finished its requests, then re-raised the SIGTERM.
            assert second.process.returncode == -signal.SIGTERM
            assert "Finished server process" in second.log_text()
            successor = stack.enter_context(
                running_exchange(tmp_path / "var", public_url=public_url, **settings)
            )
            assert httpx.get(f"{successor.url}/readyz", timeout=10).status_code == 200
            nginx.reconfigure([address(first), address(successor)])
            time.sleep(2)
        assert len(poller.answers) > 20
        assert set(poller.answers) == {200}, [a for a in poller.answers if a != 200][:5]
        assert requests_served(successor.log_text()) > 0
