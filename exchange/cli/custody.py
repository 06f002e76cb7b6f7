"""`exchange custody`: export a case's custody bundle, and verify one offline."""

from __future__ import annotations

import argparse
import base64
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.markup import escape

from exchange.cli.checkpoints import check_exchange_log, compare_with_seen
from exchange.cli.client import add_profile, say, session
from exchange.cli.output import CommandError, DelayedProgress, print_json, stdout
from exchange.custody import CustodyReport, timeline_lines, verify_bundle
from exchange.errors import ExchangeError, VerificationError
from exchange.ledger.checkpoint import Checkpoint, key_fingerprint, vkey_text
from exchange.model import parse_json
from exchange.signing import PublicKey, load_public_key_pem
from exchange.trust import TrustStore


def register(subparsers: Any) -> None:
    """Add the `custody` group."""
    group = subparsers.add_parser("custody", help="export and verify custody bundles")
    commands = group.add_subparsers(dest="command", metavar="COMMAND", required=True)

    export = commands.add_parser(
        "export", help="download a case's custody bundle (ledger entries, proofs, manifests)"
    )
    export.add_argument("case", metavar="CASE", help="case id")
    export.add_argument("--out", required=True, type=Path, help="bundle file to write (JSON)")
    add_profile(export)
    export.set_defaults(handler=export_command)

    key = commands.add_parser(
        "log-key",
        help="save the exchange's ledger public key (check its vkey against one got out of band)",
    )
    key.add_argument("--out", required=True, type=Path, help="PEM file to write")
    add_profile(key)
    key.set_defaults(handler=log_key_command)

    verify = commands.add_parser(
        "verify",
        help="verify a custody bundle offline and print the custody timeline",
        description="Checks the checkpoint signature, every inclusion proof, the hash chain, "
        "every manifest against its sealed digest and signature, and (with --files) every "
        "file. It prints the ledger key's vkey and SHA-256 fingerprint to compare with the "
        "published ones, and checks the bundle's checkpoint against the last one this client "
        "saw (with --profile, the exchange must prove its log extends both). Exit 0 when all "
        "hold; 1 naming the first failure.",
    )
    verify.add_argument("bundle", type=Path, metavar="BUNDLE.json")
    verify.add_argument(
        "--log-key", required=True, type=Path, help="the exchange's ledger public key (PEM)"
    )
    verify.add_argument("--origin", help="require this ledger origin")
    verify.add_argument(
        "--files", type=Path, help="folder of fetched packages (<package_id>/data/...)"
    )
    verify.add_argument(
        "--trust", type=Path, help="verify signers with this trust store, not the bundle's keys"
    )
    verify.add_argument(
        "--profile",
        help="also ask this profile's exchange to prove its current log extends the bundle's "
        "checkpoint and the last one this client saw (default: offline, no request)",
    )
    verify.add_argument("--json", action="store_true", help="machine-readable result")
    verify.set_defaults(handler=verify_command)


