"""API throughput and latency: small-object fetch, GET case, GET package, vs bare FastAPI.

    python bench/api.py                           # 1, 8, 32 clients, 3 s per cell (about 1 min)
    python bench/api.py --seconds 10              # longer cells, steadier figures
    python bench/api.py --profile /tmp/api.txt    # also a pyinstrument profile of the server
    python bench/api.py --caller partner          # as PH-NBI under a grant, not as the owner
                                                  # (its package reads append package.viewed)
    python bench/api.py --grants 100000           # partner vs owner with 100,000 grants stored

The server is the real app (`create_app` on embedded defaults: SQLite + local store) in a
subprocess started by this script with `--child`, which adds one route, `GET /bench/raw/{name}`,
answering bytes held in memory: the bare-FastAPI baseline on the same process. The bench puts
there exactly the bytes the exchange answers (the 4 KiB object, the case document), then for
each concurrency runs httpx async clients, each looping on one URL with a valid token, for
--seconds. Prints requests/s, p50 and p99 latency and the ratio exchange/baseline (goal >= 0.5).

With --grants N the comparison is partner against owner instead: N cases with one grant each
are written straight into the node's database (90 % of them to PH, the partner's country, the
rest to VN), then the owner (TH-RTP) and the partner (PH-NBI, under its grant) read the same
case and fetch the same object in turn. Prints both rates and the partner's time per request
relative to the owner's (goal <= 1.2): every partner request also reads the case's grants for
its country, which must stay one index probe however many grants the country holds.

The clients run on the same machine as the server and take CPU from it; the ratio compares like
with like, the absolute rates are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from common import (
    TH_INVESTIGATOR,
    BenchServer,
    core_count,
    exchange_server,
    new_case,
    print_table,
    random_file,
    sha256_file,
    signed_single_file_package,
)
from fastapi import Request, Response

from exchange.client import file_url
from exchange.settings import Settings
from exchange.storage.db import make_engine
from tests.builders import insert_granted_cases

OBJECT_BYTES = 4096
NAME = "small.bin"
PH_PARTNER = "ph-nbi-partner"


def child(port: int, profile: Path | None) -> None:
    """The server process: the exchange app plus the baseline route, on uvicorn."""
    import anyio.to_thread
    import uvicorn

    from exchange.api.app import create_app

    app = create_app()
    held: dict[str, tuple[bytes, str]] = {}

    @app.put("/bench/raw/{name}", include_in_schema=False)
    async def hold(name: str, request: Request) -> Response:
        held[name] = (await request.body(), request.headers.get("content-type", ""))
        return Response(status_code=204)

    @app.get("/bench/raw/{name}", include_in_schema=False)
    async def raw(name: str) -> Response:
        body, media_type = held[name]
        return Response(body, media_type=media_type)

    if profile is None:
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
        return
    from pyinstrument import Profiler  # type: ignore[import-not-found, unused-ignore]

    profiler = Profiler(interval=0.0005, async_mode="disabled")

    async def inline(func, *args, **kwargs):  # type: ignore[no-untyped-def]
        return func(*args)

    @app.post("/bench/profile/start", include_in_schema=False)
    async def start_profile() -> Response:
        # pyinstrument samples one thread: from now on, what would go to the thread pool runs
        # on the event loop itself (uploads, which read the body from a thread, are done).
        anyio.to_thread.run_sync = inline  # type: ignore[assignment]
        profiler.start()
        return Response(status_code=204)

    @app.post("/bench/profile/stop", include_in_schema=False)
    async def stop_profile() -> Response:
        profiler.stop()
        profile.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
        # The raw session too, to re-render in full: `pyinstrument --load FILE.pyisession`.
        if profiler.last_session is not None:
            profiler.last_session.save(str(profile.with_suffix(".pyisession")))
        return Response(status_code=204)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


async def hammer_samples(
    url: str, token: str, clients: int, seconds: float
) -> tuple[list[float], float]:
    """(latencies, elapsed seconds) of `clients` loops GETting `url` for `seconds`."""
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(limits=limits, headers=headers, timeout=30) as http:
        await http.get(url)  # warm the connection pool
        deadline = time.perf_counter() + seconds

        async def loop() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await http.get(url)
                latencies.append(time.perf_counter() - start)
                if response.status_code != 200:
                    raise SystemExit(f"{url} answered {response.status_code}: {response.text}")

        start = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return latencies, elapsed


def figures(latencies: list[float], elapsed: float) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms)."""
    cuts = statistics.quantiles(latencies, n=100)
    return len(latencies) / elapsed, cuts[49] * 1000, cuts[98] * 1000


