"""What DPoP (RFC 9449) costs per request: GET /v1/cases/{id} with a bearer vs a DPoP-bound token.

    python bench/dpop.py                     # 1 and 8 clients, 3 s per cell (about 20 s)
    python bench/dpop.py --seconds 10        # steadier figures

The server is `exchange serve` on embedded defaults (SQLite + local store, development, so both
kinds of token are accepted) in a subprocess. Each client loops on one URL: with the bearer
token as is, or with the bound token and a fresh proof per request (made by the client: one
Ed25519 signature), which the server checks (one Ed25519 verification) and records in the
replay table (one committed insert). Prints requests/s, p50/p99 latency and the ratio
DPoP/bearer. The clients share the machine with the server; the ratio compares like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
from common import TH_INVESTIGATOR, core_count, exchange_server, new_case, print_table

from exchange.client import DPOP_SCHEME
from exchange.dpop import make_proof
from exchange.signing import Signer


async def hammer(
    url: str,
    token: str,
    clients: int,
    seconds: float,
    *,
    dpop: Signer | None = None,
    first_nonce: str | None = None,
) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) of `clients` loops GETting `url` for `seconds`; with `dpop`
    (the token's key) a fresh proof per request."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    scheme = "Bearer" if dpop is None else "DPoP"
    nonce: list[str | None] = [first_nonce]
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:

        def headers() -> dict[str, str]:
            result = {"Authorization": f"{scheme} {token}"}
            if dpop is not None:
                result["DPoP"] = make_proof(
                    dpop,
                    htm="GET",
                    htu=url,
                    now=datetime.now(UTC),
                    access_token=token,
                    nonce=nonce[0],
                )
            return result

        await http.get(url, headers=headers())  # warm the connection pool
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await http.get(url, headers=headers())
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    raise SystemExit(f"{url} answered {response.status_code}: {response.text}")
                nonce[0] = response.headers.get("dpop-nonce", nonce[0])

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    cuts = statistics.quantiles(latencies, n=100)
    return len(latencies) / elapsed, cuts[49] * 1000, cuts[98] * 1000


def main() -> int:
    """Start the server, run both token kinds at each concurrency, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each cell")
    parser.add_argument("--clients", default="1,8", help="concurrencies")
    args = parser.parse_args()
    print(f"dpop: GET /v1/cases/{{id}}, bearer vs DPoP-bound token; {core_count()}")
    rows: list[list[object]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-dpop-") as tmp,
        exchange_server(Path(tmp)) as server,
    ):
        bound = server.client(TH_INVESTIGATOR)
        url = f"{server.url}/v1/cases/{new_case(bound)}"
        assert bound.token_type == DPOP_SCHEME
        bound_token = bound.login()["access_token"]
        nonce = bound._nonce  # the token answer's DPoP-Nonce
        bearer_token = server.token(TH_INVESTIGATOR)
        for clients in (int(c) for c in args.clients.split(",")):
            plain = asyncio.run(hammer(url, bearer_token, clients, args.seconds, dpop=None))
            proven = asyncio.run(
                hammer(
                    url,
                    bound_token,
                    clients,
                    args.seconds,
                    dpop=bound.dpop_signer,
                    first_nonce=nonce,
                )
            )
            rows.append([clients, *plain, *proven, proven[0] / plain[0]])
            print(f"  .. x{clients} done", flush=True)
    print_table(
        [
            "clients",
            "bearer req/s",
            "p50 ms",
            "p99 ms",
            "DPoP req/s",
            "p50 ms",
            "p99 ms",
            "ratio",
        ],
        rows,
    )
    print("  DPoP adds per request: a proof the client signs, the server verifies and records")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
