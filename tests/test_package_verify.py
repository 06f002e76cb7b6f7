"""Verification of real packages, and one real rejection per failure the format defines."""

from __future__ import annotations

import io
import json
import os
import tarfile
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from exchange.errors import VerificationError
from exchange.package import verify_package
from exchange.package.source import JWS_NAME, MANIFEST_NAME
from exchange.signing import Signer, b64url
from exchange.trust import TrustStore
from tests.builders import FILES, build, read_manifest, rewrite_manifest
from tests.conftest import trusted


def reject(pkg: Path, trust: TrustStore, now: datetime) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        verify_package(pkg, trust=trust, now=now)
    return info.value


@pytest.fixture
def pkg(tmp_path: Path, th_signer: Signer, now: datetime) -> Path:
    return build(tmp_path, th_signer, created_at=now - timedelta(hours=1))


def test_a_good_package_verifies(pkg: Path, trust: TrustStore, now: datetime, th_signer: Signer):
    result = verify_package(pkg, trust=trust, now=now)
    assert result.file_count == len(FILES)
    assert result.total_bytes == sum(len(b) for b in FILES.values())
    assert result.signed.key.key_id == th_signer.key_id
    assert result.signed.manifest.agency == "TH-RTP"


def test_a_good_tar_package_verifies(
    tmp_path: Path, trust: TrustStore, now: datetime, th_signer: Signer
):
    tar = build(tmp_path, th_signer, created_at=now, out_name="pkg.tar")
    assert tar.is_file()
    assert verify_package(tar, trust=trust, now=now).file_count == len(FILES)


def test_es256_signed_package_verifies(tmp_path: Path, now: datetime):
    signer = Signer(ec.generate_private_key(ec.SECP256R1()))
    pkg = build(tmp_path, signer, created_at=now)
    assert "ES256" in json.loads(_header(pkg))["alg"]
    verify_package(pkg, trust=TrustStore([trusted(signer, "TH-RTP")]), now=now)


@pytest.mark.parametrize(
    ("jws_alg", "alg"), [(None, "Ed25519"), ("Ed25519", "Ed25519"), ("EdDSA", "EdDSA")]
)
def test_ed25519_package_verifies_under_either_alg_name(
    tmp_path: Path,
    trust: TrustStore,
    now: datetime,
    th_signer: Signer,
    jws_alg: str | None,
    alg: str,
):
    # RFC 9864: new packages say Ed25519; packages signed before (EdDSA) keep verifying.
    pkg = build(tmp_path, th_signer, created_at=now, jws_alg=jws_alg)
    assert json.loads(_header(pkg))["alg"] == alg
    assert verify_package(pkg, trust=trust, now=now).signed.key.key_id == th_signer.key_id


def test_package_signed_under_one_name_and_relabelled_does_not_verify(
    tmp_path: Path, trust: TrustStore, now: datetime, th_signer: Signer
):
    # The alg is inside the signed header: turning EdDSA into Ed25519 breaks the signature.
    pkg = build(tmp_path, th_signer, created_at=now, jws_alg="EdDSA")
    _, _, sig = (pkg / JWS_NAME).read_text().strip().split(".")
    head = {"alg": "Ed25519", "kid": th_signer.key_id, "typ": "exchange-manifest+jws"}
    (pkg / JWS_NAME).write_text(f"{b64url(json.dumps(head).encode())}..{sig}\n")
    err = reject(pkg, trust, now)
    assert err.reason == "bad_signature"
    assert err.message == "manifest signature does not verify"


@pytest.mark.parametrize("alg", ["Ed25519", "EdDSA"])
def test_es256_trusted_key_refuses_an_ed25519_labelled_manifest(
    tmp_path: Path, now: datetime, alg: str
):
    signer = Signer(ec.generate_private_key(ec.SECP256R1()))
    pkg = build(tmp_path, signer, created_at=now)
    _, _, sig = (pkg / JWS_NAME).read_text().strip().split(".")
    head = {"alg": alg, "kid": signer.key_id, "typ": "exchange-manifest+jws"}
    (pkg / JWS_NAME).write_text(f"{b64url(json.dumps(head).encode())}..{sig}\n")
    err = reject(pkg, TrustStore([trusted(signer, "TH-RTP")]), now)
    assert err.reason == "bad_jws"
    assert err.message == f"JWS alg {alg} does not match the trusted key (ES256)"


