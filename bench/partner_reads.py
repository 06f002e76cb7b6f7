"""The cost of recording partners' reads: GET package as the owner (not recorded) vs a partner
(one `package.viewed` append each), and a partner's fetch (one `bundle.fetched` each, naming
its grant), on the real server (SQLite + local store) over HTTP.

    python bench/partner_reads.py                  # 4 rounds of 40 sequential reads per caller
    python bench/partner_reads.py --rounds 8 --reads 80 --threads 4

Rounds alternate owner and partner so that both see the same machine load (this machine is
shared). Prints per-read p50 and mean latency, reads/s with --threads concurrent readers, the
ratio partner/owner, and how many entries the partner's reads appended.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import (
    TH_INVESTIGATOR,
    core_count,
    exchange_server,
    new_case,
    print_table,
    random_file,
    sha256_file,
    signed_single_file_package,
)

from exchange.client import ExchangeClient, file_url

PH_PARTNER = "ph-nbi-partner"
NAME = "small.bin"


def timed_reads(
    client: ExchangeClient, path: str, reads: int, threads: int
) -> tuple[list[float], float]:
    """Latencies (s) of `reads` GETs of `path` spread over `threads`, and the wall time."""

    def one(_: int) -> float:
        start = time.perf_counter()
        client.request("GET", path).read()
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        latencies = list(pool.map(one, range(reads)))
    return latencies, time.perf_counter() - start


def main() -> int:
    """Start a server, prepare one sealed package granted to PH, alternate the callers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--reads", type=int, default=40, help="reads per caller per round")
    parser.add_argument("--threads", type=int, default=1, help="concurrent readers")
    args = parser.parse_args()
    print(f"partner reads: owner vs partner, {core_count()}, {args.threads} reader thread(s)")
    with (
        tempfile.TemporaryDirectory(prefix="bench-reads-") as tmp,
        exchange_server(Path(tmp)) as server,
    ):
        owner = server.client(TH_INVESTIGATOR)
        case_id = new_case(owner)
        owner.add_grant(
            case_id,
            {
                "grantee_country": "PH",
                "scope": ["read"],
                "legal_basis": {"type": "mla", "reference": "MLA-BENCH-1"},
                "expires_at": (datetime.now(UTC) + timedelta(days=30)).isoformat(),
            },
        )
        source = random_file(Path(tmp) / NAME, 4096)
        manifest, jws = signed_single_file_package(source, name=NAME, sha256=sha256_file(source))
        package_id = str(manifest["package_id"])
        owner.register_package(case_id, manifest=manifest, jws=jws)
        owner.put_file(file_url(case_id, package_id, NAME), source)
        owner.seal_package(case_id, package_id)
        partner = server.client(PH_PARTNER)
        paths = {
            "GET package": f"/v1/cases/{case_id}/packages/{package_id}",
            "fetch 4 KiB": file_url(case_id, package_id, NAME),
        }
        results: dict[tuple[str, str], tuple[list[float], float]] = {}
        for _ in range(args.rounds):
            for what, path in paths.items():
                for caller, client in (("owner", owner), ("partner", partner)):
                    latencies, wall = timed_reads(client, path, args.reads, args.threads)
                    done, total = results.get((what, caller), ([], 0.0))
                    results[(what, caller)] = (done + latencies, total + wall)
    rows: list[list[object]] = []
    for what in paths:
        means = {}
        for caller in ("owner", "partner"):
            latencies, wall = results[(what, caller)]
            means[caller] = statistics.fmean(latencies)
            rows.append(
                [
                    what,
                    caller,
                    len(latencies),
                    statistics.median(latencies) * 1000,
                    means[caller] * 1000,
                    len(latencies) / wall,
                    "",
                ]
            )
        rows[-1][-1] = f"{means['partner'] / means['owner']:.2f}"
    print_table(["read", "caller", "n", "p50 ms", "mean ms", "reads/s", "partner/owner"], rows)
    appended = args.rounds * args.reads
    print(f"  the partner's reads appended {appended} package.viewed and {appended} bundle.fetched")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
