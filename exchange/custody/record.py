"""Custody bundle v1 (schemas/custody-bundle.v1.json), and what v1 and v2 share: the manifest and
file checks, the report and the timeline. See `exchange.custody.v2` for the current format.

A bundle holds every ledger entry about one case, each with an RFC 9162 inclusion proof against
ONE signed checkpoint, the case's sealed manifests with their detached JWS, and the signer public
keys. With the exchange's ledger public key alone, `verify_bundle` checks, in order:

1. the checkpoint signature (C2SP signed note);
2. every entry: canonical bytes, case, and inclusion proof up to the checkpoint's root;
3. the hash chain wherever two consecutive seqs are both present (`prev` = SHA-256 of the other);
4. every manifest: its digest equals the one its ``package.sealed`` entry recorded (a swapped
   manifest is caught even if validly signed), its signer key id equals the recorded one, and its
   JWS verifies against the signer key (valid at the time the ledger says it was sealed);
5. when a folder of fetched packages is given, every file's size and SHA-256.

It raises `VerificationError` naming the first failure; nothing here touches the network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from exchange.errors import ExchangeError, InvalidInputError, VerificationError
from exchange.ledger import merkle
from exchange.ledger.checkpoint import Checkpoint
from exchange.ledger.entry import Action, LedgerEntry, parse_entry
from exchange.ledger.signer import LogVerifier
from exchange.model import Manifest, canonical_bytes
from exchange.package.hashing import ProgressCallback, hash_stream
from exchange.package.paths import path_problem
from exchange.package.verify import SignedManifest, verify_manifest
from exchange.schema import validate
from exchange.signing import PublicKey
from exchange.trust import TrustedKey, TrustStore, parse_time

SCHEMA = "custody-bundle.v1.json"
REDACTED = "redacted"
FORMAT = "exchange.custody-bundle/v1"
# The members of a package.sealed entry's details naming the manifest digest and its signer.
MANIFEST_DIGEST = "manifest_sha256"
SIGNER_KEY = "signer_key_id"


@dataclass(frozen=True)
class TimelineEvent:
    """One verified ledger entry, told for a reader."""

    seq: int
    time: str
    action: str
    agency: str
    country: str
    subject: str
    package_id: str | None
    summary: str
    officer: str | None = None  # the acting person (v2 `actor.act`), when the client named one


@dataclass(frozen=True)
class PackageRecord:
    """A sealed package whose manifest verified against the ledger and its signer."""

    package_id: str
    agency: str
    signer_key_id: str
    manifest_sha256: str
    sealed_seq: int
    file_count: int
    total_bytes: int
    files_verified: bool


@dataclass(frozen=True)
class CustodyReport:
    """What a verified bundle establishes."""

    case_id: str
    origin: str
    tree_size: int
    root_hash: bytes
    events: tuple[TimelineEvent, ...]
    packages: tuple[PackageRecord, ...]
    files_checked: int
    bytes_checked: int
    format: str = FORMAT
    # v2 only: how complete the bundle is proven to be, for whom, and where the keys came from.
    case_entries: int | None = None
    redacted: int = 0
    audience: tuple[str, str, str] | None = None  # (agency, country, view)
    key_origins: tuple[KeyOrigin, ...] = ()
    keys_from_log: bool = False


@dataclass(frozen=True)
class KeyOrigin:
    """A signer key and the ledger entries that registered (and revoked) it."""

    key_id: str
    agency: str
    registered_seq: int
    revoked_seq: int | None


def _fail(message: str, reason: str, path: str | None = None) -> VerificationError:
    return VerificationError(message, reason=reason, path=path)


def _field(obj: Mapping[str, Any], name: str, kind: type, where: str) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _fail(f"{where}: field {name!r} is missing or not a {kind.__name__}", "bad_bundle")
    return value


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise _fail(f"{what} is not base64 text", "bad_bundle")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise _fail(f"{what} is not base64", "bad_bundle") from exc


def _check_schema(bundle: object) -> None:
    try:
        validate(SCHEMA, bundle)
    except InvalidInputError as exc:
        raise _fail(f"custody bundle is malformed: {exc.message}", "bad_bundle") from exc


@dataclass(frozen=True)
class _ProvedEntry:
    entry: LedgerEntry
    data: bytes


def _verify_entries(
    raw_entries: Sequence[Any], *, case_id: str, size: int, root: bytes
) -> list[_ProvedEntry]:
    proved: list[_ProvedEntry] = []
    seen: set[int] = set()
    for index, item in enumerate(raw_entries):
        where = f"entries[{index}]"
        if not isinstance(item, Mapping):
            raise _fail(f"{where} is not an object", "bad_bundle")
        data = _unb64(item.get("leaf"), f"{where}.leaf")
        try:
            entry = parse_entry(data)
        except InvalidInputError as exc:
            raise _fail(f"ledger {where} is not a valid entry: {exc.message}", "bad_entry") from exc
        stated = item.get("seq", entry.seq)
        if stated != entry.seq:
            raise _fail(f"ledger entry {entry.seq} is listed as seq {stated}", "seq_mismatch")
        if entry.seq in seen:
            raise _fail(f"ledger entry {entry.seq} appears twice", "bad_bundle")
        seen.add(entry.seq)
        if entry.case_id != case_id:
            raise _fail(
                f"ledger entry {entry.seq} is about case {entry.case_id}, not {case_id}",
                "case_mismatch",
            )
        hashes = item.get("inclusion")
        if not isinstance(hashes, list):
            raise _fail(f"ledger entry {entry.seq} has no inclusion proof", "bad_bundle")
        proof = [
            _unb64(h, f"ledger entry {entry.seq} proof hash {i}") for i, h in enumerate(hashes)
        ]
        try:
            merkle.verify_inclusion(merkle.leaf_hash(data), entry.seq, size, proof, root)
        except VerificationError as exc:
            raise _fail(
                f"ledger entry {entry.seq} is not in the signed ledger: {exc.message}",
                exc.reason,
            ) from exc
        proved.append(_ProvedEntry(entry=entry, data=data))
    proved.sort(key=lambda p: p.entry.seq)
    for before, after in pairwise(proved):
        if after.entry.seq == before.entry.seq + 1:
            expected = hashlib.sha256(before.data).hexdigest()
            if after.entry.prev != expected:
                raise _fail(
                    f"ledger entry {after.entry.seq} does not chain to entry "
                    f"{before.entry.seq}: prev {after.entry.prev} is not {expected}",
                    "chain_broken",
                )
    return proved


def signer_trust(raw_keys: Sequence[Any]) -> TrustStore:
    """The trust store made of a bundle's `signer_keys` entries."""
    keys: list[TrustedKey] = []
    for index, item in enumerate(raw_keys):
        if not isinstance(item, Mapping):
            raise _fail(f"signer_keys[{index}] is not an object", "bad_bundle")
        try:
            validate("trust-agency.v1.json", dict(item))
            keys.append(TrustedKey.from_entry(dict(item), source=f"signer key {index}"))
        except ExchangeError as exc:
            raise _fail(f"bundle signer key is invalid: {exc.message}", "bad_signer_key") from exc
    try:
        return TrustStore(keys)
    except InvalidInputError as exc:
        raise _fail(f"bundle signer keys: {exc.message}", "bad_signer_key") from exc