def _header(pkg: Path) -> str:
    import base64

    head = (pkg / JWS_NAME).read_text().split(".")[0]
    return base64.urlsafe_b64decode(head + "==").decode()


# --- signer and signature ---------------------------------------------------------------


def test_unknown_key(pkg: Path, now: datetime, ph_signer: Signer, th_signer: Signer):
    err = reject(pkg, TrustStore([trusted(ph_signer, "PH-NBI")]), now)
    assert err.reason == "unknown_key"
    assert err.message == f"key {th_signer.key_id} is not in the trust store"


def test_revoked_key(pkg: Path, now: datetime, th_signer: Signer):
    revoked_at = now - timedelta(minutes=5)
    trust = TrustStore([trusted(th_signer, "TH-RTP", revoked_at=revoked_at)])
    err = reject(pkg, trust, now)
    assert err.reason == "revoked_key"
    assert err.message == (
        f"key {th_signer.key_id} of agency TH-RTP was revoked at {revoked_at.isoformat()}"
    )


def test_key_not_yet_valid_at_created_at(pkg: Path, now: datetime, th_signer: Signer):
    trust = TrustStore([trusted(th_signer, "TH-RTP", not_before=now - timedelta(minutes=10))])
    err = reject(pkg, trust, now)
    assert err.reason == "key_not_valid"
    assert "not at created_at" in err.message


def test_key_expired_before_created_at(pkg: Path, now: datetime, th_signer: Signer):
    trust = TrustStore([trusted(th_signer, "TH-RTP", not_after=now - timedelta(hours=2))])
    assert reject(pkg, trust, now).reason == "key_not_valid"


def test_key_of_another_agency(tmp_path: Path, trust: TrustStore, now: datetime, ph_signer: Signer):
    # PH's key signs a manifest claiming to come from TH-RTP.
    pkg = build(tmp_path, ph_signer, agency="TH-RTP", created_at=now)
    err = reject(pkg, trust, now)
    assert err.reason == "agency_mismatch"
    assert err.message == f"key {ph_signer.key_id} belongs to agency PH-NBI, not TH-RTP"


def test_manifest_edited_after_signing(pkg: Path, trust: TrustStore, now: datetime):
    manifest = read_manifest(pkg)
    manifest["case_ref"] = "TH-TCSD-2026-9999"
    rewrite_manifest(pkg, manifest, signer=None)
    err = reject(pkg, trust, now)
    assert err.reason == "bad_signature"
    assert err.message == "manifest signature does not verify"


def test_signature_bytes_flipped(pkg: Path, trust: TrustStore, now: datetime):
    head, _, sig = (pkg / JWS_NAME).read_text().strip().split(".")
    raw = bytearray(__import__("base64").urlsafe_b64decode(sig + "=="))
    raw[0] ^= 1
    (pkg / JWS_NAME).write_text(f"{head}..{b64url(bytes(raw))}\n")
    assert reject(pkg, trust, now).reason == "bad_signature"


