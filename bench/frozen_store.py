"""How long requests wait on a frozen object store (moto SIGSTOPped), with the node's settings.

    python bench/frozen_store.py                          # the defaults (about 1 min)
    python bench/frozen_store.py --read-timeout 5 --retries 0

Starts moto's S3 server and `exchange serve` on it, stores one sealed file, registers a second
package, then SIGSTOPs moto (it keeps its port: the kernel still accepts connections, nothing
answers) and times one request of each kind: /livez, /readyz, /healthz, an upload and a fetch.
Then it SIGCONTs moto and times /readyz again. Prints status, problem type and seconds per
request, next to the bound the settings give one S3 call: (connect + read) x (retries + 1).
Before issue 10 an upload was held 100 s, a fetch 60 s and /healthz for the whole freeze.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from common import (
    exchange_server,
    new_case,
    print_table,
    random_file,
    sha256_file,
    signed_single_file_package,
)

from exchange.client import file_url
from exchange.settings import Settings
from tests.s3server import S3Server

NAME = "frozen.bin"
SIZE = 1024 * 1024


def _timed(call: Callable[[], httpx.Response]) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        response = call()
    except httpx.TimeoutException:
        return 0, "client timeout", time.monotonic() - started
    seconds = time.monotonic() - started
    kind = ""
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        kind = str(response.json().get("code", ""))
    return response.status_code, kind, seconds


def main() -> None:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect-timeout", type=float, default=defaults.s3_connect_timeout)
    parser.add_argument("--read-timeout", type=float, default=defaults.s3_read_timeout)
    parser.add_argument("--retries", type=int, default=defaults.s3_retries)
    parser.add_argument("--health-timeout", type=float, default=defaults.health_timeout)
    args = parser.parse_args()
    env = {
        "EXCHANGE_S3_CONNECT_TIMEOUT": str(args.connect_timeout),
        "EXCHANGE_S3_READ_TIMEOUT": str(args.read_timeout),
        "EXCHANGE_S3_RETRIES": str(args.retries),
        "EXCHANGE_HEALTH_TIMEOUT": str(args.health_timeout),
    }
    call_bound = (args.connect_timeout + args.read_timeout) * (args.retries + 1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with S3Server(log_dir=work) as s3, exchange_server(work, s3=s3, env=env) as server:
            client = server.client()
            case_id = new_case(client)
            kept = random_file(work / "kept.bin", SIZE)
            manifest, jws = signed_single_file_package(kept, name=NAME, sha256=sha256_file(kept))
            kept_id = str(manifest["package_id"])
            client.register_package(case_id, manifest=manifest, jws=jws)
            client.put_stream(file_url(case_id, kept_id, NAME), lambda: kept.open("rb"), SIZE)
            client.seal_package(case_id, kept_id)
            fresh = random_file(work / "fresh.bin", SIZE)
            manifest, jws = signed_single_file_package(fresh, name=NAME, sha256=sha256_file(fresh))
            fresh_id = str(manifest["package_id"])
            client.register_package(case_id, manifest=manifest, jws=jws)
            body = fresh.read_bytes()
            auth = {"Authorization": f"Bearer {server.token()}"}
            http = httpx.Client(base_url=server.url, headers=auth, timeout=300)
            rows: list[list[object]] = []
            s3.freeze()
            try:
                for label, call in (
                    ("GET /livez", lambda: http.get("/livez")),
                    ("GET /readyz", lambda: http.get("/readyz")),
                    ("GET /healthz", lambda: http.get("/healthz")),
                    (
                        "PUT file (1 MiB)",
                        lambda: http.put(file_url(case_id, fresh_id, NAME), content=body),
                    ),
                    ("GET file (1 MiB)", lambda: http.get(file_url(case_id, kept_id, NAME))),
                ):
                    status, kind, seconds = _timed(call)
                    rows.append([label, "frozen", status, kind, f"{seconds:.2f}"])
            finally:
                s3.thaw()
            status, kind, seconds = _timed(lambda: http.get("/readyz"))
            rows.append(["GET /readyz", "thawed", status, kind, f"{seconds:.2f}"])
            http.close()
    print(
        f"S3 connect {args.connect_timeout} s, read {args.read_timeout} s, "
        f"{args.retries} retries: one S3 call gives up within {call_bound:.1f} s; "
        f"health deadline {args.health_timeout} s"
    )
    print_table(["request", "store", "status", "problem", "seconds"], rows)


if __name__ == "__main__":
    main()
