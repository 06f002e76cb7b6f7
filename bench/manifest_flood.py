"""Worst-case manifests against a real `exchange serve`: is /healthz still answered promptly?

Sends four package registrations of 100 000 file entries (~15 MB of JSON each, over the
default limit of 10 000 files) in parallel, `--rounds` times, while one client polls /healthz
back to back. Prints the /healthz latency before and during the flood (target: p99 < 100 ms)
and how long each refusal took. Server on 127.0.0.1 (SQLite + local files), a few seconds.

    .venv/bin/python bench/manifest_flood.py [--rounds 3] [--entries 100000] [--parallel 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from common import (
    MiB,
    exchange_server,
    new_case,
    print_table,
    random_file,
    sha256_file,
    signed_single_file_package,
)

TARGET_P99_MS = 100.0


def worst_case_body(work: Path, entries: int) -> bytes:
    """A registration body whose signed manifest was grown to `entries` file entries."""
    source = random_file(work / "one.bin", 1024)
    manifest, jws = signed_single_file_package(source, name="f/0.bin", sha256=sha256_file(source))
    first = manifest["files"][0]
    manifest["files"] = [dict(first, path=f"f/{i:06d}.bin") for i in range(entries)]
    return json.dumps({"manifest": manifest, "jws": jws}).encode()


def _poll(url: str, stop: Event, out: Connection) -> None:
    samples: list[float] = []
    failures = 0
    with httpx.Client(timeout=60) as http:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                ok = http.get(url).status_code == 200
            except httpx.HTTPError:
                ok = False
            if not samples:
                out.send("ready")
            samples.append((time.perf_counter() - started) * 1000)
            failures += not ok
            time.sleep(0.01)
    out.send((samples[1:], failures))  # the first one paid for the connection


class HealthPoller:
    """Polls GET /healthz back to back in a process of its own (so the senders' threads do not
    delay it in this one), keeping each latency in ms."""

    def __init__(self, url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=_poll, args=(f"{url}/healthz", self._stop, send))
        self.samples: list[float] = []
        self.failures = 0

    def start(self) -> HealthPoller:
        """Start polling; returns once the first request was answered."""
        self._process.start()
        assert self._receive.recv() == "ready"  # the spawned interpreter is up
        return self

    def stop(self) -> list[float]:
        """Stop and return the latencies."""
        self._stop.set()
        self.samples, self.failures = self._receive.recv()
        self._process.join(timeout=60)
        return self.samples


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, int(q) - 1))]


Refusal = tuple[int, int, float, str]


def post(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    """POST with http.client: one sendall of the prepared body, so the sending threads cost
    this process next to no CPU and the figures measure the server, not the client."""
    connection = http.client.HTTPConnection(host, port, timeout=300)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    return response.status, str(answer.get("detail", ""))


def flood(
    url: str, path: str, body: bytes, headers: dict[str, str], *, parallel: int, rounds: int
) -> tuple[list[float], int, list[Refusal], float]:
    """`rounds` of `parallel` POSTs of `body` while /healthz is polled: latencies, failures,
    (round, status, seconds, detail) per POST, and the flood's duration."""
    parsed = urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    refusals: list[Refusal] = []

    def send(round_no: int) -> None:
        started = time.perf_counter()
        status, detail = post(host, port, path, body, headers)
        refusals.append((round_no, status, time.perf_counter() - started, detail))

    poller = HealthPoller(url).start()
    started = time.perf_counter()
    for round_no in range(1, rounds + 1):
        senders = [threading.Thread(target=send, args=(round_no,)) for _ in range(parallel)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
    lasted = time.perf_counter() - started
    return poller.stop(), poller.failures, refusals, lasted


def latency_row(name: str, samples: list[float], failures: int) -> list[object]:
    """One row of the /healthz table."""
    return [
        name,
        len(samples),
        f"{percentile(samples, 50):.1f}",
        f"{percentile(samples, 99):.1f}",
        f"{max(samples):.1f}",
        failures,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    load = os.getloadavg()  # the machine is shared: its load shows in every latency below
    with tempfile.TemporaryDirectory(prefix="bench-manifest-") as tmp:
        work = Path(tmp)
        body = worst_case_body(work, args.entries)
        with exchange_server(work) as server:
            case_id = new_case(server.client())
            headers = {
                "Authorization": f"Bearer {server.token()}",
                "Content-Type": "application/json",
            }
            baseline = HealthPoller(server.url).start()
            time.sleep(1.0)
            quiet = baseline.stop()
            during, failures, refusals, lasted = flood(
                server.url, f"/v1/cases/{case_id}/packages", body, headers,
                parallel=args.parallel, rounds=args.rounds,
            )  # fmt: skip
            # Control: the same bodies to POST /v1/cases, refused from their Content-Length by
            # that route's 1 MiB cap without being read: what the transfer alone costs here.
            control, control_failures, control_refusals, _ = flood(
                server.url, "/v1/cases", body, headers, parallel=args.parallel, rounds=args.rounds
            )

    print(f"load average before the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}, "
          f"{os.cpu_count()} cores")  # fmt: skip
    print(
        f"{args.parallel} registrations in parallel x {args.rounds} rounds, "
        f"{args.entries} entries, {len(body) / MiB:.1f} MiB each; flood lasted {lasted:.2f} s"
    )
    print_table(
        ["/healthz", "samples", "p50 ms", "p99 ms", "max ms", "failures"],
        [
            latency_row("quiet", quiet, baseline.failures),
            latency_row("during the manifest flood", during, failures),
            latency_row("control: same bodies, never read", control, control_failures),
        ],
    )
    print_table(
        ["round", "status", "refused in s", "detail"],
        [[r, s, f"{t:.2f}", d[:70]] for r, s, t, d in sorted(refusals)],
    )
    p99 = percentile(during, 99)
    print(f"/healthz p99 during the flood: {p99:.1f} ms; target < {TARGET_P99_MS:.0f} ms "
          f"(ratio {p99 / TARGET_P99_MS:.2f}); control p99 {percentile(control, 99):.1f} ms")  # fmt: skip
    statuses = {s for _, s, _, _ in refusals + control_refusals}
    if statuses != {413}:
        print(f"unexpected answers: {sorted(statuses)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