def test_pretty_printing_the_manifest_keeps_the_signature(
    pkg: Path, trust: TrustStore, now: datetime
):
    # The signature covers the RFC 8785 form, not the file's bytes.
    manifest = read_manifest(pkg)
    (pkg / MANIFEST_NAME).write_text(json.dumps(manifest, indent=7, sort_keys=True))
    verify_package(pkg, trust=trust, now=now)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (
            {"alg": "none", "kid": "0" * 32, "typ": "exchange-manifest+jws"},
            "JWS alg 'none' is not allowed",
        ),
        (
            {"alg": "HS256", "kid": "0" * 32, "typ": "exchange-manifest+jws"},
            "JWS alg 'HS256' is not allowed",
        ),
        (
            {"alg": "EdDSA", "kid": "0" * 32, "typ": "JWT"},
            "JWS typ 'JWT' is not 'exchange-manifest+jws'",
        ),
        (
            {"alg": "EdDSA", "kid": "../../etc", "typ": "exchange-manifest+jws"},
            "JWS kid is not 32 lowercase hex digits",
        ),
        (
            {"alg": "EdDSA", "kid": "0" * 32, "typ": "exchange-manifest+jws", "jku": "http://x"},
            "JWS header must hold exactly alg, kid, typ; got ['alg', 'jku', 'kid', 'typ']",
        ),
    ],
)
def test_bad_jws_headers(
    pkg: Path, trust: TrustStore, now: datetime, header: dict[str, str], message: str
):
    sig = (pkg / JWS_NAME).read_text().strip().split(".")[2]
    (pkg / JWS_NAME).write_text(f"{b64url(json.dumps(header).encode())}..{sig}\n")
    err = reject(pkg, trust, now)
    assert (err.reason, err.message) == ("bad_jws", message)


def test_alg_that_does_not_match_the_trusted_key(
    pkg: Path, trust: TrustStore, now: datetime, th_signer: Signer
):
    head = {"alg": "ES256", "kid": th_signer.key_id, "typ": "exchange-manifest+jws"}
    sig = (pkg / JWS_NAME).read_text().strip().split(".")[2]
    (pkg / JWS_NAME).write_text(f"{b64url(json.dumps(head).encode())}..{sig}\n")
    err = reject(pkg, trust, now)
    assert err.message == "JWS alg ES256 does not match the trusted key (Ed25519 or EdDSA)"


def test_attached_payload_is_refused(pkg: Path, trust: TrustStore, now: datetime):
    head, _, sig = (pkg / JWS_NAME).read_text().strip().split(".")
    (pkg / JWS_NAME).write_text(f"{head}.{b64url(b'{}')}.{sig}\n")
    err = reject(pkg, trust, now)
    assert err.message == "manifest.jws is not a detached compact JWS (header..signature)"


# --- the manifest itself -------------------------------------------------------------------


def test_manifest_missing(pkg: Path, trust: TrustStore, now: datetime):
    (pkg / MANIFEST_NAME).unlink()
    err = reject(pkg, trust, now)
    assert (err.reason, err.message) == ("missing_manifest", "package has no manifest.json")


def test_jws_missing(pkg: Path, trust: TrustStore, now: datetime):
    (pkg / JWS_NAME).unlink()
    assert reject(pkg, trust, now).message == "package has no manifest.jws"


def test_manifest_not_json(pkg: Path, trust: TrustStore, now: datetime):
    (pkg / MANIFEST_NAME).write_text("{not json")
    err = reject(pkg, trust, now)
    assert err.reason == "malformed_manifest"
    assert err.message.startswith("manifest.json: not JSON")


def test_manifest_with_duplicate_keys(pkg: Path, trust: TrustStore, now: datetime):
    text = (pkg / MANIFEST_NAME).read_text()
    (pkg / MANIFEST_NAME).write_text(text.replace('"case_ref":', '"case_ref": "X", "case_ref":', 1))
    err = reject(pkg, trust, now)
    assert err.message == "manifest.json: duplicate key 'case_ref'"


def test_manifest_missing_a_required_field(
    pkg: Path, trust: TrustStore, now: datetime, th_signer: Signer
):
    manifest = read_manifest(pkg)
    del manifest["legal_basis"]
    rewrite_manifest(pkg, manifest, th_signer)
    err = reject(pkg, trust, now)
    assert err.reason == "schema_invalid"
    assert (
        err.message == "not valid against manifest.v1.json: /: 'legal_basis' is a required property"
    )


def test_manifest_with_a_bad_hash_format(
    pkg: Path, trust: TrustStore, now: datetime, th_signer: Signer
):
    manifest = read_manifest(pkg)
    manifest["files"][0]["sha256"] = "Z" * 64
    rewrite_manifest(pkg, manifest, th_signer)
    err = reject(pkg, trust, now)
    assert err.reason == "schema_invalid"
    assert err.message.startswith("not valid against manifest.v1.json: /files/0/sha256:")