def write_atomically(path: Path, data: bytes) -> None:
    """Write `path` beside itself and rename, refusing to replace an existing file."""
    if path.exists():
        raise CommandError(f"{path} already exists; refusing to overwrite")
    partial = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        with partial.open("xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def export_command(args: argparse.Namespace) -> int:
    """Handle `exchange custody export`."""
    with session(args.profile) as client:
        bundle = client.custody(args.case)
    write_atomically(args.out, (json.dumps(bundle, indent=2, ensure_ascii=False) + "\n").encode())
    entries = bundle.get("entries", [])
    packages = bundle.get("packages", [])
    say(f"exported custody of case {args.case} to {args.out}")
    say(f"  {len(entries)} ledger entries, {len(packages)} sealed package(s)")
    say(f"  verify offline: exchange custody verify {args.out} --log-key LEDGER_KEY.pem")
    say(
        "  (the ledger key: `exchange custody log-key --out LEDGER_KEY.pem`, or from the exchange's operator)"
    )
    return 0


def log_key_command(args: argparse.Namespace) -> int:
    """Handle `exchange custody log-key`: save the ledger key PEM and show its vkey."""
    with session(args.profile) as client:
        key = client.ledger_key()
    try:
        pem = str(key["public_key_pem"])
        public_key = load_public_key_pem(pem.encode("ascii"))
        origin = str(key["origin"])
        if not isinstance(public_key, Ed25519PublicKey):
            raise CommandError("the exchange's ledger key is not Ed25519")
        vkey = vkey_text(origin, public_key)
    except (KeyError, UnicodeEncodeError, ExchangeError) as exc:
        raise CommandError(f"the exchange sent no usable ledger key: {exc}") from exc
    write_atomically(args.out, pem.encode("ascii"))
    say(f"saved the ledger key of {origin} to {args.out}")
    # Both computed here from the PEM just saved, not copied from the exchange's answer.
    say(f"  vkey  {vkey}")
    say(f"  SHA-256 fingerprint  {key_fingerprint(public_key)}")
    say("  compare the vkey with the one the exchange's operator published before relying on it")
    return 0


def load_bundle(path: Path) -> Any:
    """Parse a bundle file strictly; `CommandError` if unreadable."""
    try:
        return parse_json(path.read_bytes(), what=str(path))
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
    except ExchangeError as exc:
        raise CommandError(exc.message) from exc


def verify_command(args: argparse.Namespace) -> int:
    """Handle `exchange custody verify`: the timeline and exit 0, or 1 naming the first failure."""
    bundle = load_bundle(args.bundle)
    try:
        log_key = load_public_key_pem(args.log_key.read_bytes())
        trust = TrustStore.from_directory(args.trust) if args.trust else None
    except OSError as exc:
        raise CommandError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    except ExchangeError as exc:
        raise CommandError(exc.message) from exc
    try:
        with DelayedProgress("hashing files", _file_bytes(bundle)) as progress:
            report = verify_bundle(
                bundle,
                log_key=log_key,
                origin=args.origin,
                trust=trust,
                files=args.files,
                on_bytes=progress.advance,
            )
        ledger = check_ledger(bundle, report, log_key=log_key, profile=args.profile)
    except VerificationError as exc:
        if args.json:
            print_json({"ok": False, "error": {"reason": exc.reason, "message": exc.message}})
            return 1
        raise CommandError(f"custody verification failed: {exc.message}") from exc
    if args.json:
        result = asdict(report)
        result["root_hash"] = base64.b64encode(report.root_hash).decode()
        print_json({"ok": True, **result, "ledger": asdict(ledger)})
        return 0
    print_report(report, ledger)
    return 0


@dataclass(frozen=True)
class LedgerCheck:
    """The ledger key a bundle verified under, and how its checkpoint compares with others seen."""

    vkey: str
    fingerprint: str
    last_seen_size: int | None
    exchange_size: int | None
    log: str


def check_ledger(
    bundle: Any, report: CustodyReport, *, log_key: PublicKey, profile: str | None
) -> LedgerCheck:
    """Pin the ledger key and compare the bundle's checkpoint with the last one seen.

    With `profile`, the exchange must also prove that its current log extends both (see
    `check_exchange_log`). Raises `VerificationError` if the key changed or the log was
    rewritten.
    """
    if not isinstance(log_key, Ed25519PublicKey):  # verify_bundle refused it already
        raise VerificationError("the ledger key must be Ed25519", reason="bad_log_key")
    vkey = vkey_text(report.origin, log_key)
    checkpoint = Checkpoint(report.origin, report.tree_size, report.root_hash)
    fingerprint = key_fingerprint(log_key)
    if profile is not None:
        with session(profile) as client:
            online = check_exchange_log(
                client, log_key=log_key, origin=report.origin, also=[checkpoint]
            )
        seen_size = online.seen.size if online.seen is not None else None
        log = f"the exchange's log at tree size {online.current.size} extends this checkpoint" + (
            f" and the one at size {seen_size} seen before" if seen_size is not None else ""
        )
        return LedgerCheck(vkey, fingerprint, seen_size, online.current.size, log)
    seen = compare_with_seen(
        origin=report.origin, vkey=vkey, note=str(bundle["checkpoint"]), checkpoint=checkpoint
    )
    if seen is None:
        log = "first checkpoint of this ledger seen here: saved, and the key pinned"
    elif seen.size == checkpoint.size:
        log = f"same root as the checkpoint at size {seen.size} seen before"
    else:
        log = (
            f"not compared with the checkpoint at size {seen.size} seen before "
            "(give --profile to have the exchange prove consistency)"
        )
    return LedgerCheck(vkey, fingerprint, seen.size if seen else None, None, log)


def _file_bytes(bundle: Any) -> int:
    """The bytes `--files` will hash, for the progress bar (0 if the bundle is malformed)."""
    try:
        return sum(int(f["size"]) for p in bundle["packages"] for f in p["manifest"]["files"])
    except (KeyError, TypeError, ValueError):
        return 0


def print_report(report: CustodyReport, ledger: LedgerCheck) -> None:
    """The court-readable summary and timeline."""
    root = base64.b64encode(report.root_hash).decode()
    stdout.print(f"[bold green]VERIFIED[/] custody of case {escape(report.case_id)}", markup=True)
    say(f"  ledger    {report.origin}, tree size {report.tree_size}, root {root}")
    say(f"  log key   vkey {ledger.vkey}")
    say(f"            SHA-256 fingerprint {ledger.fingerprint}")
    say("            (compare both with the ones the exchange's operator published)")
    say(f"  log       {ledger.log}")
    if report.case_entries is None:
        say(f"  entries   {len(report.events)}, each proved against that one signed checkpoint")
        say("  complete  NOT PROVEN: a v1 bundle cannot show that no entry was left out")
    else:
        shown = report.case_entries - report.redacted
        say(
            f"  complete  all {report.case_entries} entries of the case up to its export "
            f"(ledger entry {report.tree_size - 1}, the checkpoint's last), chained and proved"
        )
        if report.audience is not None:
            agency, country, view = report.audience
            say(
                f"  audience  {view} view for {agency} ({country}): {shown} entries disclosed, "
                f"{report.redacted} redacted (their hashes are proved, their content withheld)"
            )
    say(
        f"  packages  {len(report.packages)} sealed; every manifest matches its sealed "
        "digest and its signature verifies"
    )
    if report.keys_from_log and not report.key_origins:
        say("  keys      no sealed package, so no signer key to prove")
    elif report.keys_from_log:
        say("  keys      signer keys are taken from the ledger's own registrations:")
        for k in report.key_origins:
            revoked = f", revoked at #{k.revoked_seq}" if k.revoked_seq is not None else ""
            say(
                f"              key {k.key_id} of {k.agency}, registered at #{k.registered_seq}{revoked}"
            )
    elif report.case_entries is not None:
        say("  keys      signer keys from your own trust store (--trust)")
    if report.packages and report.packages[0].files_verified:
        say(
            f"  files     {report.files_checked} files, {report.bytes_checked} bytes match "
            "the sealed hashes"
        )
    else:
        say("  files     not checked (give --files DIR to check fetched files)")
    say("")
    say("Custody timeline (UTC):")
    for line in timeline_lines(report):
        say(f"  {line}")
    if report.packages:
        say("")
        say("Sealed packages:")
    for p in report.packages:
        say(f"  {p.package_id}  by {p.agency}, key {p.signer_key_id}, sealed at #{p.sealed_seq}")
        say(f"    {p.file_count} files, {p.total_bytes} bytes, manifest sha256 {p.manifest_sha256}")
