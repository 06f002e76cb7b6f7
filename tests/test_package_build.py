"""Building packages: what goes in, what is refused, and that nothing half-written is left."""

from __future__ import annotations

import os
import stat
from datetime import datetime
from pathlib import Path

import pytest

from exchange.errors import InvalidInputError
from exchange.package import build_package, media_type_of
from exchange.signing import Signer
from tests.builders import COLLECTION, FILES, LEGAL_BASIS, build, read_manifest, write_source


def _build(source: Path, out: Path, signer: Signer, now: datetime) -> None:
    build_package(
        source=source,
        out=out,
        signer=signer,
        agency="TH-RTP",
        country="TH",
        case_ref="C-1",
        legal_basis=dict(LEGAL_BASIS),
        collection=dict(COLLECTION),
        created_at=now,
    )


def test_layout_and_manifest(tmp_path: Path, th_signer: Signer, now: datetime):
    pkg = build(tmp_path, th_signer, created_at=now)
    assert sorted(p.name for p in pkg.iterdir()) == ["data", "manifest.json", "manifest.jws"]
    manifest = read_manifest(pkg)
    assert [f["path"] for f in manifest["files"]] == sorted(FILES)
    assert {f["path"]: f["size"] for f in manifest["files"]} == {
        p: len(b) for p, b in FILES.items()
    }
    by_path = {f["path"]: f for f in manifest["files"]}
    assert by_path["screenshots/wallet.png"]["media_type"] == "image/png"
    assert by_path["phone/extraction.bin"]["media_type"] == "application/octet-stream"
    assert manifest["created_at"] == now.isoformat()
    # evidence copies are read-only
    mode = (pkg / "data" / "phone" / "extraction.bin").stat().st_mode
    assert not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def test_refuses_to_overwrite(tmp_path: Path, th_signer: Signer, now: datetime):
    pkg = build(tmp_path, th_signer, created_at=now)
    with pytest.raises(InvalidInputError, match="already exists; refusing to overwrite"):
        _build(tmp_path / "src-pkg", pkg, th_signer, now)


def test_refuses_symlinks_in_the_source(tmp_path: Path, th_signer: Signer, now: datetime):
    source = write_source(tmp_path / "src")
    (source / "link").symlink_to("/etc/passwd")
    with pytest.raises(InvalidInputError, match="refusing to package a symlink: link"):
        _build(source, tmp_path / "out", th_signer, now)
    assert not (tmp_path / "out").exists()


def test_refuses_special_files_in_the_source(tmp_path: Path, th_signer: Signer, now: datetime):
    source = write_source(tmp_path / "src")
    os.mkfifo(source / "fifo")
    with pytest.raises(
        InvalidInputError, match="refusing to package a device or special file: fifo"
    ):
        _build(source, tmp_path / "out", th_signer, now)


def test_refuses_an_empty_source(tmp_path: Path, th_signer: Signer, now: datetime):
    (tmp_path / "src").mkdir()
    with pytest.raises(InvalidInputError, match="holds no files"):
        _build(tmp_path / "src", tmp_path / "out", th_signer, now)


def test_invalid_metadata_is_refused_before_anything_is_written(
    tmp_path: Path, th_signer: Signer, now: datetime
):
    source = write_source(tmp_path / "src")
    with pytest.raises(InvalidInputError, match="legal_basis/type"):
        build_package(
            source=source,
            out=tmp_path / "out",
            signer=th_signer,
            agency="TH-RTP",
            country="TH",
            case_ref="C-1",
            legal_basis={**LEGAL_BASIS, "type": "subpoena"},
            collection=dict(COLLECTION),
            created_at=now,
        )
    assert list(tmp_path.iterdir()) == [source]


def test_a_file_changing_during_the_build_leaves_nothing(
    tmp_path: Path, th_signer: Signer, now: datetime
):
    source = write_source(tmp_path / "src", {"a.bin": b"a" * 10, "b.bin": b"b" * 10})
    calls = 0

    def tamper(n: int) -> None:
        # Each small file is one chunk: the second call ends the hashing pass, so a.bin
        # changes after its hash went into the manifest and before it is copied.
        nonlocal calls
        calls += 1
        if calls == 2:
            (source / "a.bin").write_bytes(b"A" * 10)

    with pytest.raises(
        InvalidInputError, match=r"a\.bin changed while the package was being written"
    ):
        build_package(
            source=source,
            out=tmp_path / "out",
            signer=th_signer,
            agency="TH-RTP",
            country="TH",
            case_ref="C-1",
            legal_basis=dict(LEGAL_BASIS),
            collection=dict(COLLECTION),
            created_at=now,
            on_bytes=tamper,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("x.txt", "text/plain"),
        ("x.PDF", "application/pdf"),
        ("x.E01", "application/octet-stream"),
        ("noext", "application/octet-stream"),
    ],
)
def test_media_types(name: str, expected: str):
    assert media_type_of(name) == expected
