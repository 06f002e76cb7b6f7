"""Custody bundle v2 (schemas/custody-bundle.v2.json): complete, minimally disclosed, keys proven.

With the ledger's public key alone, `verify_bundle_v2` establishes, in order:

1. the checkpoint's signature (C2SP signed note);
2. that the bundle ends with its own `custody.exported` entry, that this entry is the LAST leaf
   of that checkpoint (seq = size - 1, by its inclusion proof), so no entry of the case can
   come after it;
3. that the case's entries are all there, in order: each entry states its place in the case
   (`case_seq`), and the chain head each v2 entry carries (`case_prev`) equals the head folded
   over every entry before it, disclosed or redacted (`exchange.ledger.casechain`). The export
   entry's head thus commits to every earlier entry of the case, v1 ones included;
4. the key registrations: every `key.registered`/`key.revoked` entry carried for the signer
   keys is in the same checkpoint (inclusion proof), and each signer key's id, agency and
   validity come from its registration, not from the bundle's say-so;
5. the manifests against their `package.sealed` entries and signer keys, and the files if given.

It raises `VerificationError` naming the first failure. The argument, with its trust
assumptions, is in docs/ledger.md ("Completeness of a case").
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from exchange.custody.record import (
    MANIFEST_DIGEST,
    REDACTED,
    CustodyReport,
    KeyOrigin,
    TimelineEvent,
    check_packages,
    event_of,
    signer_trust,
    verify_checkpoint,
)
from exchange.errors import ExchangeError, InvalidInputError, VerificationError
from exchange.ledger import casechain, merkle
from exchange.ledger.entry import Action, LedgerEntry
from exchange.model import canonical_bytes
from exchange.package.hashing import ProgressCallback
from exchange.signing import PublicKey
from exchange.trust import TrustedKey, TrustStore

FORMAT = "exchange.custody-bundle/v2"
_KEY_ACTIONS = (Action.KEY_REGISTERED, Action.KEY_REVOKED)


def _fail(message: str, reason: str) -> VerificationError:
    return VerificationError(message, reason=reason)


def _hash(text: object, what: str) -> bytes:
    try:
        if not isinstance(text, str):
            raise TypeError
        value = base64.b64decode(text.encode("ascii"), validate=True)
    except (TypeError, binascii.Error, UnicodeEncodeError) as exc:
        raise _fail(f"{what} is not base64", "bad_bundle") from exc
    if len(value) != 32:
        raise _fail(f"{what} is not a SHA-256 hash", "bad_bundle")
    return value


def _proof(hashes: object, what: str) -> list[bytes]:
    if not isinstance(hashes, list) or len(hashes) > 64:
        raise _fail(f"{what} has no inclusion proof", "bad_bundle")
    return [_hash(h, f"{what} proof hash {i}") for i, h in enumerate(hashes)]


def _entry(obj: object, where: str) -> tuple[LedgerEntry, bytes]:
    # The model holds the same rules as schemas/ledger-entry.v2.json (tests hold them equal);
    # the entry's bytes are its canonical form, which is unique, so the leaf follows from it.
    try:
        entry = LedgerEntry.model_validate(obj)
        return entry, canonical_bytes(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = "/" + "/".join(str(p) for p in first["loc"])
        raise _fail(
            f"{where} is not a valid ledger entry: {path}: {first['msg']}", "bad_entry"
        ) from exc
    except InvalidInputError as exc:
        raise _fail(f"{where} is not a valid ledger entry: {exc.message}", "bad_entry") from exc


@dataclass(frozen=True)
class _CaseItem:
    seq: int
    case_seq: int | None  # None: a disclosed v1 entry, whose place is only implied
    leaf: bytes
    entry: LedgerEntry | None  # None: redacted


def _case_items(raw: Sequence[Any], case_id: str) -> list[_CaseItem]:
    items: list[_CaseItem] = []
    for index, item in enumerate(raw):
        where = f"entries[{index}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("seq"), int):
            raise _fail(f"{where} is not an entry or a redacted stub", "bad_bundle")
        seq = item["seq"]
        if "entry" in item:
            entry, data = _entry(item["entry"], f"case entry at seq {seq}")
            if entry.seq != seq:
                raise _fail(f"ledger entry {entry.seq} is listed as seq {seq}", "seq_mismatch")
            if entry.case_id != case_id:
                raise _fail(
                    f"ledger entry {seq} is about case {entry.case_id}, not {case_id}",
                    "case_mismatch",
                )
            items.append(_CaseItem(seq, entry.case_seq, merkle.leaf_hash(data), entry))
        else:
            case_seq = item.get("case_seq")
            if not isinstance(case_seq, int) or isinstance(case_seq, bool) or case_seq < 0:
                raise _fail(f"redacted entry at seq {seq} has no case_seq", "bad_bundle")
            items.append(
                _CaseItem(seq, case_seq, _hash(item.get("leaf_hash"), f"{where}.leaf_hash"), None)
            )
    return items


def _check_complete(items: list[_CaseItem], case_id: str, size: int) -> int:
    """Check order, numbering and the case chain; returns the case's number of entries."""
    if not items:
        raise _fail("custody bundle holds no case entries", "bad_bundle")
    last = items[-1]
    if (
        last.entry is None
        or last.entry.action != Action.CUSTODY_EXPORTED
        or last.entry.case_seq is None
    ):
        raise _fail(
            f"the bundle does not end with its own custody export (its last entry is seq "
            f"{last.seq}): the newest case entries are missing",
            "case_incomplete",
        )
    if last.seq != size - 1:
        raise _fail(
            f"the bundle's custody export is ledger entry {last.seq}, but the checkpoint it is "
            f"verified against covers {size} entries: not the checkpoint the bundle was "
            f"exported under",
            "checkpoint_mismatch",
        )
    total = last.entry.case_seq + 1
    for index, item in enumerate(items):
        if index and item.seq <= items[index - 1].seq:
            raise _fail(
                f"case entries out of order: ledger entry {item.seq} is listed after "
                f"ledger entry {items[index - 1].seq}",
                "case_order",
            )
        if item.case_seq is None or item.case_seq == index:
            continue
        if item.case_seq > index:
            after = f"after ledger entry {items[index - 1].seq} " if index else ""
            raise _fail(
                f"case entry {index + 1} of {total} is missing ({after}before ledger entry "
                f"{item.seq})",
                "case_entry_missing",
            )
        raise _fail(
            f"ledger entry {item.seq} claims to be case entry {item.case_seq + 1}, but "
            f"{index} entries come before it: an entry is repeated or out of order",
            "case_order",
        )
    if len(items) != total:
        raise _fail(
            f"the case has {total} entries but the bundle holds {len(items)}", "case_entry_missing"
        )
    head = casechain.genesis(case_id)
    checked = 0
    for index, item in enumerate(items):
        entry = item.entry
        if entry is not None and entry.case_prev is not None:
            if entry.case_prev != head.hex():
                span = (
                    f"case entry {checked + 1}"
                    if checked == index - 1
                    else f"case entries {checked + 1} to {index}"
                )
                raise _fail(
                    f"case entry {index + 1} of {total} (ledger entry {item.seq}) does not chain "
                    f"to the entries before it: {span} altered, replaced or reordered",
                    "case_chain_broken",
                )
            checked = index + 1
        head = casechain.advance(head, item.seq, item.leaf)
    return total


