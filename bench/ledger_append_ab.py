"""Append cost of two checkouts of the exchange, same machine, same run, alternating.

    python bench/ledger_append_ab.py OLD_CHECKOUT NEW_CHECKOUT [--entries 200000] [--rounds 2]

Each round runs, in a fresh process per checkout, the batched append of bench/ledger.py's entry
shape (997 cases, --batch entries per transaction) up to --entries, then --single one-entry
transactions on top, and prints both rates and NEW/OLD cost ratios. Used to hold the ledger v2
case chain to its target (append cost <= 1.5x the v1 ledger's).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
from datetime import UTC, datetime
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from exchange.ledger.entry import Action, Actor, NewEntry
from exchange.ledger.signer import LogSigner
from exchange.signing import Signer
from exchange.storage import ledger_store as store
from exchange.storage.db import create_schema, make_engine, session_scope
n, batch, single, work = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
ACTOR = Actor(agency="TH-RTP", country="TH", subject="client:bench")
def new_entry(i):
    return NewEntry(actor=ACTOR, action=Action.BUNDLE_FETCHED, case_id=f"TH-2026-{i % 997:04d}",
        package_id="0b9e7c1a-3f4d-4e2b-9a6c-5d8e7f6a1b2c",
        details={"grant_id": f"g-{i}", "files": i % 50, "bytes": i * 4096})
log = LogSigner.from_signer(Signer.generate(), origin="bench.example/ledger")
engine = make_engine(f"sqlite:///{work / 'ledger.db'}")
create_schema(engine)
start = time.perf_counter()
for lo in range(0, n, batch):
    with session_scope(engine) as session:
        store.append_many(session, [new_entry(i) for i in range(lo, min(n, lo + batch))], log=log, now=NOW)
batched = n / (time.perf_counter() - start)
start = time.perf_counter()
for i in range(single):
    store.append_committed(engine, new_entry(n + i), log=log, now=NOW)
print(json.dumps({"batched": batched, "single": single / (time.perf_counter() - start)}))
"""


def run(checkout: Path, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as work:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(checkout), str(args.entries), str(args.batch),
             str(args.single), work],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--single", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        for name in ("old", "new"):
            results[name].append(run(getattr(args, name), args))
            print(f"  {name}: {results[name][-1]}", flush=True)
    for kind in ("batched", "single"):
        old = statistics.median(r[kind] for r in results["old"])
        new = statistics.median(r[kind] for r in results["new"])
        print(
            f"{kind:>8} append at {args.entries:,}: old {old:,.0f}/s, new {new:,.0f}/s, "
            f"cost new/old {old / new:.2f}x (target <= 1.5x)"
        )


if __name__ == "__main__":
    main()
