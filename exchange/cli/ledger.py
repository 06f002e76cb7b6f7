"""`exchange ledger`: verify the stored custody ledger, print proofs, check proofs offline."""

from __future__ import annotations

import argparse
import base64
import os
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from exchange.cli.output import CommandError, print_json, stdout
from exchange.cli.server import with_server
from exchange.errors import ExchangeError, VerificationError
from exchange.keyfiles import load_ed25519_key
from exchange.ledger import casechain
from exchange.ledger.proof import verify_proof_document
from exchange.ledger.signer import LogVerifier
from exchange.model import parse_json
from exchange.signing import load_public_key_pem

if TYPE_CHECKING:
    from exchange.settings import Settings

# NOTE: `verify` and `proof` read the exchange's database, so they import SQLAlchemy and the
# storage layer when run; `check-proof` is offline and must work with the base install alone.


def register(subparsers: Any) -> None:
    """Add the `ledger` group."""
    group = subparsers.add_parser("ledger", help="the custody ledger: verify, prove, check proofs")
    commands = group.add_subparsers(dest="command", metavar="COMMAND", required=True)

    verify = commands.add_parser(
        "verify",
        help="recompute the whole ledger: chain, stored hashes, root, checkpoint signature",
        description="Exit 0 with a summary when every check holds; 1 naming the first bad seq.",
    )
    verify.add_argument("--db", help="database URL (default: the settings' database)")
    verify.add_argument("--log-key", type=Path, help="the log's public key PEM (default: settings)")
    verify.add_argument("--origin", help="expected log origin (default: settings)")
    verify.add_argument(
        "--deep",
        action="store_true",
        help="also parse and schema-check every entry and check every case chain (slower)",
    )
    verify.add_argument(
        "--workers",
        type=int,
        default=_usable_cores(),
        metavar="N",
        help="processes that check the log in parallel (default: usable cores; 1: in order)",
    )
    verify.set_defaults(handler=verify_command)

    proof = commands.add_parser("proof", help="print an inclusion proof for one entry (JSON)")
    proof.add_argument("--seq", required=True, type=int, help="the entry's seq")
    proof.add_argument(
        "--against", type=int, metavar="SIZE", help="add a consistency proof from tree size SIZE"
    )
    proof.add_argument("--db", help="database URL (default: the settings' database)")
    proof.set_defaults(handler=proof_command)

    check = commands.add_parser(
        "check-proof", help="verify a proof file offline with the log's public key"
    )
    check.add_argument("file", type=Path, metavar="FILE")
    check.add_argument("--log-key", required=True, type=Path, help="the log's public key PEM")
    check.add_argument("--origin", help="require this log origin")
    check.set_defaults(handler=check_proof_command)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _log_verifier(args: argparse.Namespace, settings: Settings | None) -> LogVerifier:
    origin = args.origin or (settings.ledger_origin if settings else None)
    try:
        if args.log_key is not None:
            public_key = load_public_key_pem(args.log_key.read_bytes())
        elif settings is None:
            raise CommandError("--log-key is required")
        elif settings.ledger_key_path is not None:
            public_key = load_ed25519_key(settings.ledger_key_path).public_key
        elif settings.env != "development":
            raise CommandError("--log-key is required: EXCHANGE_LEDGER_KEY_PATH is not set")
        else:
            # Only a key that exists: a verifier must never mint the key it checks against.
            dev_key = settings.data_dir / "keys" / "ledger.key.pem"
            if not dev_key.is_file():
                raise CommandError(
                    f"no ledger key: --log-key is not given, EXCHANGE_LEDGER_KEY_PATH is not "
                    f"set and there is no development key at {dev_key.resolve()}"
                )
            public_key = load_ed25519_key(dev_key).public_key
        return LogVerifier.from_public_key(public_key, origin=origin)
    except OSError as exc:
        raise CommandError(f"cannot read {args.log_key}: {exc.strerror}") from exc
    except ExchangeError as exc:
        raise CommandError(exc.message) from exc