def _detail(details: Mapping[str, Any], name: str) -> str | None:
    value = details.get(name)
    return value if isinstance(value, str) else None


def _verify_packages(
    raw_packages: Sequence[Any], sealed: Mapping[str, LedgerEntry], trust: TrustStore
) -> list[tuple[SignedManifest, LedgerEntry]]:
    verified: list[tuple[SignedManifest, LedgerEntry]] = []
    seen: set[str] = set()
    for index, item in enumerate(raw_packages):
        where = f"packages[{index}]"
        if not isinstance(item, Mapping):
            raise _fail(f"{where} is not an object", "bad_bundle")
        manifest_doc = item.get("manifest")
        jws = item.get("jws")
        if not isinstance(manifest_doc, Mapping) or not isinstance(jws, str):
            raise _fail(f"{where} needs a manifest object and a jws string", "bad_bundle")
        try:
            validate("manifest.v1.json", dict(manifest_doc))
            manifest = Manifest.from_wire(dict(manifest_doc))
        except InvalidInputError as exc:
            raise _fail(f"{where}: manifest is malformed: {exc.message}", "schema_invalid") from exc
        pid = manifest.package_id
        if item.get("package_id", pid) != pid:
            raise _fail(
                f"{where} is listed as package {item.get('package_id')} but its manifest is "
                f"package {pid}",
                "manifest_mismatch",
            )
        if pid in seen:
            raise _fail(f"package {pid} appears twice", "bad_bundle")
        seen.add(pid)
        entry = sealed.get(pid)
        if entry is None:
            raise _fail(f"package {pid} has no package.sealed entry in the bundle", "not_sealed")
        recorded = _detail(entry.details, MANIFEST_DIGEST)
        digest = hashlib.sha256(canonical_bytes(manifest)).hexdigest()
        if recorded != digest:
            raise _fail(
                f"package {pid}: manifest sha256 {digest} is not the digest {recorded} sealed "
                f"in ledger entry {entry.seq}",
                "manifest_mismatch",
            )
        try:
            # As of the sealing time the ledger proves: a later key revocation does not undo it.
            signed = verify_manifest(manifest, jws, trust=trust, now=parse_time(entry.time))
        except VerificationError as exc:
            raise _fail(
                f"package {pid}: manifest signature does not verify: {exc.message}",
                exc.reason,
                exc.path,
            ) from exc
        recorded_key = _detail(entry.details, SIGNER_KEY)
        if recorded_key != signed.key.key_id:
            raise _fail(
                f"package {pid}: signed by key {signed.key.key_id}, but ledger entry {entry.seq} "
                f"records key {recorded_key}",
                "manifest_mismatch",
            )
        verified.append((signed, entry))
    return verified


