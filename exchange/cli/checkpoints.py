"""The last ledger checkpoint this client saw, per ledger origin, and the check that the log only grew.

Kept beside the profiles as ``checkpoints/<origin>.json``: the ledger's verifier key (vkey, pinned
on first use or from ``--log-key``) and the last signed checkpoint note verified with it. Every
later `fetch` (and `custody verify --profile`) verifies the exchange's current checkpoint with the
pinned key, asks for the consistency proof from the saved one, and refuses if the log was
rewritten; only then is the newer checkpoint saved, atomically.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from exchange.cli.output import CommandError
from exchange.cli.profile import profiles_dir
from exchange.client import ClientError, ExchangeClient
from exchange.errors import ExchangeError, VerificationError
from exchange.ledger.checkpoint import (
    Checkpoint,
    key_fingerprint,
    parse_vkey,
    verify_checkpoint,
    vkey_text,
)
from exchange.ledger.consistency import verify_log_growth

FOLDER = "checkpoints"
# File names stay well under the usual 255-byte limit; longer origins are named by their hash.
MAX_NAME = 200


@dataclass(frozen=True)
class SeenCheckpoint:
    """A saved checkpoint: its ledger's origin and pinned vkey, the note and its parsed body."""

    origin: str
    vkey: str
    note: str
    checkpoint: Checkpoint
    path: Path


@dataclass(frozen=True)
class LogCheck:
    """What `check_exchange_log` established: the current checkpoint and what it extends."""

    origin: str
    vkey: str
    fingerprint: str
    current: Checkpoint
    seen: Checkpoint | None
    extended: tuple[Checkpoint, ...]


def checkpoint_path(origin: str) -> Path:
    """Where the last checkpoint seen of ledger `origin` is kept."""
    name = quote(origin, safe="")
    if len(name) > MAX_NAME or name.startswith("."):
        name = hashlib.sha256(origin.encode()).hexdigest()
    return profiles_dir() / FOLDER / f"{name}.json"


def load_seen(origin: str) -> SeenCheckpoint | None:
    """The saved checkpoint of `origin`, re-verified with its pinned vkey; None if none saved.

    Raises `CommandError` if the file is unreadable or damaged (its note must still verify with
    the vkey saved beside it, for the ledger named `origin`).
    """
    path = checkpoint_path(origin)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
        vkey, note = str(data["vkey"]), str(data["checkpoint"])
        checkpoint = verify_checkpoint(note, verifiers=[vkey], origin=origin)
    except (ValueError, KeyError, TypeError) as exc:
        problem = f"{exc.__class__.__name__}: {exc}"
    except ExchangeError as exc:
        problem = exc.message
    else:
        return SeenCheckpoint(origin, vkey, note, checkpoint, path)
    raise CommandError(
        f"the saved checkpoint {path} is damaged ({problem}); "
        "restore it, or delete it to trust the ledger's current state afresh"
    )