def _key_entries(
    raw: Sequence[Any], size: int, root: bytes
) -> dict[str, tuple[LedgerEntry, LedgerEntry | None]]:
    """key_id -> (registration, revocation or None), each proven in the checkpoint."""
    registered: dict[str, LedgerEntry] = {}
    revoked: dict[str, LedgerEntry] = {}
    for index, item in enumerate(raw):
        where = f"key_entries[{index}]"
        if not isinstance(item, Mapping):
            raise _fail(f"{where} is not an object", "bad_bundle")
        entry, data = _entry(item.get("entry"), f"key entry {where}")
        if entry.action not in _KEY_ACTIONS or not isinstance(entry.details.get("key_id"), str):
            raise _fail(
                f"{where} (ledger entry {entry.seq}) is not a key registration", "bad_bundle"
            )
        try:
            merkle.verify_inclusion(
                merkle.leaf_hash(data), entry.seq, size, _proof(item.get("inclusion"), where), root
            )
        except VerificationError as exc:
            raise _fail(
                f"key entry {entry.seq} is not in the signed ledger: {exc.message}",
                "key_registration_invalid",
            ) from exc
        kid = entry.details["key_id"]
        target = registered if entry.action == Action.KEY_REGISTERED else revoked
        if kid in target:
            raise _fail(f"key {kid} has two {entry.action} entries", "bad_bundle")
        target[kid] = entry
    return {kid: (reg, revoked.get(kid)) for kid, reg in registered.items()}