def verify_files(
    manifest: Manifest, folder: Path, *, on_bytes: ProgressCallback | None = None
) -> int:
    """Check `folder/data/<path>` against every manifest entry; returns bytes hashed.

    Raises `VerificationError` (``file_missing``, ``size_mismatch``, ``hash_mismatch``).
    """
    total = 0
    pid = manifest.package_id
    for file in manifest.files:
        if path_problem(file.path) is not None:
            raise _fail(f"package {pid}: unsafe path {file.path!r}", "unsafe_path", file.path)
        target = folder / "data" / file.path
        if not target.is_file() or target.is_symlink():
            raise _fail(f"package {pid}: file missing: {target}", "file_missing", file.path)
        with target.open("rb") as stream:
            digest, size = hash_stream(stream, on_bytes=on_bytes)
        if size != file.size:
            raise _fail(
                f"package {pid}: size mismatch for data/{file.path}: sealed {file.size} bytes, "
                f"file has {size}",
                "size_mismatch",
                file.path,
            )
        if digest != file.sha256:
            raise _fail(
                f"package {pid}: hash mismatch for data/{file.path}: sealed sha256 "
                f"{file.sha256}, file has {digest}",
                "hash_mismatch",
                file.path,
            )
        total += size
    return total


def verify_bundle_v1(
    bundle: object,
    *,
    log_key: PublicKey,
    origin: str | None = None,
    trust: TrustStore | None = None,
    files: Path | None = None,
    on_bytes: ProgressCallback | None = None,
) -> CustodyReport:
    """Verify a parsed custody bundle fully offline; see the module docstring for the checks.

    `log_key` is the exchange's ledger public key; `origin` pins the log's name. `trust`, when
    given, replaces the signer keys carried in the bundle (a verifier's own trust store).
    `files` is a folder holding `<package_id>/data/...` for every package. Raises
    `VerificationError` naming the first failure.
    """
    if not isinstance(bundle, Mapping):
        raise _fail("custody bundle is not a JSON object", "bad_bundle")
    _check_schema(bundle)
    case_id = _field(bundle, "case_id", str, "custody bundle")
    note = _field(bundle, "checkpoint", str, "custody bundle")
    checkpoint = verify_checkpoint(note, log_key, origin)
    proved = _verify_entries(
        _field(bundle, "entries", list, "custody bundle"),
        case_id=case_id,
        size=checkpoint.size,
        root=checkpoint.root_hash,
    )
    sealed = {
        p.entry.package_id: p.entry
        for p in proved
        if p.entry.action == Action.PACKAGE_SEALED and p.entry.package_id is not None
    }
    store = (
        trust
        if trust is not None
        else signer_trust(_field(bundle, "signer_keys", list, "custody bundle"))
    )
    records, files_checked, bytes_checked = check_packages(
        _field(bundle, "packages", list, "custody bundle"),
        sealed,
        store,
        files=files,
        on_bytes=on_bytes,
    )
    return CustodyReport(
        case_id=case_id,
        origin=checkpoint.origin,
        tree_size=checkpoint.size,
        root_hash=checkpoint.root_hash,
        events=tuple(event_of(p.entry) for p in proved),
        packages=tuple(records),
        files_checked=files_checked,
        bytes_checked=bytes_checked,
    )


