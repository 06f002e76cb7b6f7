"""Ledger appends arriving through the API, alone and under concurrent uploads.

    python bench/ledger_api.py                       # 2 rounds x (5 s alone, 5 s loaded), ~40 s
    python bench/ledger_api.py --seconds 10 --rounds 3 --uploaders 4 --appenders 8

Starts the real `exchange serve` (SQLite + local store, fresh data dir), seals a 4 KiB object,
then alternates two phases, --rounds times each so that drifting machine load hits both alike:

- alone: --appenders async clients loop on an authorized fetch of that object; every fetch
  appends `bundle.fetched` to the ledger in the request's transaction.
- loaded: the same, while --uploaders threads in a separate process loop on create package
  (--upload-size of fresh random bytes), PUT, seal (two more appends per upload).

Prints ledger appends/s counted twice (the signed checkpoint's tree size before and after, and
the clients' successful requests), p50/p99 latency of the appending requests, uploads/s and
MiB/s, the CPU (in cores) used by the server and by the bench's own clients, and the
loaded/alone ratios. Then checks the ledger: seq has no gaps, every fetch and seal has its
entry, and `exchange ledger verify` passes.

The clients share the machine with the server (and each other), so absolute rates are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx
import psutil
from common import (
    BenchServer,
    MiB,
    core_count,
    exchange_server,
    human,
    new_case,
    parse_size,
    print_table,
    random_file,
    sha256_file,
    signed_single_file_package,
)

from exchange.client import ExchangeClient, file_url
from exchange.settings import DEV_KEY_DIR
from exchange.signing import Signer
from tests.exchange_server import clean_env

OBJECT_BYTES = 4096
OBJECT_NAME = "small.bin"
UPLOAD_NAME = "upload.bin"
TH_INVESTIGATOR = "th-rtp-investigator"
READY_SECONDS = 60.0
WARM_SECONDS = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of this bench (bench/ledger.py adds them for `--api`)."""
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each phase")
    parser.add_argument("--rounds", type=int, default=2, help="alone/loaded phase pairs")
    parser.add_argument("--appenders", type=int, default=8, help="concurrent fetch clients")
    parser.add_argument("--uploaders", type=int, default=4, help="concurrent upload loops")
    parser.add_argument("--upload-size", type=parse_size, default=MiB, help="e.g. 1M")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="parent of the temporary data dir"
    )


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    seconds: float
    ledger_delta: int
    fetches: int
    latencies: list[float]
    uploads: int = 0
    upload_seconds: float = 0.0
    upload_bytes: int = 0
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    def row(self, round_no: int) -> list[object]:
        """One line of the per-phase table."""
        p50, p99 = percentiles(self.latencies)
        return [
            *(self.name, round_no, self.ledger_delta / self.seconds, self.fetches / self.seconds),
            *(p50, p99, _per(self.uploads, self.upload_seconds)),
            _per(self.upload_bytes / MiB, self.upload_seconds),
            f"{self.server_cpu:.2f}",
            f"{self.client_cpu:.2f}",
        ]


@dataclass
class Totals:
    """Every phase of one kind, pooled."""

    phases: list[Phase] = field(default_factory=list)

    def rate(self, count: str, per: str = "seconds") -> float:
        """Pooled per-second rate of one counter (`ledger_delta`, `fetches`, ...)."""
        return _per(
            sum(getattr(p, count) for p in self.phases), sum(getattr(p, per) for p in self.phases)
        )

    def latencies(self) -> list[float]:
        """Every appending request's latency, in seconds."""
        return [lat for p in self.phases for lat in p.latencies]


def _per(count: float, seconds: float) -> float:
    return count / seconds if seconds else 0.0


