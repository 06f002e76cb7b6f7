"""Offline verification of an evidence package against a trust store."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from exchange.errors import InvalidInputError, VerificationError
from exchange.model import MANIFEST_JWS_TYP, Manifest, canonical_bytes, parse_json
from exchange.package.hashing import ProgressCallback, hash_stream
from exchange.package.paths import check_path
from exchange.package.source import JWS_NAME, MANIFEST_NAME, PackageSource, open_source
from exchange.schema import validate
from exchange.signing import read_detached_jws_header, verify_detached_jws
from exchange.trust import TrustedKey, TrustStore, parse_time


@dataclass(frozen=True)
class SignedManifest:
    """A manifest whose signature, signer and paths have been checked."""

    manifest: Manifest
    jws: str
    key: TrustedKey
    digest: str  # hex SHA-256 of the canonical manifest bytes

    @property
    def canonical(self) -> bytes:
        """The signed bytes."""
        return canonical_bytes(self.manifest)


@dataclass(frozen=True)
class VerifiedPackage:
    """A package whose every check held."""

    signed: SignedManifest
    file_count: int
    total_bytes: int


def load_manifest(raw: bytes) -> Manifest:
    """Parse manifest.json bytes and check them against the schema and the model.

    Raises `VerificationError` with reason ``malformed_manifest`` or ``schema_invalid``.
    """
    try:
        doc = parse_json(raw, what=MANIFEST_NAME)
    except InvalidInputError as exc:
        raise VerificationError(
            exc.message, reason="malformed_manifest", path=MANIFEST_NAME
        ) from exc
    try:
        validate("manifest.v1.json", doc)
        return Manifest.from_wire(doc)
    except InvalidInputError as exc:
        raise VerificationError(exc.message, reason="schema_invalid", path=MANIFEST_NAME) from exc


def verify_manifest(
    manifest: Manifest, jws: str, *, trust: TrustStore, now: datetime
) -> SignedManifest:
    """Check a manifest's signature, its signer's standing, and its file paths.

    Raises `VerificationError` naming the first failure (unknown, revoked or expired key,
    agency or country mismatch, bad signature, unsafe or duplicate path).
    """
    header = read_detached_jws_header(jws, typ=MANIFEST_JWS_TYP)
    key = trust.get(header.kid)
    key.check_usable(agency=manifest.agency, signed_at=parse_time(manifest.created_at), now=now)
    if key.country != manifest.country:
        raise VerificationError(
            f"manifest country {manifest.country} is not the signer's ({key.country})",
            reason="agency_mismatch",
        )
    payload = canonical_bytes(manifest)
    verify_detached_jws(jws=jws, payload=payload, public_key=key.public_key, typ=MANIFEST_JWS_TYP)
    check_file_list(manifest)
    return SignedManifest(
        manifest=manifest, jws=jws.strip(), key=key, digest=hashlib.sha256(payload).hexdigest()
    )


def check_file_list(manifest: Manifest) -> None:
    """Every path is safe and appears once; raises `VerificationError`."""
    for entry in manifest.files:
        check_path(entry.path)
    counts = Counter(entry.path for entry in manifest.files)
    for entry in manifest.files:
        if counts[entry.path] > 1:
            raise VerificationError(
                f"duplicate path in manifest: {entry.path}",
                reason="duplicate_path",
                path=entry.path,
            )
    # A file and a folder of the same name cannot both exist on disk.
    paths = set(counts)
    for path in paths:
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in paths:
                raise VerificationError(
                    f"path {parent} is both a file and a folder of {path}",
                    reason="duplicate_path",
                    path=path,
                )


def verify_source(
    source: PackageSource,
    *,
    trust: TrustStore,
    now: datetime,
    on_bytes: ProgressCallback | None = None,
) -> VerifiedPackage:
    """Verify an opened package; see `verify_package`."""
    manifest = load_manifest(source.read_small(MANIFEST_NAME))
    try:
        jws = source.read_small(JWS_NAME).decode("ascii")
    except UnicodeDecodeError as exc:
        raise VerificationError("manifest.jws is not ASCII", reason="bad_jws") from exc
    signed = verify_manifest(manifest, jws, trust=trust, now=now)
    present = source.data_files()
    expected = {entry.path: entry for entry in manifest.files}
    for entry in manifest.files:
        if entry.path not in present:
            raise VerificationError(
                f"file missing: data/{entry.path}", reason="file_missing", path=entry.path
            )
    for path in present:
        if path not in expected:
            raise VerificationError(
                f"extra file not in the manifest: data/{path}", reason="extra_file", path=path
            )
    for entry in manifest.files:
        if present[entry.path] != entry.size:
            raise VerificationError(
                f"size mismatch for data/{entry.path}: manifest says {entry.size} bytes, "
                f"file has {present[entry.path]}",
                reason="size_mismatch",
                path=entry.path,
            )
    for entry in manifest.files:
        with source.open_data(entry.path) as stream:
            digest, size = hash_stream(stream, on_bytes=on_bytes)
        if size != entry.size:
            raise VerificationError(
                f"size mismatch for data/{entry.path}: manifest says {entry.size} bytes, "
                f"read {size}",
                reason="size_mismatch",
                path=entry.path,
            )
        if digest != entry.sha256:
            raise VerificationError(
                f"hash mismatch for data/{entry.path}: manifest says sha256 {entry.sha256}, "
                f"file has {digest}",
                reason="hash_mismatch",
                path=entry.path,
            )
    return VerifiedPackage(
        signed=signed, file_count=len(manifest.files), total_bytes=manifest.total_bytes
    )


def verify_package(
    path: Path, *, trust: TrustStore, now: datetime, on_bytes: ProgressCallback | None = None
) -> VerifiedPackage:
    """Verify a package directory or tar archive completely, offline.

    Order of checks: archive safety, manifest JSON and schema, JWS header, signer key (known,
    not revoked, valid at created_at, same agency and country), signature, path rules, links
    and special files, missing files, extra files, sizes, hashes. Raises `VerificationError`
    naming the first failure.
    """
    with open_source(path) as source:
        return verify_source(source, trust=trust, now=now, on_bytes=on_bytes)
