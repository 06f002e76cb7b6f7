"""Building a signed evidence package from a folder of evidence files."""

from __future__ import annotations

import io
import json
import mimetypes
import os
import re
import shutil
import stat
import tarfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from exchange.errors import InvalidInputError, VerificationError
from exchange.model import MANIFEST_FORMAT, MANIFEST_JWS_TYP, Manifest, canonical_bytes
from exchange.package.hashing import HashingReader, ProgressCallback, hash_stream
from exchange.package.paths import check_path
from exchange.package.source import DATA_DIR, JWS_NAME, MANIFEST_NAME
from exchange.schema import validate
from exchange.signing import Signer, sign_detached_jws

_MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\Z")


@dataclass(frozen=True)
class SourceFile:
    """One evidence file found under the source folder."""

    path: str  # relative POSIX path, becomes data/<path>
    absolute: Path
    size: int


def scan_source(source: Path) -> list[SourceFile]:
    """Every regular file below `source`, sorted by path; links and special files are refused."""
    if not source.is_dir():
        raise InvalidInputError(f"{source} is not a directory")
    found: list[SourceFile] = []
    for folder, dirs, files in os.walk(source):
        dirs.sort()
        for name in sorted(dirs + files):
            absolute = Path(folder) / name
            rel = absolute.relative_to(source).as_posix()
            st = absolute.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise InvalidInputError(f"refusing to package a symlink: {rel}")
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise InvalidInputError(f"refusing to package a device or special file: {rel}")
            try:
                check_path(rel)
            except VerificationError as exc:
                raise InvalidInputError(exc.message) from exc
            found.append(SourceFile(path=rel, absolute=absolute, size=st.st_size))
    if not found:
        raise InvalidInputError(f"{source} holds no files")
    found.sort(key=lambda f: f.path)
    return found


def media_type_of(path: str) -> str:
    """The media type guessed from the file name, or application/octet-stream."""
    guessed, _ = mimetypes.guess_type(path, strict=False)
    if guessed and _MEDIA_TYPE.match(guessed.lower()):
        return guessed.lower()
    return "application/octet-stream"


def make_manifest(
    *,
    files: list[dict[str, Any]],
    agency: str,
    country: str,
    case_ref: str,
    legal_basis: dict[str, Any],
    collection: dict[str, Any],
    created_at: datetime,
    package_id: str | None = None,
    exhibit_ref: str | None = None,
    notes: str | None = None,
) -> Manifest:
    """Assemble and validate a manifest; raises `InvalidInputError` naming the first problem."""
    doc: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "package_id": package_id or str(uuid.uuid4()),
        "case_ref": case_ref,
        "agency": agency,
        "country": country,
        "created_at": created_at.isoformat(),
        "legal_basis": legal_basis,
        "collection": collection,
        "files": files,
    }
    if exhibit_ref is not None:
        doc["exhibit_ref"] = exhibit_ref
    if notes is not None:
        doc["notes"] = notes
    validate("manifest.v1.json", doc)
    return Manifest.from_wire(doc)


def hash_source(
    files: list[SourceFile], *, on_bytes: ProgressCallback | None = None
) -> list[dict[str, Any]]:
    """Manifest file entries for `files`, hashing each file once in constant memory."""
    entries = []
    for f in files:
        with f.absolute.open("rb") as stream:
            digest, size = hash_stream(stream, on_bytes=on_bytes)
        if size != f.size:
            raise InvalidInputError(f"{f.path} changed size while it was being hashed")
        entries.append(
            {"path": f.path, "size": size, "sha256": digest, "media_type": media_type_of(f.path)}
        )
    return entries


def sign_manifest(
    manifest: Manifest | Mapping[str, Any], signer: Signer, *, algorithm: str | None = None
) -> str:
    """The detached JWS (manifest.jws) over the manifest's RFC 8785 canonical bytes.

    `algorithm` None signs an Ed25519 key's manifest as ``Ed25519``; ``EdDSA`` is for recipients
    whose verifiers predate RFC 9864.
    """
    return sign_detached_jws(
        payload=canonical_bytes(manifest), signer=signer, typ=MANIFEST_JWS_TYP, algorithm=algorithm
    )