def _settings() -> Settings:
    from pydantic import ValidationError

    from exchange.settings import Settings

    try:
        return Settings()
    except ValidationError as exc:
        raise CommandError(f"bad settings: {exc}") from exc


def verify_command(args: argparse.Namespace) -> int:
    """Handle `exchange ledger verify`: exit 0 with a summary, 1 naming the first bad seq."""
    return with_server("ledger verify", partial(_verify_stored, args))


def _verify_stored(args: argparse.Namespace) -> int:
    from exchange.cli.database import database_url, existing_database
    from exchange.storage import ledger_store
    from exchange.storage.db import session_scope

    settings = _settings()
    with existing_database(
        *database_url(settings, args.db), liveness=settings.postgres_liveness()
    ) as engine:
        verifier = _log_verifier(args, settings)
        started = time.perf_counter()
        try:
            with session_scope(engine) as session:
                summary = ledger_store.verify_stored_log(
                    session,
                    verify_note=verifier.verify,
                    workers=args.workers,
                    deep=casechain.DeepCheck() if args.deep else None,
                )
        except VerificationError as exc:
            raise CommandError(f"ledger verification failed: {exc.message}") from exc
    elapsed = time.perf_counter() - started
    root = base64.b64encode(summary.root_hash).decode()
    stdout.print(
        f"[bold green]VERIFIED[/] ledger {escape(summary.checkpoint.origin if summary.checkpoint else str(verifier.origin))}",
        markup=True,
    )
    stdout.print(f"  entries        {summary.entries}")
    stdout.print(f"  tree size      {summary.size}")
    stdout.print(f"  root           {root}")
    stdout.print(f"  stored hashes  {summary.stored_hashes}")
    stdout.print(f"  checked in     {elapsed:.2f} s")
    return 0


def proof_command(args: argparse.Namespace) -> int:
    """Handle `exchange ledger proof`: print the proof JSON (schemas/proof.v1.json)."""
    return with_server("ledger proof", partial(_print_proof, args))


def _print_proof(args: argparse.Namespace) -> int:
    from exchange.cli.database import database_url, existing_database
    from exchange.storage import ledger_store
    from exchange.storage.db import session_scope

    settings = _settings()
    with existing_database(
        *database_url(settings, args.db), liveness=settings.postgres_liveness()
    ) as engine:
        try:
            with session_scope(engine) as session:
                document = ledger_store.proof(session, args.seq, against=args.against)
        except ExchangeError as exc:
            raise CommandError(exc.message) from exc
    print_json(document)
    return 0


def check_proof_command(args: argparse.Namespace) -> int:
    """Handle `exchange ledger check-proof`: exit 0 saying what was proved, 1 otherwise."""
    verifier = _log_verifier(args, None)
    try:
        document = parse_json(args.file.read_bytes(), what=str(args.file))
        proved = verify_proof_document(document, verify_note=verifier.verify)
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror}") from exc
    except VerificationError as exc:
        raise CommandError(f"proof rejected: {exc.message}") from exc
    except ExchangeError as exc:
        raise CommandError(f"proof rejected: {exc.message}") from exc
    e = proved.entry
    stdout.print(
        f"[bold green]PROVED[/] entry {e.seq} is in ledger {escape(proved.origin)} "
        f"at tree size {proved.tree_size}",
        markup=True,
    )
    stdout.print(f"  action   {e.action.value}")
    stdout.print(f"  time     {e.time}")
    stdout.print(f"  actor    {e.actor.subject} ({e.actor.agency}, {e.actor.country})")
    if e.case_id:
        stdout.print(f"  case     {e.case_id}")
    if e.package_id:
        stdout.print(f"  package  {e.package_id}")
    stdout.print(f"  root     {base64.b64encode(proved.root_hash).decode()}")
    if proved.consistent_from is not None:
        stdout.print(
            f"  and the log at size {proved.consistent_from} (its signed checkpoint) "
            f"is a prefix of this log"
        )
    return 0