def percentiles(latencies: Sequence[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    if len(latencies) < 2:
        return (latencies[0] * 1000, latencies[0] * 1000) if latencies else (0.0, 0.0)
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49] * 1000, cuts[98] * 1000


def tree_size(url: str) -> int:
    """The signed checkpoint's tree size, through the API."""
    response = httpx.get(f"{url}/v1/ledger/checkpoint", timeout=60)
    response.raise_for_status()
    return int(response.json()["tree_size"])


def prepare(server: BenchServer, work: Path) -> tuple[str, str]:
    """A case and a sealed 4 KiB object in it; returns the case id and the object's URL."""
    client = server.client()
    case_id = new_case(client)
    source = random_file(work / OBJECT_NAME, OBJECT_BYTES)
    manifest, jws = signed_single_file_package(source, name=OBJECT_NAME, sha256=sha256_file(source))
    package_id = str(manifest["package_id"])
    client.register_package(case_id, manifest=manifest, jws=jws)
    client.put_file(file_url(case_id, package_id, OBJECT_NAME), source)
    client.seal_package(case_id, package_id)
    return case_id, server.url + file_url(case_id, package_id, OBJECT_NAME)


async def fetch_loop(url: str, token: str, clients: int, seconds: float) -> tuple[int, list[float]]:
    """`clients` loops fetching `url` for `seconds`: (successful fetches, their latencies)."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=60) as http:
        deadline = time.monotonic() + seconds

        async def loop() -> None:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                response = await http.get(url)
                if response.status_code != 200:
                    raise SystemExit(f"fetch answered {response.status_code}: {response.text}")
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(loop() for _ in range(clients)))
    return len(latencies), latencies


def upload_process(
    url: str,
    case_id: str,
    threads: int,
    size: int,
    seconds: float,
    work: str,
    ready: Event,
    go: Event,
    results: Queue[tuple[int, float, float]],
) -> None:
    """Child process: `threads` loops of register, PUT, seal for `seconds` after `go`.

    Puts (uploads sealed, seconds from `go` until the last one finished, CPU seconds this
    process used meanwhile) on `results`.
    """
    signer = Signer.from_pem((DEV_KEY_DIR / "TH-RTP.key.pem").read_bytes())
    clients = [
        ExchangeClient(
            base_url=url,
            client_id=TH_INVESTIGATOR,
            signer=signer,
            http=httpx.Client(timeout=httpx.Timeout(60.0, read=600.0)),
        )
        for _ in range(threads)
    ]
    for client in clients:
        client.login()
    counts = [0] * threads
    ready.set()
    go.wait(READY_SECONDS)
    start = time.monotonic()
    cpu_start = time.process_time()
    deadline = start + seconds

    def loop(n: int) -> None:
        client = clients[n]
        source = Path(work) / f"upload-{os.getpid()}-{n}.bin"
        while time.monotonic() < deadline:
            random_file(source, size)  # fresh bytes: a repeated digest would skip the write
            manifest, jws = signed_single_file_package(
                source, name=UPLOAD_NAME, sha256=sha256_file(source), signer=signer
            )
            package_id = str(manifest["package_id"])
            client.register_package(case_id, manifest=manifest, jws=jws)
            client.put_file(file_url(case_id, package_id, UPLOAD_NAME), source)
            client.seal_package(case_id, package_id)
            counts[n] += 1
        source.unlink(missing_ok=True)

    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put((sum(counts), time.monotonic() - start, time.process_time() - cpu_start))
    for client in clients:
        client.close()


def run_phase(
    server: BenchServer, args: argparse.Namespace, url: str, case_id: str, work: Path, loaded: bool
) -> Phase:
    """One phase: the fetch clients, with or without the upload process beside them."""
    token = server.token()
    context = multiprocessing.get_context("spawn")
    ready, go = context.Event(), context.Event()
    results: Queue[tuple[int, float, float]] = context.Queue()
    uploader = None
    if loaded:
        uploader = context.Process(
            target=upload_process,
            args=(
                *(server.url, case_id, args.uploaders, args.upload_size, args.seconds),
                *(str(work), ready, go, results),
            ),
        )
        uploader.start()
        deadline = time.monotonic() + READY_SECONDS
        while not ready.wait(0.2):
            if not uploader.is_alive() or time.monotonic() > deadline:
                uploader.kill()
                raise SystemExit(f"the upload process did not start ({uploader.exitcode})")
    process = psutil.Process(server.process.pid)
    size_before = tree_size(server.url)
    cpu_before = sum(process.cpu_times()[:2])
    own_cpu_before = time.process_time()
    start = time.monotonic()
    go.set()
    fetches, latencies = asyncio.run(fetch_loop(url, token, args.appenders, args.seconds))
    own_cpu = time.process_time() - own_cpu_before
    uploads, upload_seconds, upload_cpu = 0, 0.0, 0.0
    if uploader is not None:
        uploads, upload_seconds, upload_cpu = results.get(timeout=READY_SECONDS)
        uploader.join(timeout=READY_SECONDS)
        if uploader.exitcode != 0:
            raise SystemExit(f"the upload process failed ({uploader.exitcode})")
    seconds = time.monotonic() - start
    cpu = sum(process.cpu_times()[:2]) - cpu_before
    delta = tree_size(server.url) - size_before
    if delta != fetches + 2 * uploads:
        raise SystemExit(f"ledger grew by {delta}, expected {fetches} fetches + {uploads} x 2")
    return Phase(
        name="loaded" if loaded else "alone",
        seconds=seconds,
        ledger_delta=delta,
        fetches=fetches,
        latencies=latencies,
        uploads=uploads,
        upload_seconds=upload_seconds,
        upload_bytes=uploads * args.upload_size,
        server_cpu=cpu / seconds,
        client_cpu=(own_cpu + upload_cpu) / seconds,
    )


def check_ledger(server: BenchServer, fetches: int, sealed: int) -> list[list[object]]:
    """Rows of the closing check: gaps, entries per action, `exchange ledger verify`."""
    database = server.data_dir / "exchange.db"
    size = tree_size(server.url)
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as conn:
        seqs = [int(r[0]) for r in conn.execute("SELECT seq FROM ledger_entry ORDER BY seq")]
        actions = Counter(str(r[0]) for r in conn.execute("SELECT action FROM ledger_entry"))
    verify = subprocess.run(
        [sys.executable, "-m", "exchange", "ledger", "verify", "--db", f"sqlite:///{database}"],
        env=clean_env(EXCHANGE_DATA_DIR=str(server.data_dir)),
        cwd=server.data_dir.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    said = [" ".join(line.split()) for line in (verify.stdout + verify.stderr).splitlines()]
    verdict = ", ".join(said[:2]) if verify.returncode == 0 else (said or ["no output"])[-1]
    return [
        ["seq 0..n-1 without gaps", seqs == list(range(len(seqs))), f"{len(seqs)} entries"],
        ["checkpoint covers every entry", size == len(seqs), f"tree size {size}"],
        [
            "bundle.fetched = fetches answered",
            actions["bundle.fetched"] == fetches,
            f"{actions['bundle.fetched']} = {fetches}",
        ],
        [
            "package.sealed = packages sealed",
            actions["package.sealed"] == sealed,
            f"{actions['package.sealed']} = {sealed}",
        ],
        ["exchange ledger verify", verify.returncode == 0, verdict],
    ]


def run(args: argparse.Namespace) -> None:
    """Run the bench with parsed options and print its tables; SystemExit if a check fails."""
    print(
        f"ledger via API: {args.appenders} fetch clients appending bundle.fetched, alone and "
        f"beside {args.uploaders} upload loops of {human(args.upload_size)}; "
        f"{args.rounds} x {args.seconds:g} s per phase; SQLite + local store; {core_count()}; "
        f"load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-ledger-api-", dir=args.workdir) as tmp:
        work = Path(tmp)
        with exchange_server(work) as server:
            case_id, url = prepare(server, work)
            # Warm-up (connections, caches, first WAL growth); its fetches count in the check.
            warm, _ = asyncio.run(fetch_loop(url, server.token(), args.appenders, WARM_SECONDS))
            alone, loaded = Totals(), Totals()
            rows: list[list[object]] = []
            for round_no in range(1, args.rounds + 1):
                for is_loaded, totals in ((False, alone), (True, loaded)):
                    phase = run_phase(server, args, url, case_id, work, is_loaded)
                    totals.phases.append(phase)
                    rows.append(phase.row(round_no))
            print_table(
                [
                    *("phase", "round", "ledger appends/s", "fetch appends/s", "p50 ms"),
                    *("p99 ms", "uploads/s", "upload MiB/s", "server CPU", "client CPU"),
                ],
                rows,
            )
            print()
            a50, a99 = percentiles(alone.latencies())
            l50, l99 = percentiles(loaded.latencies())
            print_table(
                ["pooled", "alone", "loaded", "loaded/alone"],
                [
                    ["ledger appends/s (tree size)", *_pair(alone, loaded, "ledger_delta")],
                    ["fetch appends/s (clients)", *_pair(alone, loaded, "fetches")],
                    ["fetch p50 ms", a50, l50, l50 / a50],
                    ["fetch p99 ms", a99, l99, l99 / a99],
                    ["uploads/s", "-", loaded.rate("uploads", "upload_seconds"), "-"],
                    ["upload MiB/s", "-", loaded.rate("upload_bytes", "upload_seconds") / MiB, "-"],
                ],
            )
            print()
            fetches = warm + sum(p.fetches for p in alone.phases + loaded.phases)
            sealed = 1 + sum(p.uploads for p in loaded.phases)
            checks = check_ledger(server, fetches, sealed)
            print_table(["ledger check", "ok", "detail"], checks)
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if not all(check[1] for check in checks):
        raise SystemExit("ledger check failed")


def _pair(alone: Totals, loaded: Totals, count: str) -> list[float]:
    a, b = alone.rate(count), loaded.rate(count)
    return [a, b, b / a]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` (default: the command line) and run."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