def write_package(
    *,
    manifest: Manifest,
    signer: Signer,
    files: list[SourceFile],
    out: Path,
    on_bytes: ProgressCallback | None = None,
    jws_alg: str | None = None,
) -> str:
    """Sign `manifest` and write the package to `out` (a folder, or a tar if it ends in .tar).

    Each file is hashed again as it is copied, so a file that changed since the manifest was
    made is caught; the output appears only when complete (written beside it, then renamed).
    Returns the detached JWS.
    """
    if out.exists():
        raise InvalidInputError(f"{out} already exists; refusing to overwrite")
    by_path = {entry.path: entry for entry in manifest.files}
    jws = sign_manifest(manifest, signer, algorithm=jws_alg)
    manifest_text = (json.dumps(manifest.to_wire(), indent=2, ensure_ascii=False) + "\n").encode()
    partial = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        if out.suffix == ".tar":
            _write_tar(partial, manifest_text, jws, files, by_path, on_bytes)
        else:
            _write_dir(partial, manifest_text, jws, files, by_path, on_bytes)
        os.rename(partial, out)
    except BaseException:
        if partial.is_dir():
            shutil.rmtree(partial)
        else:
            partial.unlink(missing_ok=True)
        raise
    return jws


def _changed(path: str) -> InvalidInputError:
    return InvalidInputError(f"{path} changed while the package was being written")


def _write_dir(
    root: Path,
    manifest_text: bytes,
    jws: str,
    files: list[SourceFile],
    by_path: dict[str, Any],
    on_bytes: ProgressCallback | None,
) -> None:
    root.mkdir()
    for f in files:
        target = root / DATA_DIR / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with f.absolute.open("rb") as src, target.open("xb") as dst:
            digest, size = hash_stream(src, on_bytes=on_bytes, sink=dst)
            dst.flush()
            os.fsync(dst.fileno())
        if digest != by_path[f.path].sha256 or size != by_path[f.path].size:
            raise _changed(f.path)
        target.chmod(0o444)
    (root / MANIFEST_NAME).write_bytes(manifest_text)
    (root / JWS_NAME).write_text(jws + "\n", encoding="ascii")


def _write_tar(
    target: Path,
    manifest_text: bytes,
    jws: str,
    files: list[SourceFile],
    by_path: dict[str, Any],
    on_bytes: ProgressCallback | None,
) -> None:
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        # The manifest goes first so that a streaming reader knows what to expect.
        for name, blob in ((MANIFEST_NAME, manifest_text), (JWS_NAME, (jws + "\n").encode())):
            tar.addfile(_tarinfo(name, len(blob)), io.BytesIO(blob))
        for f in files:
            entry = by_path[f.path]
            with f.absolute.open("rb") as src:
                reader = HashingReader(src, on_bytes)
                tar.addfile(_tarinfo(f"{DATA_DIR}/{f.path}", entry.size), reader)
                if reader.hexdigest() != entry.sha256 or src.read(1):
                    raise _changed(f.path)
    with target.open("rb+") as fh:
        os.fsync(fh.fileno())


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o444
    info.type = tarfile.REGTYPE
    return info


def build_package(
    *,
    source: Path,
    out: Path,
    signer: Signer,
    agency: str,
    country: str,
    case_ref: str,
    legal_basis: dict[str, Any],
    collection: dict[str, Any],
    created_at: datetime,
    package_id: str | None = None,
    exhibit_ref: str | None = None,
    notes: str | None = None,
    on_bytes: ProgressCallback | None = None,
    jws_alg: str | None = None,
) -> Manifest:
    """Hash every file under `source`, write a signed manifest, and lay the package at `out`."""
    files = scan_source(source)
    entries = hash_source(files, on_bytes=on_bytes)
    manifest = make_manifest(
        files=entries,
        agency=agency,
        country=country,
        case_ref=case_ref,
        legal_basis=legal_basis,
        collection=collection,
        created_at=created_at,
        package_id=package_id,
        exhibit_ref=exhibit_ref,
        notes=notes,
    )
    write_package(
        manifest=manifest, signer=signer, files=files, out=out, on_bytes=on_bytes, jws_alg=jws_alg
    )
    return manifest