def check_packages(
    raw_packages: Sequence[Any],
    sealed: Mapping[str, LedgerEntry],
    store: TrustStore,
    *,
    files: Path | None,
    on_bytes: ProgressCallback | None,
) -> tuple[list[PackageRecord], int, int]:
    """Verify every sealed package's manifest (and files); (records, files, bytes checked)."""
    packages = _verify_packages(raw_packages, sealed, store)
    missing = sorted(set(sealed) - {s.manifest.package_id for s, _ in packages})
    if missing:
        raise _fail(
            f"package {missing[0]} was sealed but its manifest is not in the bundle", "bad_bundle"
        )
    files_checked = bytes_checked = 0
    records: list[PackageRecord] = []
    for signed, entry in packages:
        if files is not None:
            bytes_checked += verify_files(
                signed.manifest, files / signed.manifest.package_id, on_bytes=on_bytes
            )
            files_checked += len(signed.manifest.files)
        records.append(
            PackageRecord(
                package_id=signed.manifest.package_id,
                agency=signed.manifest.agency,
                signer_key_id=signed.key.key_id,
                manifest_sha256=signed.digest,
                sealed_seq=entry.seq,
                file_count=len(signed.manifest.files),
                total_bytes=signed.manifest.total_bytes,
                files_verified=files is not None,
            )
        )
    return records, files_checked, bytes_checked


def verify_checkpoint(note: str, log_key: PublicKey, origin: str | None) -> Checkpoint:
    """The bundle's checkpoint, verified with the ledger key (and pinned origin)."""
    try:
        return LogVerifier.from_public_key(log_key, origin=origin).verify(note)
    except VerificationError as exc:
        raise _fail(
            f"ledger checkpoint does not verify with the given log key: {exc.message}",
            exc.reason,
        ) from exc
    except InvalidInputError as exc:
        raise _fail(f"log key unusable: {exc.message}", "bad_log_key") from exc


def event_of(entry: LedgerEntry) -> TimelineEvent:
    """The timeline event of a verified entry."""
    return TimelineEvent(
        seq=entry.seq,
        time=entry.time,
        action=entry.action.value,
        agency=entry.actor.agency,
        country=entry.actor.country,
        subject=entry.actor.subject,
        officer=_officer(entry),
        package_id=entry.package_id,
        summary=describe(entry),
    )


def _officer(entry: LedgerEntry) -> str | None:
    act = entry.actor.act
    if act is None:
        return None
    return f"{act.name} ({act.sub})" if act.name else act.sub


