"""Custody ledger on SQLite against pymerkle's SQLite backend, same machine, same run.

    python bench/ledger.py                 # 100k entries (about a minute on 2 cores)
    python bench/ledger.py --sizes 100000,1000000   # adds 1M (several more minutes; opt-in)
    python bench/ledger.py --api           # appends through the API under concurrent uploads

For each size n it prints: batched append rate (append_many, --batch entries per transaction),
one-entry-per-transaction append rate (measured over --single appends on top of the n-entry
log and reported per second, i.e. extrapolated), mean inclusion-proof and consistency-proof
time at size n, full-verify time (from the database, and over rows already in memory), plain
SHA-256 over the same entry bytes, and pymerkle.SqliteTree's figures for the same entry bytes,
as ratios. Targets: batched append >= 5x pymerkle; inclusion proof at 1M <= 2 ms; full verify
(in memory) <= 3x plain SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import Engine  # noqa: E402

from exchange.ledger import tlog  # noqa: E402
from exchange.ledger.audit import MemoryLog, verify_log, verify_log_parallel  # noqa: E402
from exchange.ledger.entry import Action, Actor, NewEntry  # noqa: E402
from exchange.ledger.signer import LogSigner  # noqa: E402
from exchange.signing import Signer  # noqa: E402
from exchange.storage import ledger_store as store  # noqa: E402
from exchange.storage.db import create_schema, make_engine, session_scope  # noqa: E402

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
ACTOR = Actor(agency="TH-RTP", country="TH", subject="client:bench")


def new_entry(i: int) -> NewEntry:
    return NewEntry(
        actor=ACTOR,
        action=Action.BUNDLE_FETCHED,
        case_id=f"TH-2026-{i % 997:04d}",
        package_id="0b9e7c1a-3f4d-4e2b-9a6c-5d8e7f6a1b2c",
        details={"grant_id": f"g-{i}", "files": i % 50, "bytes": i * 4096},
    )


def row(label: str, ours: float, unit: str, theirs: float | None = None, better: str = "") -> None:
    line = f"  {label:<34} {ours:>12.3f} {unit:<10}"
    if theirs is not None:
        line += f" pymerkle {theirs:>12.3f} {unit:<10} ratio {ours / theirs if better == 'higher' else theirs / ours:>8.2f}x"
    print(line, flush=True)


def bench_ours(
    n: int, work: Path, *, batch: int, single: int, proofs: int, workers: int
) -> tuple[list[bytes], dict[str, float]]:
    log = LogSigner.from_signer(Signer.generate(), origin="bench.example/ledger")
    engine = make_engine(f"sqlite:///{work / f'ours-{n}.db'}")
    create_schema(engine)
    out: dict[str, float] = {}

    start = time.perf_counter()
    for lo in range(0, n, batch):
        with session_scope(engine) as session:
            store.append_many(
                session, [new_entry(i) for i in range(lo, min(n, lo + batch))], log=log, now=NOW
            )
    out["batched"] = n / (time.perf_counter() - start)

    rng = random.Random(1)
    with session_scope(engine) as session:
        seqs = [rng.randrange(n) for _ in range(proofs)]
        start = time.perf_counter()
        for seq in seqs:
            store.inclusion_proof(session, seq, n)
        out["inclusion_ms"] = (time.perf_counter() - start) / proofs * 1000
        olds = [rng.randrange(1, n) for _ in range(proofs)]
        start = time.perf_counter()
        for old in olds:
            store.consistency_proof(session, old, n)
        out["consistency_ms"] = (time.perf_counter() - start) / proofs * 1000

    verifier = log.verifier()
    for label, count in (("verify_db_s", 1), ("verify_db_par_s", workers)):
        start = time.perf_counter()
        with session_scope(engine) as session:
            store.verify_stored_log(session, verify_note=verifier.verify, workers=count)
        out[label] = time.perf_counter() - start
    # The same bytes read from the database and hashed once each: the read costs both sides.
    start = time.perf_counter()
    sha = hashlib.sha256
    with session_scope(engine) as session:
        for _, data, _ in store.iter_entries(session):
            sha(data).digest()
    out["sha_db_s"] = time.perf_counter() - start
    with session_scope(engine) as session:
        entries = list(store.iter_entries(session))
        hashes = list(store.iter_hashes(session))
        note = store.latest_checkpoint(session)
    start = time.perf_counter()
    verify_log(iter(entries), iter(hashes), checkpoint_note=note, verify_note=verifier.verify)
    out["verify_mem_s"] = time.perf_counter() - start
    start = time.perf_counter()
    verify_log_parallel(
        MemoryLog(entries, hashes),
        checkpoint_note=note,
        verify_note=verifier.verify,
        workers=workers,
    )
    out["verify_mem_par_s"] = time.perf_counter() - start
    datas = [d for _, d, _ in entries]
    start = time.perf_counter()
    for d in datas:
        sha(d).digest()
    out["sha_each_s"] = time.perf_counter() - start
    start = time.perf_counter()
    h = hashlib.sha256()
    for d in datas:
        h.update(d)
    h.digest()
    out["sha_stream_s"] = time.perf_counter() - start
    out["bytes"] = float(sum(len(d) for d in datas))
    out["insert_floor"] = insert_floor(engine, work / f"floor-{n}.db", batch=batch)
    del entries, hashes

    start = time.perf_counter()
    for i in range(single):
        store.append_committed(engine, new_entry(n + i), log=log, now=NOW)
    out["single"] = single / (time.perf_counter() - start)
    engine.dispose()
    return datas, out


def insert_floor(engine: Engine, path: Path, *, batch: int) -> float:
    """Entries/s for inserting the log's finished rows (entries and stored hashes) into empty
    copies of its tables, `batch` entries per transaction: no building, hashing or signing.

    No append that writes these rows can beat it; it bounds what "batched append" can reach.
    """
    target = make_engine(f"sqlite:///{path}")
    create_schema(target)
    with session_scope(engine) as session:
        connection = session.connection()
        rows = [
            tuple(r)
            for r in connection.exec_driver_sql(
                "SELECT seq, data, entry_hash, action, case_id, package_id, time"
                " FROM ledger_entry ORDER BY seq"
            )
        ]
        stored = [
            tuple(r)
            for r in connection.exec_driver_sql("SELECT idx, hash FROM ledger_hash ORDER BY idx")
        ]
    start = time.perf_counter()
    at = 0
    for lo in range(0, len(rows), batch):
        hi = min(len(rows), lo + batch)
        upto = tlog.stored_hash_count(hi)
        with session_scope(target) as session:
            driver = session.connection().connection.driver_connection
            assert driver is not None
            driver.executemany("INSERT INTO ledger_entry VALUES (?, ?, ?, ?, ?, ?, ?)", rows[lo:hi])
            driver.executemany("INSERT INTO ledger_hash VALUES (?, ?)", stored[at:upto])
        at = upto
    rate = len(rows) / (time.perf_counter() - start)
    target.dispose()
    return rate


def bench_pymerkle(datas: list[bytes], work: Path, *, single: int, proofs: int) -> dict[str, float]:
    from pymerkle import SqliteTree

    n = len(datas)
    out: dict[str, float] = {}
    tree = SqliteTree(str(work / f"pymerkle-{n}.db"))
    start = time.perf_counter()
    tree.append_entries(datas)
    out["batched"] = n / (time.perf_counter() - start)
    rng = random.Random(1)
    start = time.perf_counter()
    for _ in range(proofs):
        tree.prove_inclusion(rng.randrange(1, n + 1), n)
    out["inclusion_ms"] = (time.perf_counter() - start) / proofs * 1000
    start = time.perf_counter()
    for _ in range(proofs):
        tree.prove_consistency(rng.randrange(1, n), n)
    out["consistency_ms"] = (time.perf_counter() - start) / proofs * 1000
    start = time.perf_counter()
    for i in range(single):
        tree.append_entry(datas[i])
    out["single"] = single / (time.perf_counter() - start)
    tree.close()
    return out


def main() -> None:
    if "--api" in sys.argv[1:]:
        # Appends arriving through the API under concurrent uploads: bench/ledger_api.py.
        import ledger_api  # bench/ is on sys.path when this runs as a script

        sys.exit(ledger_api.main([a for a in sys.argv[1:] if a != "--api"]))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="100000", help="comma-separated entry counts")
    parser.add_argument(
        "--batch", type=int, default=10_000, help="entries per append_many transaction"
    )
    parser.add_argument("--single", type=int, default=500, help="one-entry transactions to time")
    parser.add_argument("--proofs", type=int, default=1000, help="random proofs to time (ours)")
    parser.add_argument(
        "--pymerkle-proofs", type=int, default=200, help="random proofs to time (pymerkle)"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--workers", type=int, default=len(os.sched_getaffinity(0)), help="verify processes"
    )
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, SQLite via SQLAlchemy (WAL, synchronous=FULL)")
    with tempfile.TemporaryDirectory(prefix="bench-ledger-", dir=args.workdir) as tmp:
        work = Path(tmp)
        for n in (int(s) for s in args.sizes.split(",")):
            print(f"\nn = {n:,} entries", flush=True)
            datas, ours = bench_ours(
                n,
                work,
                batch=args.batch,
                single=args.single,
                proofs=args.proofs,
                workers=args.workers,
            )
            theirs = bench_pymerkle(datas, work, single=args.single, proofs=args.pymerkle_proofs)
            print(f"  mean entry {ours['bytes'] / n:.0f} bytes")
            row("append, batched (entries/s)", ours["batched"], "/s", theirs["batched"], "higher")
            row("append, 1 per txn (entries/s)", ours["single"], "/s", theirs["single"], "higher")
            row(
                "inclusion proof (mean)",
                ours["inclusion_ms"],
                "ms",
                theirs["inclusion_ms"],
                "lower",
            )
            row(
                "consistency proof (mean)",
                ours["consistency_ms"],
                "ms",
                theirs["consistency_ms"],
                "lower",
            )
            row(
                "append floor: insert finished rows",
                ours["insert_floor"],
                "/s",
                theirs["batched"],
                "higher",
            )
            row("full verify, database, in order", ours["verify_db_s"], "s")
            row(f"full verify, database, {args.workers} procs", ours["verify_db_par_s"], "s")
            row("read from database + SHA-256 each", ours["sha_db_s"], "s")
            row("full verify, memory, in order", ours["verify_mem_s"], "s")
            row(f"full verify, memory, {args.workers} procs", ours["verify_mem_par_s"], "s")
            row("plain SHA-256, each entry", ours["sha_each_s"], "s")
            row("plain SHA-256, one stream", ours["sha_stream_s"], "s")
            print(
                f"  verify / plain SHA-256 (target <= 3x): "
                f"database {ours['verify_db_par_s'] / ours['sha_db_s']:.2f}x with {args.workers} procs "
                f"({ours['verify_db_s'] / ours['sha_db_s']:.2f}x in order); "
                f"memory {ours['verify_mem_par_s'] / ours['sha_each_s']:.2f}x with {args.workers} procs "
                f"({ours['verify_mem_s'] / ours['sha_each_s']:.2f}x in order); "
                f"memory vs one stream {ours['verify_mem_par_s'] / ours['sha_stream_s']:.2f}x"
            )
            print(
                f"  batched append / pymerkle append_entries: {ours['batched'] / theirs['batched']:.2f}x"
                f" (target >= 5x); the insert floor alone is "
                f"{ours['insert_floor'] / theirs['batched']:.2f}x"
            )
            del datas
    print(
        "\nratio column: how many times better ours is (rate ours/pymerkle; time pymerkle/ours)."
        "\n1-per-txn rates are measured over --single appends and extrapolated to a rate."
    )


if __name__ == "__main__":
    main()