def save_seen(*, origin: str, vkey: str, note: str) -> Path:
    """Replace the saved checkpoint of `origin` atomically (write beside, fsync, rename)."""
    path = checkpoint_path(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "origin": origin,
        "vkey": vkey,
        "checkpoint": note,
        "saved_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    partial = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        with partial.open("x", encoding="utf-8") as f:
            json.dump(document, f, indent=2, ensure_ascii=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    # The rename is durable only once the folder itself is on disk.
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return path


def check_pinned_key(seen: SeenCheckpoint | None, vkey: str, *, source: str) -> None:
    """Raise `VerificationError` (``ledger_key_changed``) if `vkey` is not the pinned one."""
    if seen is not None and seen.vkey != vkey:
        raise VerificationError(
            f"the ledger key of {seen.origin} changed: this client pinned {seen.vkey} "
            f"({seen.path}), but {source} is {vkey}",
            reason="ledger_key_changed",
        )


def _field(answer: Any, name: str, kind: type) -> Any:
    if not isinstance(answer, dict) or not isinstance(answer.get(name), kind):
        raise VerificationError(
            f"the exchange's ledger answer has no {name}", reason="bad_ledger_answer"
        )
    return answer[name]


def _proof_hashes(answer: Any, *, old: int, new: int) -> list[bytes]:
    if _field(answer, "tree_size", int) != new or answer.get("old_size") != old:
        raise VerificationError(
            f"asked for the consistency proof from {old} to {new}, the exchange answered "
            f"from {answer.get('old_size')} to {answer.get('tree_size')}",
            reason="bad_ledger_answer",
        )
    hashes = _field(answer, "proof", list)
    try:
        return [base64.b64decode(str(h).encode("ascii"), validate=True) for h in hashes]
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise VerificationError(
            "the exchange's consistency proof is not base64", reason="bad_ledger_answer"
        ) from exc


def check_exchange_log(
    client: ExchangeClient,
    *,
    log_key: Ed25519PublicKey | None = None,
    origin: str | None = None,
    also: Sequence[Checkpoint] = (),
) -> LogCheck:
    """Verify the exchange's current checkpoint extends every checkpoint seen; save it.

    The checkpoint is verified with `log_key` under `origin` when given (``--log-key``), else
    with the vkey pinned for the exchange's origin, else (first contact) with the key the
    exchange reports, which is then pinned. It must extend the saved checkpoint and each of
    `also` (e.g. a bundle's). Raises `VerificationError`: ``ledger_key_changed``,
    ``bad_checkpoint_signature``, ``origin_mismatch``, ``log_rewritten``,
    ``consistency_unavailable`` or ``bad_ledger_answer``; `ClientError` if a request fails.
    """
    if log_key is None or origin is None:
        key = client.ledger_key()
        origin = str(_field(key, "origin", str))
        try:
            vkey = parse_vkey(str(_field(key, "vkey", str))).vkey()
        except ExchangeError as exc:
            raise VerificationError(
                f"the exchange's ledger vkey is unusable: {exc.message}", reason="bad_ledger_answer"
            ) from exc
        source = "the key the exchange now reports"
    else:
        vkey = vkey_text(origin, log_key)
        source = "the given --log-key"
    verifier = parse_vkey(vkey)
    if verifier.name != origin:
        raise VerificationError(
            f"the exchange's ledger key is named {verifier.name!r}, not its origin {origin!r}",
            reason="bad_ledger_answer",
        )
    seen = load_seen(origin)
    check_pinned_key(seen, vkey, source=source)
    note = str(_field(client.ledger_checkpoint(), "checkpoint", str))
    try:
        current = verify_checkpoint(note, verifiers=[verifier], origin=origin)
    except VerificationError as exc:
        raise VerificationError(
            f"the exchange's current checkpoint of {origin} does not verify with the ledger key "
            f"{vkey}: {exc.message}",
            reason=exc.reason if exc.reason == "origin_mismatch" else "bad_checkpoint_signature",
        ) from exc
    earlier = ([seen.checkpoint] if seen is not None else []) + list(also)
    for old in earlier:
        proof: list[bytes] = []
        if 0 < old.size < current.size:
            try:
                answer = client.ledger_consistency(old=old.size, new=current.size)
            except ClientError as exc:
                raise VerificationError(
                    f"the exchange gave no proof that the ledger {origin} at tree size "
                    f"{current.size} extends size {old.size} ({exc.status} {exc.code}: "
                    f"{exc.detail}); refusing, as it cannot be shown the log was not rewritten",
                    reason="consistency_unavailable",
                ) from exc
            proof = _proof_hashes(answer, old=old.size, new=current.size)
        verify_log_growth(seen=old, current=current, proof=proof)
    save_seen(origin=origin, vkey=vkey, note=note)
    return LogCheck(
        origin=origin,
        vkey=vkey,
        fingerprint=key_fingerprint(verifier.public_key),
        current=current,
        seen=seen.checkpoint if seen is not None else None,
        extended=tuple(earlier),
    )


def compare_with_seen(
    *, origin: str, vkey: str, note: str, checkpoint: Checkpoint
) -> Checkpoint | None:
    """Offline: check a verified checkpoint (a bundle's) against the one saved for `origin`.

    Returns the saved checkpoint (None if there was none: then this one is saved and its key
    pinned). A checkpoint of the same size must have the same root; another size cannot be
    compared without the exchange (`check_exchange_log`). Raises `VerificationError`
    (``ledger_key_changed``, ``log_rewritten``).
    """
    seen = load_seen(origin)
    check_pinned_key(seen, vkey, source="the given --log-key")
    if seen is None:
        save_seen(origin=origin, vkey=vkey, note=note)
        return None
    if checkpoint.size == seen.checkpoint.size:
        verify_log_growth(seen=seen.checkpoint, current=checkpoint, proof=[])
    return seen.checkpoint