def _plural(n: object, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _grantee(d: Mapping[str, Any]) -> str:
    country = d.get("grantee_country", "?")
    agency = d.get("grantee_agency")
    return f"{agency} ({country})" if agency else f"all agencies of {country}"


def _legal(d: Mapping[str, Any]) -> str:
    basis = d.get("legal_basis")
    if isinstance(basis, Mapping):
        return f" under {basis.get('type', '?')} {basis.get('reference', '?')}"
    return ""


def _authority(d: Mapping[str, Any]) -> str:
    # Entries from before grants were recorded have no "grant" member and say nothing of it.
    if "grant" not in d:
        return ""
    grant = d["grant"]
    if grant is None:
        return " as the owning agency"
    if isinstance(grant, Mapping):
        basis = grant.get("legal_basis")
        legal = (
            f" ({basis.get('type', '?')} {basis.get('reference', '?')})"
            if isinstance(basis, Mapping)
            else ""
        )
        return f" under grant {grant.get('grant_id', '?')}{legal}"
    return ""


def _size(d: Mapping[str, Any]) -> str:
    n = d.get("file_count", d.get("files"))
    b = d.get("bytes", d.get("total_bytes"))
    count = len(n) if isinstance(n, list) else n
    parts = [_plural(count, "file")] if count is not None else []
    if b is not None:
        parts.append(f"{b} bytes")
    return ", ".join(parts)


_SUMMARIES: dict[str, Callable[[Mapping[str, Any]], str]] = {
    Action.CASE_OPENED: lambda d: (
        "case opened" + (f" ({d['case_ref']}: {d.get('title', '')})" if "case_ref" in d else "")
    ),
    Action.PACKAGE_REGISTERED: lambda d: (
        "package manifest registered" + (f" ({_size(d)})" if _size(d) else "")
    ),
    Action.PACKAGE_SEALED: lambda d: (
        "package sealed"
        + (f" ({_size(d)})" if _size(d) else "")
        + (
            f", manifest sha256 {_detail(d, MANIFEST_DIGEST)}"
            if _detail(d, MANIFEST_DIGEST)
            else ""
        )
    ),
    Action.GRANT_ISSUED: lambda d: (
        f"read access granted to {_grantee(d)}{_legal(d)}"
        + (f" until {d['expires_at']}" if "expires_at" in d else "")
    ),
    Action.GRANT_REVOKED: lambda d: f"grant {d.get('grant_id', '?')} revoked",
    Action.BUNDLE_FETCHED: lambda d: (
        "fetched "
        + (
            ", ".join(f"data/{p}" for p in d["files"])
            if isinstance(d.get("files"), list)
            else "evidence"
        )
        + (f" ({d['bytes']} bytes)" if "bytes" in d else "")
        + _authority(d)
    ),
    Action.CUSTODY_EXPORTED: lambda d: "custody record exported",
    Action.PACKAGE_VIEWED: lambda d: (
        (
            f"listed the case's packages ({d['package_count']})"
            if d.get("view") == "list"
            else "read the package manifest and metadata"
        )
        + _authority(d)
    ),
    Action.INTEGRITY_FAILURE: lambda d: (
        "INTEGRITY FAILURE: stored bytes did not match" + (f" ({d['path']})" if "path" in d else "")
    ),
}


def describe(entry: LedgerEntry) -> str:
    """One plain sentence for a ledger entry, from its action and details."""
    summarize = _SUMMARIES.get(entry.action)
    if summarize is not None:
        try:
            return summarize(entry.details)
        except (KeyError, TypeError):
            pass
    return entry.action.value.replace(".", " ")


def timeline_lines(report: CustodyReport) -> list[str]:
    """The custody timeline as plain text lines, one per entry, oldest first."""
    lines = []
    for e in report.events:
        package = f" [package {e.package_id}]" if e.package_id else ""
        if e.action == REDACTED:
            lines.append(f"#{e.seq:<6} {'(redacted)':27}  {e.summary}")
            continue
        who = f"{e.subject}, acting: {e.officer}" if e.officer else e.subject
        lines.append(f"#{e.seq:<6} {e.time}  {e.agency} ({e.country}) {who}: {e.summary}{package}")
    return lines