async def hammer(url: str, token: str, clients: int, seconds: float) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms) of `clients` loops GETting `url` for `seconds`."""
    return figures(*await hammer_samples(url, token, clients, seconds))


def alternate(
    url: str, tokens: dict[str, str], clients: int, seconds: float, rounds: int
) -> dict[str, tuple[float, float, float]]:
    """Each caller's figures over `rounds` turns of seconds/rounds, taken in turn, so that a
    burst of load from elsewhere on the machine falls on both alike."""
    samples: dict[str, list[float]] = {name: [] for name in tokens}
    elapsed = dict.fromkeys(tokens, 0.0)
    for _ in range(rounds):
        for name, token in tokens.items():
            latencies, spent = asyncio.run(hammer_samples(url, token, clients, seconds / rounds))
            samples[name] += latencies
            elapsed[name] += spent
    return {name: figures(samples[name], elapsed[name]) for name in tokens}


def prepare(server: BenchServer, work: Path, caller: str) -> tuple[str, dict[str, str]]:
    """Upload a sealed 4 KiB object; hold the same bytes as baselines. Returns token and URLs.

    `caller` "owner" reads as the TH investigator who uploaded; "partner" as PH-NBI under a
    grant to PH, so that every request also reads the case's grants.
    """
    client = server.client()
    case_id = new_case(client)
    if caller == "partner":
        expires = datetime.now(UTC) + timedelta(days=30)
        client.add_grant(
            case_id,
            {
                "grantee_country": "PH",
                "scope": ["read"],
                "legal_basis": {"type": "mla", "reference": "MLA-BENCH-1"},
                "expires_at": expires.isoformat(),
            },
        )
    source = random_file(work / NAME, OBJECT_BYTES)
    manifest, jws = signed_single_file_package(source, name=NAME, sha256=sha256_file(source))
    package_id = str(manifest["package_id"])
    client.register_package(case_id, manifest=manifest, jws=jws)
    client.put_file(file_url(case_id, package_id, NAME), source)
    client.seal_package(case_id, package_id)
    fetch = client.request("GET", file_url(case_id, package_id, NAME))
    case = client.request("GET", f"/v1/cases/{case_id}")
    package = client.request("GET", f"/v1/cases/{case_id}/packages/{package_id}")
    for name, response in (("object", fetch), ("case", case), ("package", package)):
        httpx.put(
            f"{server.url}/bench/raw/{name}",
            content=response.content,
            headers={"content-type": response.headers["content-type"]},
        ).raise_for_status()
    urls = {
        "small-object fetch": server.url + file_url(case_id, package_id, NAME),
        "small-object baseline": f"{server.url}/bench/raw/object",
        "GET /v1/cases/{id}": f"{server.url}/v1/cases/{case_id}",
        "case baseline": f"{server.url}/bench/raw/case",
        "GET package": f"{server.url}/v1/cases/{case_id}/packages/{package_id}",
        "package baseline": f"{server.url}/bench/raw/package",
    }
    return server.token(PH_PARTNER if caller == "partner" else TH_INVESTIGATOR), urls


def store_grants(server: BenchServer, count: int) -> float:
    """Write `count` cases with one grant each into the node's database; returns seconds."""
    start = time.perf_counter()
    engine = make_engine(Settings(data_dir=server.data_dir).resolved_database_url)
    now = datetime.now(UTC)
    to_ph = count * 9 // 10
    try:
        for country, n in (("PH", to_ph), ("VN", count - to_ph)):
            insert_granted_cases(
                engine,
                count=n,
                created_from=now - timedelta(days=1),
                grant_expires_at=now + timedelta(days=30),
                grantee_country=country,
            )
    finally:
        engine.dispose()
    return time.perf_counter() - start