# --- paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("../outside.bin", "has a '..' segment"),
        ("phone/../../outside.bin", "has a '..' segment"),
        ("/etc/passwd", "is absolute"),
        ("phone\\extraction.bin", "contains a backslash"),
        ("phone/extr\x00action.bin", "contains a NUL byte"),
        ("phone//extraction.bin", "has an empty segment"),
        ("./phone/extraction.bin", "has a '.' segment"),
    ],
)
def test_unsafe_paths_in_the_manifest(
    pkg: Path, trust: TrustStore, now: datetime, th_signer: Signer, path: str, problem: str
):
    manifest = read_manifest(pkg)
    manifest["files"][0]["path"] = path
    rewrite_manifest(pkg, manifest, th_signer)
    err = reject(pkg, trust, now)
    assert (err.reason, err.path) == ("unsafe_path", path)
    assert err.message == f"unsafe path {path!r}: {problem}"


def test_duplicate_paths(pkg: Path, trust: TrustStore, now: datetime, th_signer: Signer):
    manifest = read_manifest(pkg)
    manifest["files"].append(dict(manifest["files"][0]))
    rewrite_manifest(pkg, manifest, th_signer)
    err = reject(pkg, trust, now)
    assert err.reason == "duplicate_path"
    assert err.message == f"duplicate path in manifest: {manifest['files'][0]['path']}"


# --- the files ---------------------------------------------------------------------------------


def test_file_missing(pkg: Path, trust: TrustStore, now: datetime):
    (pkg / "data" / "chats" / "line-export.txt").unlink()
    err = reject(pkg, trust, now)
    assert (err.reason, err.path) == ("file_missing", "chats/line-export.txt")
    assert err.message == "file missing: data/chats/line-export.txt"


def test_extra_file(pkg: Path, trust: TrustStore, now: datetime):
    (pkg / "data" / "phone" / "planted.bin").write_bytes(b"x")
    err = reject(pkg, trust, now)
    assert err.message == "extra file not in the manifest: data/phone/planted.bin"


def test_extra_file_at_the_root(pkg: Path, trust: TrustStore, now: datetime):
    (pkg / "README").write_text("x")
    err = reject(pkg, trust, now)
    assert err.reason == "extra_file"
    assert err.message.startswith("unexpected entry 'README' at the package root")


def test_size_mismatch(pkg: Path, trust: TrustStore, now: datetime):
    target = pkg / "data" / "screenshots" / "wallet.png"
    os.chmod(target, 0o644)
    target.write_bytes(target.read_bytes() + b"!")
    size = len(FILES["screenshots/wallet.png"])
    err = reject(pkg, trust, now)
    assert err.message == (
        f"size mismatch for data/screenshots/wallet.png: manifest says {size} bytes, file has {size + 1}"
    )


def test_hash_mismatch_same_size(pkg: Path, trust: TrustStore, now: datetime):
    target = pkg / "data" / "phone" / "extraction.bin"
    os.chmod(target, 0o644)
    data = bytearray(target.read_bytes())
    data[500] ^= 0xFF
    target.write_bytes(bytes(data))
    err = reject(pkg, trust, now)
    assert (err.reason, err.path) == ("hash_mismatch", "phone/extraction.bin")
    assert err.message.startswith(
        "hash mismatch for data/phone/extraction.bin: manifest says sha256 "
    )


def test_symlink_inside_data(pkg: Path, trust: TrustStore, now: datetime):
    (pkg / "data" / "phone" / "link").symlink_to("/etc/passwd")
    err = reject(pkg, trust, now)
    assert (err.reason, err.message) == ("symlink", "symlink inside data/: phone/link")


def test_evidence_file_replaced_by_symlink(pkg: Path, trust: TrustStore, now: datetime):
    target = pkg / "data" / "chats" / "line-export.txt"
    target.unlink()
    target.symlink_to(pkg / "data" / "phone" / "extraction.bin")
    assert reject(pkg, trust, now).message == "symlink inside data/: chats/line-export.txt"


