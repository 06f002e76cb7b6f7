"""Shared harness of the exchange benchmarks (imported by upload.py, download.py and api.py).

It starts the real exchange as a subprocess on a free port with a temporary data dir
(optionally on moto's S3 server), samples that process's resident memory, logs in the dev
clients, and builds signed single-file packages without copying the file. Run on its own it
only says what it is, so `make bench` (which runs every bench/*.py) passes over it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import psutil  # noqa: E402
from fastapi import FastAPI, Request, Response  # noqa: E402
from fastapi.responses import StreamingResponse  # noqa: E402

from exchange.client import ExchangeClient  # noqa: E402
from exchange.package import make_manifest, media_type_of, sign_manifest  # noqa: E402
from exchange.settings import DEV_KEY_DIR  # noqa: E402
from exchange.signing import Signer  # noqa: E402
from tests.exchange_server import clean_env, free_port  # noqa: E402
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
CHUNK = MiB
STARTUP_SECONDS = 90.0
TH_INVESTIGATOR = "th-rtp-investigator"
S3_BUCKET = "evidence"


def parse_size(text: str) -> int:
    """'64M', '1G', '4096' (bytes) -> bytes."""
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    factor = {"K": 1024, "M": MiB, "G": GiB}.get(text[-1:], 1)
    number = text[:-1] if factor != 1 else text
    return int(float(number) * factor)


def human(size: int) -> str:
    """1073741824 -> '1 GiB'."""
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def random_file(path: Path, size: int) -> Path:
    """A file of `size` random bytes (incompressible, like disk images)."""
    with path.open("wb") as f:
        left = size
        while left:
            n = min(CHUNK * 8, left)
            f.write(os.urandom(n))
            left -= n
    return path


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def drop_cached(path: Path) -> None:
    """Evict a file's clean pages from the page cache, so that the next read starts cold.

    Both sides of a local comparison start so: on a VM whose fresh page-cache pages are slow to
    come by, whoever reads a file second would otherwise get it from memory (docs/performance.md).
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


TRANSFER_COLUMNS = [
    *("backend", "size", "exchange MiB/s", "raw MiB/s", "ratio"),
    *("bare HTTP MiB/s", "exchange/HTTP", "server peak RSS"),
]


def transfer_row(
    backend: str, size: int, ours: float, raw: float, http_only: float, rss: float
) -> list[object]:
    """One row of the upload/download table from the seconds each path took."""
    mib = size / MiB
    return [
        *(backend, human(size), mib / ours, mib / raw, raw / ours),
        *(mib / http_only, http_only / ours, f"{rss:.0f} MiB"),
    ]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain aligned table on stdout."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        aligned = (
            v.ljust(w) if n == 0 or i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(row, widths, strict=True))
        )
        print("  " + "  ".join(aligned))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    sys.stdout.flush()


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