def partner_vs_owner(server: BenchServer, work: Path, args: argparse.Namespace) -> int:
    """Owner and partner on the same case and object, with `args.grants` grants stored."""
    _, urls = prepare(server, work, "partner")
    seconds = store_grants(server, args.grants)
    print(f"  {args.grants} grants stored in {seconds:.1f} s", flush=True)
    tokens = {"owner": server.token(TH_INVESTIGATOR), "partner": server.token(PH_PARTNER)}
    rows: list[list[object]] = []
    ratios: list[float] = []
    for clients in [int(c) for c in args.clients.split(",")]:
        for name in ("small-object fetch", "GET /v1/cases/{id}"):
            taken = alternate(urls[name], tokens, clients, args.seconds, rounds=args.rounds)
            owner, partner = taken["owner"], taken["partner"]
            ratio = owner[0] / partner[0]  # time per request, partner over owner
            ratios.append(ratio)
            rows.append([name, clients, *owner, *partner, ratio])
            print(f"  .. {name} x{clients} done", flush=True)
    print_table(
        [
            "endpoint",
            "clients",
            "owner req/s",
            "owner p50",
            "owner p99",
            "partner req/s",
            "partner p50",
            "partner p99",
            "partner/owner",
        ],
        rows,
    )
    print(
        f"  goal: partner/owner time per request <= 1.2 at {args.grants} grants; "
        f"worst {max(ratios):.2f}"
    )
    return 0


def main() -> int:
    """Start the server, run every endpoint at every concurrency, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each cell")
    parser.add_argument("--clients", default="1,8,32", help="concurrencies")
    parser.add_argument("--profile", type=Path, help="write a pyinstrument profile of the server")
    parser.add_argument(
        "--caller",
        choices=["owner", "partner"],
        default="owner",
        help="the case's owner, or a partner under a grant",
    )
    parser.add_argument(
        "--grants",
        type=int,
        default=0,
        help="store this many grants, then compare partner with owner (e.g. 100000)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="with --grants: turns each caller takes per cell, alternating (--seconds split)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.port, args.profile)
        return 0
    concurrencies = [int(c) for c in args.clients.split(",")]
    argv = [sys.executable, __file__, "--child"]
    if args.profile is not None:
        argv += ["--profile", str(args.profile.resolve())]
        concurrencies = [1]
        print("profiling: thread-pool work runs inline, so only 1 client is meaningful")
    print(
        f"api: requests/s and latency, exchange vs bare FastAPI on the same process; {core_count()}"
        f"; caller: {args.caller}"
    )
    if args.grants > 0:
        print(
            f"api: partner (PH-NBI, under a grant) vs owner (TH-RTP), {args.grants} grants "
            f"stored; {core_count()}"
        )
        with (
            tempfile.TemporaryDirectory(prefix="bench-api-") as tmp,
            exchange_server(Path(tmp), argv=argv) as server,
        ):
            return partner_vs_owner(server, Path(tmp), args)
    rows: list[list[object]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-api-") as tmp,
        exchange_server(Path(tmp), argv=argv) as server,
    ):
        token, urls = prepare(server, Path(tmp), args.caller)
        if args.profile is not None:
            httpx.post(f"{server.url}/bench/profile/start").raise_for_status()
        pairs = [
            ("small-object fetch", "small-object baseline"),
            ("GET /v1/cases/{id}", "case baseline"),
            ("GET package", "package baseline"),
        ]
        for clients in concurrencies:
            for ours_name, base_name in pairs:
                ours = asyncio.run(hammer(urls[ours_name], token, clients, args.seconds))
                base = asyncio.run(hammer(urls[base_name], token, clients, args.seconds))
                rows.append(
                    [
                        ours_name,
                        clients,
                        ours[0],
                        ours[1],
                        ours[2],
                        base[0],
                        base[1],
                        base[2],
                        ours[0] / base[0],
                    ]
                )
                print(f"  .. {ours_name} x{clients} done", flush=True)
        rss = server.peak_rss_mib()
        if args.profile is not None:
            httpx.post(f"{server.url}/bench/profile/stop", timeout=120).raise_for_status()
    print_table(
        [
            "endpoint",
            "clients",
            "req/s",
            "p50 ms",
            "p99 ms",
            "base req/s",
            "base p50",
            "base p99",
            "ratio",
        ],
        rows,
    )
    print(f"  goal: ratio >= 0.5; server peak RSS {rss:.0f} MiB")
    if args.profile is not None:
        print(f"  profile written to {args.profile}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
