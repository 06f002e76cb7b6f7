"""Build and verify a package holding one large file; print time, throughput and peak RSS.

    python bench/package_memory.py [--size-gib 2] [--workdir DIR]

Each step runs as its own `exchange` process, so the peak RSS printed is that process's alone
(from wait4). The target: flat memory, peak RSS under ~100 MiB whatever the file size.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHUNK = 8 * 1024 * 1024


def run(argv: list[str]) -> tuple[float, float]:
    """Run a command; return (seconds, peak RSS in MiB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed: {' '.join(argv)}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    size = int(args.size_gib * 1024**3)
    work = Path(tempfile.mkdtemp(prefix="bench-pkg-", dir=args.workdir))
    try:
        src = work / "src"
        src.mkdir()
        block = os.urandom(CHUNK)
        with (src / "disk.img").open("wb") as f:
            written = 0
            while written < size:
                n = min(CHUNK, size - written)
                f.write(block[:n])
                written += n
        start = time.perf_counter()
        with (src / "disk.img").open("rb") as f:
            digest = hashlib.sha256()
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        raw_hash = time.perf_counter() - start

        keys = work / "keys"
        exe = [sys.executable, "-m", "exchange"]
        subprocess.run(
            [*exe, "keys", "generate", "--agency", "TH-RTP", "--out", str(keys)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (keys / "trust" / "agencies").mkdir(parents=True)
        (keys / "TH-RTP.json").rename(keys / "trust" / "agencies" / "TH-RTP.json")
        meta = work / "meta.json"
        meta.write_text(json.dumps({
            "case_ref": "BENCH-1",
            "legal_basis": {"type": "warrant", "reference": "W-1", "issued_by": "Court"},
            "collection": {
                "collected_by": {"name": "Bench", "role": "examiner"},
                "collected_at": "2026-11-20T09:30:00+07:00",
                "location": "lab", "method": "disk image",
                "tool": {"name": "dd", "version": "9.1"},
                "source_device": {"description": "test disk"},
                "seal_numbers": [],
            },
        }))  # fmt: skip
        results = []
        for out in (work / "pkg", work / "pkg.tar"):
            build = [
                *exe,
                "package",
                "build",
                str(src),
                "--agency",
                "TH-RTP",
                "--key",
                str(keys / "TH-RTP.key.pem"),
                "--metadata",
                str(meta),
                "--out",
                str(out),
            ]
            verify = [*exe, "package", "verify", str(out), "--trust", str(keys / "trust")]
            results.append((f"build {out.suffix or 'dir'}", *run(build)))
            results.append((f"verify {out.suffix or 'dir'}", *run(verify)))
            if out.is_dir():
                shutil.rmtree(out)
            else:
                out.unlink()
        mib = size / 1024**2
        print(f"file size: {mib:.0f} MiB   cores: {os.cpu_count()}")
        print(f"{'step':<14}{'seconds':>9}{'MiB/s':>9}{'peak RSS MiB':>14}")
        print(f"{'raw sha256':<14}{raw_hash:>9.2f}{mib / raw_hash:>9.0f}{'-':>14}")
        for name, secs, rss in results:
            passes = 2 if name.startswith("build") else 1  # build hashes, then copies while hashing
            print(f"{name:<14}{secs:>9.2f}{mib * passes / secs:>9.0f}{rss:>14.1f}")
        worst = max(r[2] for r in results)
        print(
            f"peak RSS over all steps: {worst:.1f} MiB (target < 100 MiB): {'met' if worst < 100 else 'NOT met'}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
