"""Custody bundle v2: export, verify and size for a large case in a large ledger.

    python bench/custody.py                          # 10,000-entry case in 1,000,000 entries
    python bench/custody.py --entries 200000 --case-entries 2000   # a quick look

Builds a SQLite ledger of --entries entries (batched appends, as bench/ledger.py does) in which
one case holds --case-entries entries spread evenly through the log and the rest belong to 997
other cases. Then, --rounds times each, for the owner's view (every entry disclosed) and a
partner's view (the partner's own fetches disclosed, the rest redacted stubs):

- export: recording the `custody.exported` entry plus building the bundle in a read-only
  transaction, as GET /v1/cases/{id}/custody does (targets: <= 0.3 s);
- bundle size as served JSON (target <= 5 MB);
- verify: `exchange.custody.verify_bundle` over the parsed bundle (target <= 1 s).

It also prints the batched append rate while building (bench/ledger_append_ab.py compares the
append cost with the v1 ledger's; target <= 1.5x), and the latency of one-entry appends (the
write every fetch makes) alone and while another process exports the large case back to back:
writers must never wait for an export.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import Engine  # noqa: E402

from exchange.custody import verify_bundle  # noqa: E402
from exchange.custody.disclosure import Audience  # noqa: E402
from exchange.ledger.entry import Action, Actor, NewEntry  # noqa: E402
from exchange.ledger.signer import LogSigner  # noqa: E402
from exchange.service.custody import Export, build_bundle  # noqa: E402
from exchange.signing import Signer  # noqa: E402
from exchange.storage import ledger_store as store  # noqa: E402
from exchange.storage.db import create_schema, make_engine, session_scope  # noqa: E402

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
OWNER = Actor(agency="TH-RTP", country="TH", subject="client:th-investigator")
PARTNERS = (
    Actor(agency="PH-NBI", country="PH", subject="client:ph-partner"),
    Actor(agency="VN-MPS", country="VN", subject="client:vn-partner"),
)
CASE = "TH-2026-BENCH"
PACKAGE = "0b9e7c1a-3f4d-4e2b-9a6c-5d8e7f6a1b2c"
ORIGIN = "bench.example/ledger"


def case_entry(k: int) -> NewEntry:
    if k == 0:
        return NewEntry(OWNER, Action.CASE_OPENED, CASE, None, {"case_ref": "R-1", "title": "T"})
    partner = PARTNERS[k % 2]
    return NewEntry(
        partner,
        Action.BUNDLE_FETCHED,
        CASE,
        PACKAGE,
        {"files": [f"chats/export-{k % 40}.txt"], "file_count": 1, "bytes": 4096 + k},
    )


def other_entry(i: int) -> NewEntry:
    return NewEntry(
        OWNER,
        Action.BUNDLE_FETCHED,
        f"TH-2026-{i % 997:04d}",
        PACKAGE,
        {"files": [f"f-{i % 50}.bin"], "file_count": 1, "bytes": i * 4096},
    )


def export(engine: Engine, log: LogSigner, audience: Audience) -> bytes:
    """Record an export and build its bundle, as the service does (two transactions)."""
    appended = store.append_committed(
        engine,
        NewEntry(
            OWNER if audience.owner else PARTNERS[0],
            Action.CUSTODY_EXPORTED,
            CASE,
            None,
            {"format": "exchange.custody-bundle/v2", "audience": audience.view},
        ),
        log=log,
        now=NOW,
    )
    done = Export(CASE, "TH-RTP", audience, appended.seq, appended.checkpoint, NOW)
    with session_scope(engine, read_only=True) as session:
        return build_bundle(session, export=done, origin=log.origin)


def export_loop(db: str, key: str, seconds: float) -> None:
    """Child process: export the large case back to back for `seconds`."""
    log = LogSigner.from_signer(Signer.from_pem(Path(key).read_bytes()), origin=ORIGIN)
    engine = make_engine(f"sqlite:///{db}")
    end = time.monotonic() + seconds
    count = 0
    while time.monotonic() < end:
        export(engine, log, Audience("TH-RTP", "TH", owner=True))
        count += 1
    print(count)


def append_latencies(engine: Engine, log: LogSigner, count: int) -> list[float]:
    out = []
    for i in range(count):
        start = time.perf_counter()
        store.append_committed(engine, other_entry(i), log=log, now=NOW)
        out.append(time.perf_counter() - start)
    return out


def percentile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--export-loop":
        export_loop(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--case-entries", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--appends", type=int, default=300, help="one-entry appends to time")
    args = parser.parse_args()
    n, k = args.entries, args.case_entries
    every = n // k
    signer = Signer.generate()
    log = LogSigner.from_signer(signer, origin=ORIGIN)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'ledger.db'}")
        create_schema(engine)
        start = time.perf_counter()
        made = 0
        for lo in range(0, n - 1, args.batch):
            news = []
            for i in range(lo, min(n - 1, lo + args.batch)):
                news.append(case_entry(made) if i % every == 0 and made < k - 1 else other_entry(i))
                made += i % every == 0 and made < k - 1
            with session_scope(engine) as session:
                store.append_many(session, news, log=log, now=NOW)
        rate = (n - 1) / (time.perf_counter() - start)
        print(f"ledger: {n:,} entries, case {CASE} with {k:,} (every {every}th), SQLite")
        print(f"  batched append (entry v2, case chain)  {rate:>10,.0f} entries/s")
        for audience in (
            Audience("TH-RTP", "TH", owner=True),
            Audience("PH-NBI", "PH", owner=False),
        ):
            exports, verifies, sizes = [], [], []
            for _ in range(args.rounds):
                start = time.perf_counter()
                text = export(engine, log, audience)
                exports.append(time.perf_counter() - start)
                sizes.append(len(text))
                parsed = json.loads(text)
                start = time.perf_counter()
                report = verify_bundle(parsed, log_key=log.verifier().public_key)
                verifies.append(time.perf_counter() - start)
                assert report.case_entries == len(parsed["entries"])
            print(
                f"  {audience.view:<7} view: export {statistics.median(exports):.3f} s "
                f"(target <= 0.3), verify {statistics.median(verifies):.3f} s (target <= 1), "
                f"bundle {statistics.median(sizes) / 1e6:.2f} MB (target <= 5), "
                f"{report.case_entries:,} entries, {report.redacted:,} redacted"
            )
        alone = append_latencies(engine, log, args.appends)
        key = Path(tmp) / "log.key.pem"
        key.write_bytes(signer.private_pem())
        child = subprocess.Popen(
            [sys.executable, __file__, "--export-loop", str(Path(tmp) / "ledger.db"), str(key),
             "3600"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1.0)  # let the first export start
        try:
            busy = append_latencies(engine, log, args.appends)
        finally:
            child.terminate()
            child.wait()
        print(
            f"  one-entry appends (a fetch's write): p50/p99 {percentile(alone, 0.5) * 1000:.1f}/"
            f"{percentile(alone, 0.99) * 1000:.1f} ms alone, "
            f"{percentile(busy, 0.5) * 1000:.1f}/{percentile(busy, 0.99) * 1000:.1f} ms while "
            "another process exports the large case back to back"
        )
        engine.dispose()


if __name__ == "__main__":
    main()
