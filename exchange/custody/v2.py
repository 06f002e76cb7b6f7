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
import gc
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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
from exchange.ledger.entry import Action, LedgerEntry, entry_bytes
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
    if not isinstance(obj, Mapping):
        raise _fail(f"{where} is not an object", "bad_bundle")
    try:
        entry = LedgerEntry.model_validate(obj)
        return entry, entry_bytes(obj if isinstance(obj, dict) else dict(obj))
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
    leaf: bytes
    entry: LedgerEntry | None  # None: redacted


def _stated_total(raw: Sequence[Any], size: int) -> int:
    """The case's entry count as the bundle's last entry, its own export, states it."""
    last = raw[-1] if raw else None
    entry = last.get("entry") if isinstance(last, Mapping) else None
    if (
        not isinstance(entry, Mapping)
        or entry.get("action") != Action.CUSTODY_EXPORTED
        or not isinstance(entry.get("case_seq"), int)
    ):
        seq = last.get("seq") if isinstance(last, Mapping) else None
        raise _fail(
            f"the bundle does not end with its own custody export (its last entry is seq "
            f"{seq}): the newest case entries are missing",
            "case_incomplete",
        )
    if entry.get("seq") != size - 1:
        raise _fail(
            f"the bundle's custody export is ledger entry {entry.get('seq')}, but the checkpoint "
            f"it is verified against covers {size} entries: not the checkpoint the bundle was "
            "exported under",
            "checkpoint_mismatch",
        )
    return int(entry["case_seq"]) + 1


def _numbered(
    index: int,
    case_seq: object,
    total: int,
    seq: int,
    before: int | None,
    places: set[object],
    after_v1: bool,
) -> None:
    if case_seq == index:
        return
    if isinstance(case_seq, int) and case_seq > index and after_v1:
        # Entries written before v2 carry no number: the gap shows only here, not where.
        raise _fail(
            f"{case_seq - index} of the case's first {case_seq} entries are missing (entries "
            f"written before ledger v2, somewhere before ledger entry {seq})",
            "case_entry_missing",
        )
    if isinstance(case_seq, int) and case_seq > index and index not in places:
        after = f"after ledger entry {before} " if before is not None else ""
        raise _fail(
            f"case entry {index + 1} of {total} is missing ({after}before ledger entry {seq})",
            "case_entry_missing",
        )
    if isinstance(case_seq, int) and case_seq > index:
        raise _fail(
            f"case entries out of order: ledger entry {seq} (case entry {case_seq + 1}) is listed "
            f"where case entry {index + 1} belongs",
            "case_order",
        )
    raise _fail(
        f"ledger entry {seq} claims to be case entry {case_seq}, but {index} entries of the "
        "case come before it: an entry is repeated or out of order",
        "case_order",
    )


def _stated_place(item: object) -> object:
    if not isinstance(item, Mapping):
        return None
    entry = item.get("entry")
    return (entry if isinstance(entry, Mapping) else item).get("case_seq")


def _case_items(raw: Sequence[Any], case_id: str, size: int) -> list[_CaseItem]:
    """Walk the case's entries in order: numbering, order and the case chain.

    A disclosed v2 entry comes without its `case_prev` (the bundle leaves it out, see
    docs/ledger.md): it is the head folded so far, restored here before the entry's leaf is
    hashed. So every entry's leaf, and at the end the export's, depends on all before it.
    """
    total = _stated_total(raw, size)
    # Every place a case entry claims, so that a gap can be told from a misplaced entry.
    places = {_stated_place(i) for i in raw}
    head = casechain.genesis(case_id)
    items: list[_CaseItem] = []
    for index, item in enumerate(raw):
        where = f"entries[{index}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("seq"), int):
            raise _fail(f"{where} is not an entry or a redacted stub", "bad_bundle")
        seq = item["seq"]
        before = items[-1].seq if items else None
        last = items[-1].entry if items else None
        after_v1 = last is not None and last.case_seq is None
        if before is not None and seq <= before:
            raise _fail(
                f"case entries out of order: ledger entry {seq} is listed after ledger entry "
                f"{before}",
                "case_order",
            )
        obj = item.get("entry")
        if isinstance(obj, Mapping):
            if obj.get("v") == 2 and "case_id" in obj:
                given = obj.get("case_prev", head.hex())
                if given != head.hex():
                    raise _fail(
                        f"case entry {index + 1} of {total} (ledger entry {seq}) does not chain "
                        "to the entries before it: one of them was altered, replaced or reordered",
                        "case_chain_broken",
                    )
                obj = {**obj, "case_prev": given}
            entry, data = _entry(obj, f"case entry at seq {seq}")
            if entry.seq != seq:
                raise _fail(f"ledger entry {entry.seq} is listed as seq {seq}", "seq_mismatch")
            if entry.case_id != case_id:
                raise _fail(
                    f"ledger entry {seq} is about case {entry.case_id}, not {case_id}",
                    "case_mismatch",
                )
            if entry.case_seq is not None:
                _numbered(index, entry.case_seq, total, seq, before, places, after_v1)
            leaf = merkle.leaf_hash(data)
        elif "entry" in item:
            raise _fail(f"{where}.entry is not an object", "bad_bundle")
        else:
            _numbered(index, item.get("case_seq"), total, seq, before, places, after_v1)
            leaf = _hash(item.get("leaf_hash"), f"{where}.leaf_hash")
            entry = None
        items.append(_CaseItem(seq, leaf, entry))
        head = casechain.advance(head, seq, leaf)
    if len(items) != total:
        raise _fail(
            f"the case has {total} entries but the bundle holds {len(items)}", "case_entry_missing"
        )
    return items


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


@contextmanager
def _without_cycle_collection() -> Iterator[None]:
    # Checking ten thousand entries allocates a few objects per entry, and every few hundred
    # allocations the cycle collector would walk the whole parsed bundle again: a quarter of
    # the verification time. Nothing made here forms a cycle, so reference counting frees it all.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


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
    with _without_cycle_collection():
        return _verify(bundle, log_key=log_key, origin=origin, trust=trust, files=files,
                       on_bytes=on_bytes)  # fmt: skip


def _verify(
    bundle: Mapping[str, Any],
    *,
    log_key: PublicKey,
    origin: str | None,
    trust: TrustStore | None,
    files: Path | None,
    on_bytes: ProgressCallback | None,
) -> CustodyReport:
    case_id = bundle.get("case_id")
    note = bundle.get("checkpoint")
    raw_entries = bundle.get("entries")
    if not isinstance(case_id, str) or not isinstance(note, str):
        raise _fail("custody bundle needs a case_id and a checkpoint", "bad_bundle")
    if not isinstance(raw_entries, list):
        raise _fail("custody bundle needs its entries", "bad_bundle")
    checkpoint = verify_checkpoint(note, log_key, origin)
    size, root = checkpoint.size, checkpoint.root_hash
    items = _case_items(raw_entries, case_id, size)
    total = len(items)
    export = items[-1]
    try:
        merkle.verify_inclusion(
            export.leaf, export.seq, size, _proof(bundle.get("export_inclusion"), "export"), root
        )
    except VerificationError as exc:
        # The export's leaf holds the chain head over every earlier entry of the case: any
        # entry altered, replaced, reordered or made up changes it.
        raise _fail(
            f"the case's entries do not lead to its custody export (ledger entry {export.seq}) "
            f"in the signed ledger: an entry of the case was altered, replaced, reordered or "
            f"left out ({exc.message})",
            "case_chain_broken",
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