class RssSampler:
    """Peak resident memory of one process: /proc VmHWM where Linux has it, else psutil samples."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._peak = max(self._peak, self._process.memory_info().rss)
            except psutil.Error:
                return

    def peak_bytes(self) -> int:
        """The highest RSS seen so far (the kernel's high-water mark when readable)."""
        try:
            status = Path(f"/proc/{self._process.pid}/status").read_text()
        except OSError:
            return self._peak
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return max(self._peak, int(line.split()[1]) * 1024)
        return self._peak

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(timeout=1)


@dataclass
class BenchServer:
    """One exchange server subprocess and what the bench needs of it."""

    url: str
    data_dir: Path
    log: Path
    process: subprocess.Popen[bytes]
    rss: RssSampler
    s3: S3Server | None = None
    clients: list[ExchangeClient] = field(default_factory=list)

    def peak_rss_mib(self) -> float:
        """Peak RSS of the server process so far, MiB."""
        return self.rss.peak_bytes() / MiB

    def client(self, client_id: str = TH_INVESTIGATOR, *, dpop: bool = True) -> ExchangeClient:
        """A dev client (committed dev key of its agency), logged in (DPoP-bound by default)."""
        agency = "-".join(client_id.split("-")[:2]).upper()
        signer = Signer.from_pem((DEV_KEY_DIR / f"{agency}.key.pem").read_bytes())
        client = ExchangeClient(
            base_url=self.url,
            client_id=client_id,
            signer=signer,
            http=httpx.Client(timeout=httpx.Timeout(60.0, read=600.0)),
            dpop=dpop,
        )
        client.login()
        self.clients.append(client)
        return client

    def token(self, client_id: str = TH_INVESTIGATOR) -> str:
        """A fresh bearer access token of a dev client (the bench servers run in development)."""
        body = self.client(client_id, dpop=False).login()
        token: str = body["access_token"]
        return token


def s3_env(s3: S3Server, bucket: str = S3_BUCKET) -> dict[str, str]:
    """EXCHANGE_* settings for the S3 backend on a moto server."""
    return {
        "EXCHANGE_STORAGE": "s3",
        "EXCHANGE_S3_ENDPOINT": s3.endpoint,
        "EXCHANGE_S3_ACCESS_KEY": ACCESS_KEY,
        "EXCHANGE_S3_SECRET_KEY": SECRET_KEY,
        "EXCHANGE_S3_BUCKET": bucket,
        "EXCHANGE_S3_SECURE": "false",
    }


@contextmanager
def exchange_server(
    work: Path,
    *,
    s3: S3Server | None = None,
    argv: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[BenchServer]:
    """`exchange serve` (or `argv` + `--port N`) on a free port, data in `work`/data."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = work / f"data-{port}"
    data_dir.mkdir(parents=True)
    settings = {"EXCHANGE_DATA_DIR": str(data_dir), "EXCHANGE_PUBLIC_URL": url, **(env or {})}
    if s3 is not None:
        settings.update(s3_env(s3))
    command = list(argv or [sys.executable, "-m", "exchange", "serve", "--host", "127.0.0.1"])
    command += ["--port", str(port)]
    log = work / f"server-{port}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=clean_env(**settings),
            cwd=work,
        )
    rss = RssSampler(process.pid)
    server = BenchServer(url=url, data_dir=data_dir, log=log, process=process, rss=rss, s3=s3)
    try:
        _wait_healthy(server)
        yield server
    finally:
        for client in server.clients:
            client.close()
        rss.stop()
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(server: BenchServer) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited:\n{server.log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server did not start:\n{server.log.read_text(errors='replace')}")
        time.sleep(0.2)


def signed_single_file_package(
    file: Path, *, name: str, sha256: str, signer: Signer | None = None
) -> tuple[dict[str, Any], str]:
    """Manifest document and detached JWS of a TH-RTP package holding `file` as `name`."""
    signer = signer or Signer.from_pem((DEV_KEY_DIR / "TH-RTP.key.pem").read_bytes())
    manifest = make_manifest(
        files=[
            {
                "path": name,
                "size": file.stat().st_size,
                "sha256": sha256,
                "media_type": media_type_of(name),
            }
        ],
        agency="TH-RTP",
        country="TH",
        case_ref="TH-BENCH-2026-0001",
        legal_basis={"type": "warrant", "reference": "W-BENCH-1", "issued_by": "Bench Court"},
        collection={
            "collected_by": {"name": "Bench", "role": "examiner"},
            "collected_at": "2026-11-20T09:30:00+07:00",
            "location": "bench",
            "method": "physical image",
            "tool": {"name": "dd", "version": "9.4"},
            "source_device": {"description": "bench disk"},
            "seal_numbers": ["BENCH-1"],
        },
        created_at=datetime.now(UTC),
        package_id=str(uuid.uuid4()),
    )
    jws = sign_manifest(manifest, signer)
    return manifest.to_wire(), jws


def new_case(client: ExchangeClient) -> str:
    """Open a case and return its id."""
    case = client.create_case(
        case_ref=f"TH-BENCH-{uuid.uuid4().hex[:8]}", title="bench", classification="restricted"
    )
    return str(case.get("case_id") or case["id"])


def core_count() -> str:
    """'2 logical cores' for the tables."""
    return f"{os.cpu_count()} logical cores, {psutil.cpu_count(logical=False)} physical"


def bare_http_argv() -> list[str]:
    """Command (without --port) of the bare-HTTP comparison server: see `serve_bare_http`."""
    return [sys.executable, str(Path(__file__).resolve()), "--bare-http"]


def serve_bare_http(port: int) -> None:
    """uvicorn + FastAPI with no storage or database: what HTTP alone costs on this machine.

    PUT /sink streams the body and hashes it (as the exchange does); GET /source/{size} streams
    `size` bytes from a sync generator through `StreamingResponse` (as the exchange does).
    """
    import uvicorn

    app = FastAPI()
    block = os.urandom(CHUNK)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.put("/sink")
    async def sink(request: Request) -> Response:
        digest = hashlib.sha256()
        async for chunk in request.stream():
            digest.update(chunk)
        return Response(digest.hexdigest())

    @app.get("/source/{size}")
    def source(size: int) -> StreamingResponse:
        def chunks() -> Iterator[bytes]:
            left = size
            while left:
                n = min(CHUNK, left)
                yield block[:n]
                left -= n

        headers = {"Content-Length": str(size)}
        return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--bare-http" and sys.argv[2] == "--port":
        serve_bare_http(int(sys.argv[3]))
    else:
        print("bench/common.py: the shared harness of the exchange benchmarks; nothing to measure.")