def _keys_from_log(
    raw_keys: Sequence[Any],
    registrations: Mapping[str, tuple[LedgerEntry, LedgerEntry | None]],
    needed: set[str],
) -> tuple[TrustStore, tuple[KeyOrigin, ...]]:
    """The signer keys, each standing only as its proven registration says."""
    offered: dict[str, TrustedKey] = {k.key_id: k for k in signer_trust(raw_keys)}
    keys: list[TrustedKey] = []
    origins: list[KeyOrigin] = []
    for kid in sorted(needed):
        found = registrations.get(kid)
        if found is None:
            raise _fail(
                f"signer key {kid} has no key.registered entry in the bundle: its origin is "
                f"not proven",
                "key_unregistered",
            )
        reg, rev = found
        key = offered.get(kid)
        if key is None:
            raise _fail(f"signer key {kid} is not in the bundle", "bad_signer_key")
        agency = reg.details.get("agency")
        if agency != key.agency:
            raise _fail(
                f"signer key {kid} belongs to {key.agency} by the bundle, but ledger entry "
                f"{reg.seq} registered it for {agency}",
                "key_registration_mismatch",
            )
        try:
            window = TrustedKey.from_entry(
                {
                    **key.to_entry(),
                    "not_before": reg.details["not_before"],
                    "not_after": reg.details["not_after"],
                    **({"revoked_at": rev.time} if rev is not None else {}),
                },
                source=f"ledger entry {reg.seq}",
            )
        except (KeyError, TypeError, ValueError, ExchangeError) as exc:
            raise _fail(
                f"ledger entry {reg.seq} does not state key {kid}'s validity",
                "key_registration_invalid",
            ) from exc
        keys.append(window)
        origins.append(KeyOrigin(kid, key.agency, reg.seq, rev.seq if rev is not None else None))
    return TrustStore(keys), tuple(origins)


def _redacted_event(item: _CaseItem) -> TimelineEvent:
    return TimelineEvent(
        seq=item.seq,
        time="",
        action=REDACTED,
        agency="",
        country="",
        subject="",
        package_id=None,
        summary=f"redacted entry, not disclosed to this audience (leaf {item.leaf.hex()[:16]}…)",
    )


def verify_bundle_v2(
    bundle: Mapping[str, Any],
    *,
    log_key: PublicKey,
    origin: str | None = None,
    trust: TrustStore | None = None,
    files: Path | None = None,
    on_bytes: ProgressCallback | None = None,
) -> CustodyReport:
    """Verify a parsed v2 custody bundle offline; see the module docstring for the checks."""
    case_id = bundle.get("case_id")
    note = bundle.get("checkpoint")
    raw_entries = bundle.get("entries")
    if not isinstance(case_id, str) or not isinstance(note, str):
        raise _fail("custody bundle needs a case_id and a checkpoint", "bad_bundle")
    if not isinstance(raw_entries, list):
        raise _fail("custody bundle needs its entries", "bad_bundle")
    checkpoint = verify_checkpoint(note, log_key, origin)
    size, root = checkpoint.size, checkpoint.root_hash
    items = _case_items(raw_entries, case_id)
    total = _check_complete(items, case_id, size)
    export = items[-1]
    try:
        merkle.verify_inclusion(
            export.leaf, export.seq, size, _proof(bundle.get("export_inclusion"), "export"), root
        )
    except VerificationError as exc:
        raise _fail(
            f"the custody export (ledger entry {export.seq}) is not in the signed ledger: "
            f"{exc.message}",
            exc.reason,
        ) from exc
    sealed = {
        i.entry.package_id: i.entry
        for i in items
        if i.entry is not None
        and i.entry.action == Action.PACKAGE_SEALED
        and i.entry.package_id is not None
    }
    needed = {
        e.details["signer_key_id"]
        for e in sealed.values()
        if isinstance(e.details.get("signer_key_id"), str)
    }
    registrations = _key_entries(bundle.get("key_entries") or [], size, root)
    raw_keys = bundle.get("signer_keys")
    if not isinstance(raw_keys, list):
        raise _fail("custody bundle needs its signer_keys", "bad_bundle")
    origins: tuple[KeyOrigin, ...] = ()
    if trust is None:
        store, origins = _keys_from_log(raw_keys, registrations, needed)
    else:
        store = trust
    raw_packages = bundle.get("packages")
    if not isinstance(raw_packages, list):
        raise _fail("custody bundle needs its packages", "bad_bundle")
    records, files_checked, bytes_checked = check_packages(
        raw_packages, sealed, store, files=files, on_bytes=on_bytes
    )
    audience = bundle.get("audience")
    view = None
    if isinstance(audience, Mapping):
        view = (
            str(audience.get("agency", "")),
            str(audience.get("country", "")),
            str(audience.get("view", "")),
        )
    return CustodyReport(
        case_id=case_id,
        origin=checkpoint.origin,
        tree_size=size,
        root_hash=root,
        events=tuple(
            event_of(i.entry) if i.entry is not None else _redacted_event(i) for i in items
        ),
        packages=tuple(records),
        files_checked=files_checked,
        bytes_checked=bytes_checked,
        format=FORMAT,
        case_entries=total,
        redacted=sum(1 for i in items if i.entry is None),
        audience=view,
        key_origins=origins,
        keys_from_log=trust is None,
    )


__all__ = ["FORMAT", "MANIFEST_DIGEST", "verify_bundle_v2"]