def test_fifo_inside_data(pkg: Path, trust: TrustStore, now: datetime):
    os.mkfifo(pkg / "data" / "pipe")
    err = reject(pkg, trust, now)
    assert (err.reason, err.message) == (
        "special_file",
        "device or special file inside data/: pipe",
    )


def test_data_folder_is_a_symlink(pkg: Path, trust: TrustStore, now: datetime, tmp_path: Path):
    (pkg / "data").rename(tmp_path / "elsewhere")
    (pkg / "data").symlink_to(tmp_path / "elsewhere")
    assert reject(pkg, trust, now).message == "data/ is not a directory"


# --- tar archives ------------------------------------------------------------------------------


def _tar_from(pkg: Path, out: Path, extra: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(out, "w") as tar:
        for path in sorted(pkg.rglob("*")):
            tar.add(path, arcname=path.relative_to(pkg).as_posix(), recursive=False)
        for info in extra:
            data = b"planted" if info.isreg() else None
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


def test_tar_with_a_symlink_member(pkg: Path, trust: TrustStore, now: datetime, tmp_path: Path):
    link = tarfile.TarInfo("data/phone/evil")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/shadow"
    err = reject(_tar_from(pkg, tmp_path / "x.tar", [link]), trust, now)
    assert err.reason == "unsafe_tar_member"
    assert err.message == "tar member 'data/phone/evil' is a link (to '/etc/shadow')"


def test_tar_with_a_hardlink_member(pkg: Path, trust: TrustStore, now: datetime, tmp_path: Path):
    link = tarfile.TarInfo("data/phone/hard")
    link.type = tarfile.LNKTYPE
    link.linkname = "manifest.json"
    assert (
        reject(_tar_from(pkg, tmp_path / "x.tar", [link]), trust, now).reason == "unsafe_tar_member"
    )


@pytest.mark.parametrize(
    ("name", "problem"),
    [("../escape.bin", "has a '..' segment"), ("/abs/escape.bin", "is absolute")],
)
def test_tar_member_escaping_the_root(
    pkg: Path, trust: TrustStore, now: datetime, tmp_path: Path, name: str, problem: str
):
    err = reject(_tar_from(pkg, tmp_path / "x.tar", [tarfile.TarInfo(name)]), trust, now)
    assert err.reason == "unsafe_tar_member"
    assert err.message == f"tar member {name!r} escapes the package root: it {problem}"


def test_tar_device_member(pkg: Path, trust: TrustStore, now: datetime, tmp_path: Path):
    dev = tarfile.TarInfo("data/sda")
    dev.type = tarfile.BLKTYPE
    err = reject(_tar_from(pkg, tmp_path / "x.tar", [dev]), trust, now)
    assert err.message == "tar member 'data/sda' is a device or special file"


def test_tar_with_duplicate_members(pkg: Path, trust: TrustStore, now: datetime, tmp_path: Path):
    err = reject(
        _tar_from(pkg, tmp_path / "x.tar", [tarfile.TarInfo("data/chats/line-export.txt")]),
        trust,
        now,
    )
    assert err.reason == "duplicate_path"


def test_tar_extra_member(pkg: Path, trust: TrustStore, now: datetime, tmp_path: Path):
    err = reject(
        _tar_from(pkg, tmp_path / "x.tar", [tarfile.TarInfo("data/planted.bin")]), trust, now
    )
    assert err.message == "extra file not in the manifest: data/planted.bin"


def test_tar_with_a_top_folder_verifies(
    pkg: Path, trust: TrustStore, now: datetime, tmp_path: Path
):
    out = tmp_path / "wrapped.tar"
    with tarfile.open(out, "w:gz") as tar:
        tar.add(pkg, arcname="evidence-pkg")
    assert verify_package(out, trust=trust, now=now).file_count == len(FILES)


def test_not_a_tar(tmp_path: Path, trust: TrustStore, now: datetime):
    bogus = tmp_path / "bogus.tar"
    bogus.write_bytes(b"this is not an archive" * 100)
    assert reject(bogus, trust, now).reason == "bad_archive"
