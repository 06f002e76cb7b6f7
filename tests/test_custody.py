"""Offline custody bundle verification: a real ledger, real signed packages, every tampering."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from exchange.custody import timeline_lines, verify_bundle
from exchange.errors import VerificationError
from exchange.ledger import casechain, merkle
from exchange.ledger.checkpoint import Checkpoint
from exchange.ledger.entry import Action, Actor, NewEntry, make_entry
from exchange.ledger.signer import LogSigner
from exchange.model import canonical_bytes
from exchange.package import sign_manifest
from exchange.package.source import JWS_NAME
from exchange.signing import Signer
from exchange.storage import ledger_store
from exchange.storage.db import create_schema, make_engine, session_scope
from tests.builders import build, read_manifest
from tests.conftest import NOW, trusted

TH = Actor(agency="TH-RTP", country="TH", subject="client:th-investigator")
PH = Actor(agency="PH-NBI", country="PH", subject="client:ph-partner")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Story:
    """A case told through a real ledger: the bundle, its package folder and the log key."""

    bundle: dict[str, Any]
    package: Path
    package_id: str
    case_id: str
    log: LogSigner
    signer: Signer


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    create_schema(engine)
    yield engine
    engine.dispose()


def bundle_from_ledger(
    engine: Engine,
    case_id: str,
    packages: list[Path],
    keys: list[dict[str, Any]],
) -> dict[str, Any]:
    """What GET /v1/cases/{id}/custody serves, assembled from the ledger store directly."""
    with session_scope(engine) as session:
        note = ledger_store.latest_checkpoint(session)
        assert note is not None
        size = ledger_store.tree_size(session)
        entries = [
            {
                "seq": row.seq,
                "leaf": b64(bytes(row.data)),
                "inclusion": [b64(h) for h in ledger_store.inclusion_proof(session, row.seq, size)],
            }
            for row in ledger_store.entries_for_case(session, case_id)
        ]
    return {
        "format": "exchange.custody-bundle/v1",
        "case_id": case_id,
        "checkpoint": note,
        "entries": entries,
        "packages": [
            {
                "package_id": read_manifest(pkg)["package_id"],
                "manifest": read_manifest(pkg),
                "jws": (pkg / JWS_NAME).read_text().strip(),
            }
            for pkg in packages
        ],
        "signer_keys": keys,
    }


def tell_story(
    tmp_path: Path,
    engine: Engine,
    log: LogSigner,
    signer: Signer,
    *,
    recorded_key: str | None = None,
    **key_overrides: Any,
) -> Story:
    pkg = build(tmp_path, signer, created_at=NOW - timedelta(days=1))
    manifest = read_manifest(pkg)
    pid = manifest["package_id"]
    case_id = str(uuid.uuid4())
    other_case = str(uuid.uuid4())
    digest = hashlib.sha256(canonical_bytes(manifest)).hexdigest()
    size = sum(f["size"] for f in manifest["files"])
    story = [
        NewEntry(
            TH, Action.CASE_OPENED, case_id, None, {"case_ref": "TH-2026-0042", "title": "Scam"}
        ),
        NewEntry(TH, Action.CASE_OPENED, other_case, None, {}),
        NewEntry(TH, Action.PACKAGE_REGISTERED, case_id, pid, {"file_count": 3, "bytes": size}),
        NewEntry(
            TH,
            Action.PACKAGE_SEALED,
            case_id,
            pid,
            {
                "manifest_sha256": digest,
                "signer_key_id": recorded_key or signer.key_id,
                "file_count": 3,
                "bytes": size,
            },
        ),
        NewEntry(
            TH,
            Action.GRANT_ISSUED,
            case_id,
            None,
            {
                "grant_id": "g-1",
                "grantee_country": "PH",
                "grantee_agency": "PH-NBI",
                "legal_basis": {"type": "mla", "reference": "MLA-2026-7"},
                "expires_at": "2026-12-29T12:00:00Z",
            },
        ),
        NewEntry(
            PH,
            Action.BUNDLE_FETCHED,
            case_id,
            pid,
            {"files": ["chats/line-export.txt"], "file_count": 1, "bytes": 58},
        ),
        NewEntry(TH, Action.GRANT_REVOKED, case_id, None, {"grant_id": "g-1"}),
    ]
    for i, new in enumerate(story):
        ledger_store.append_committed(engine, new, log=log, now=NOW + timedelta(minutes=i))
    keys = [trusted(signer, "TH-RTP", **key_overrides).to_entry()]
    return Story(
        bundle=bundle_from_ledger(engine, case_id, [pkg], keys),
        package=pkg,
        package_id=pid,
        case_id=case_id,
        log=log,
        signer=signer,
    )


@pytest.fixture
def story(tmp_path: Path, sqlite_engine: Engine, log: LogSigner, th_signer: Signer) -> Story:
    return tell_story(tmp_path, sqlite_engine, log, th_signer)


def verify(story: Story, bundle: dict[str, Any] | None = None, **kwargs: Any):
    return verify_bundle(
        story.bundle if bundle is None else bundle,
        log_key=story.log.verifier().public_key,
        **kwargs,
    )


def fails(story: Story, bundle: dict[str, Any], **kwargs: Any) -> VerificationError:
    with pytest.raises(VerificationError) as info:
        verify(story, bundle, **kwargs)
    return info.value


def fetched_folder(tmp_path: Path, story: Story) -> Path:
    files = tmp_path / "fetched"
    files.mkdir()
    shutil.copytree(story.package, files / story.package_id)
    return files


# ------------------------------------------------------------------ what a good bundle proves


def test_a_bundle_from_the_real_ledger_verifies_with_the_log_key_alone(story: Story):
    report = verify(story)
    assert report.case_id == story.case_id
    assert report.tree_size == 7
    assert [e.seq for e in report.events] == [0, 2, 3, 4, 5, 6]
    assert [e.action for e in report.events] == [
        "case.opened",
        "package.registered",
        "package.sealed",
        "grant.issued",
        "bundle.fetched",
        "grant.revoked",
    ]
    [package] = report.packages
    assert package.package_id == story.package_id
    assert package.signer_key_id == story.signer.key_id
    assert package.sealed_seq == 3
    assert (package.file_count, package.files_verified) == (3, False)
    assert report.files_checked == 0


def test_the_timeline_reads_as_sentences(story: Story):
    lines = timeline_lines(verify(story))
    assert lines[0].endswith("TH-RTP (TH) client:th-investigator: case opened (TH-2026-0042: Scam)")
    assert (
        "read access granted to PH-NBI (PH) under mla MLA-2026-7 until 2026-12-29T12:00:00Z"
        in lines[3]
    )
    assert lines[4].endswith(
        f"PH-NBI (PH) client:ph-partner: fetched data/chats/line-export.txt (58 bytes) "
        f"[package {story.package_id}]"
    )
    assert lines[5].endswith("grant g-1 revoked")
    assert lines[1].startswith("#2      2026-11-29T12:02:00.000000Z")


def test_fetched_files_are_checked_when_given(story: Story, tmp_path: Path):
    report = verify(story, files=fetched_folder(tmp_path, story))
    assert report.files_checked == 3
    assert report.bytes_checked == sum(f["size"] for f in read_manifest(story.package)["files"])
    assert report.packages[0].files_verified


def test_a_key_revoked_after_sealing_still_vouches_for_what_it_sealed(
    tmp_path: Path, sqlite_engine: Engine, log: LogSigner, th_signer: Signer
):
    # The ledger proves the package was sealed before the revocation.
    story = tell_story(tmp_path, sqlite_engine, log, th_signer, revoked_at=NOW + timedelta(hours=1))
    verify(story)
    # ...but a key revoked before the seal does not.
    story.bundle["signer_keys"][0]["revoked_at"] = (NOW - timedelta(hours=1)).isoformat()
    error = fails(story, story.bundle)
    assert error.reason == "revoked_key"
    assert error.message == (
        f"package {story.package_id}: manifest signature does not verify: key "
        f"{th_signer.key_id} of agency TH-RTP was revoked at 2026-11-29T11:00:00+00:00"
    )


def test_a_verifiers_own_trust_store_replaces_the_bundles_keys(story: Story, ph_signer: Signer):
    from exchange.trust import TrustStore

    verify(story, trust=TrustStore([trusted(story.signer, "TH-RTP")]))
    error = fails(story, story.bundle, trust=TrustStore([trusted(ph_signer, "PH-NBI")]))
    assert error.message == (
        f"package {story.package_id}: manifest signature does not verify: "
        f"key {story.signer.key_id} is not in the trust store"
    )


# ------------------------------------------------------------------ each tampering, by name


def test_tampered_entry_bytes_fail_the_inclusion_proof(story: Story):
    bundle = copy.deepcopy(story.bundle)
    target = bundle["entries"][3]  # the grant: widen it to every agency of PH
    entry = json.loads(base64.b64decode(target["leaf"]))
    del entry["details"]["grantee_agency"]
    target["leaf"] = b64(canonical_bytes(entry))
    error = fails(story, bundle)
    assert error.reason == "bad_inclusion_proof"
    assert error.message.startswith("ledger entry 4 is not in the signed ledger: computed root ")


def test_a_tampered_proof_hash_fails(story: Story):
    bundle = copy.deepcopy(story.bundle)
    proof = bundle["entries"][0]["inclusion"]
    proof[0] = b64(bytes(32))
    error = fails(story, bundle)
    assert error.reason == "bad_inclusion_proof"
    assert error.message.startswith("ledger entry 0 is not in the signed ledger: computed root ")


def test_a_dropped_proof_hash_fails(story: Story):
    bundle = copy.deepcopy(story.bundle)
    bundle["entries"][1]["inclusion"].pop()
    error = fails(story, bundle)
    assert (
        error.message
        == "ledger entry 2 is not in the signed ledger: proof has 2 hashes, expected 3"
    )


def test_a_tampered_checkpoint_signature_fails(story: Story):
    bundle = copy.deepcopy(story.bundle)
    body, _, sig_line = bundle["checkpoint"].rstrip("\n").rpartition("\n")
    dash, name, blob = sig_line.split(" ")
    raw = bytearray(base64.b64decode(blob))
    raw[10] ^= 1
    bundle["checkpoint"] = f"{body}\n{dash} {name} {b64(bytes(raw))}\n"
    error = fails(story, bundle)
    assert error.reason == "bad_checkpoint_signature"
    assert error.message.startswith("ledger checkpoint does not verify with the given log key: ")


def test_a_checkpoint_from_another_log_key_fails(story: Story):
    with pytest.raises(VerificationError) as info:
        verify_bundle(story.bundle, log_key=Signer.generate().public_key)
    assert info.value.reason == "bad_checkpoint_signature"


def test_a_rewritten_checkpoint_root_fails(story: Story):
    bundle = copy.deepcopy(story.bundle)
    lines = bundle["checkpoint"].split("\n")
    lines[2] = b64(bytes(32))
    bundle["checkpoint"] = "\n".join(lines)
    assert fails(story, bundle).reason == "bad_checkpoint_signature"


def test_an_edited_manifest_fails_against_the_sealed_digest(story: Story):
    bundle = copy.deepcopy(story.bundle)
    manifest = bundle["packages"][0]["manifest"]
    manifest["files"][0]["sha256"] = "0" * 64
    digest = hashlib.sha256(canonical_bytes(manifest)).hexdigest()
    sealed = hashlib.sha256(canonical_bytes(read_manifest(story.package))).hexdigest()
    error = fails(story, bundle)
    assert error.reason == "manifest_mismatch"
    assert error.message == (
        f"package {story.package_id}: manifest sha256 {digest} is not the digest {sealed} "
        "sealed in ledger entry 3"
    )


def test_a_swapped_manifest_fails_even_when_validly_signed(story: Story, tmp_path: Path):
    # A second package, signed by the same key, with the first one's id: a perfect signature.
    other = build(tmp_path, story.signer, created_at=NOW - timedelta(hours=2), out_name="other",
                  files={"a.txt": b"something else"})  # fmt: skip
    manifest = read_manifest(other)
    manifest["package_id"] = story.package_id
    jws = sign_manifest(manifest, story.signer)
    bundle = copy.deepcopy(story.bundle)
    bundle["packages"][0] = {"package_id": story.package_id, "manifest": manifest, "jws": jws}
    error = fails(story, bundle)
    assert error.reason == "manifest_mismatch"
    assert "sealed in ledger entry 3" in error.message


def test_a_jws_over_other_bytes_fails(story: Story):
    bundle = copy.deepcopy(story.bundle)
    head, _, sig = bundle["packages"][0]["jws"].split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[0] ^= 1
    bundle["packages"][0]["jws"] = (
        f"{head}..{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"
    )
    error = fails(story, bundle)
    assert error.reason == "bad_signature"
    assert error.message == (
        f"package {story.package_id}: manifest signature does not verify: "
        "manifest signature does not verify"
    )


def test_a_substituted_signer_key_fails(story: Story):
    bundle = copy.deepcopy(story.bundle)
    impostor = Signer.generate()
    bundle["signer_keys"][0] = trusted(impostor, "TH-RTP").to_entry()
    error = fails(story, bundle)
    assert error.reason == "unknown_key"
    assert error.message == (
        f"package {story.package_id}: manifest signature does not verify: "
        f"key {story.signer.key_id} is not in the trust store"
    )


def test_a_signer_key_whose_id_lies_fails(story: Story):
    bundle = copy.deepcopy(story.bundle)
    impostor = Signer.generate()
    bundle["signer_keys"][0]["public_key_pem"] = trusted(impostor, "TH-RTP").to_entry()[
        "public_key_pem"
    ]
    error = fails(story, bundle)
    assert error.reason == "bad_signer_key"
    assert error.message == (
        f"bundle signer key is invalid: signer key 0: key_id {story.signer.key_id} does not "
        f"match the public key ({impostor.key_id})"
    )


def test_a_manifest_signed_by_another_key_than_the_ledger_records_fails(
    tmp_path: Path, sqlite_engine: Engine, log: LogSigner, th_signer: Signer
):
    story = tell_story(tmp_path, sqlite_engine, log, th_signer, recorded_key="ab" * 16)
    error = fails(story, story.bundle)
    assert error.reason == "manifest_mismatch"
    assert error.message == (
        f"package {story.package_id}: signed by key {th_signer.key_id}, but ledger entry 3 "
        f"records key {'ab' * 16}"
    )


def test_tampered_file_bytes_fail(story: Story, tmp_path: Path):
    files = fetched_folder(tmp_path, story)
    target = files / story.package_id / "data" / "chats" / "line-export.txt"
    target.chmod(0o644)
    data = target.read_bytes()
    target.write_bytes(data.replace(b"50,000", b"90,000"))
    sealed = next(
        f["sha256"]
        for f in read_manifest(story.package)["files"]
        if f["path"] == "chats/line-export.txt"
    )
    actual = hashlib.sha256(target.read_bytes()).hexdigest()
    error = fails(story, story.bundle, files=files)
    assert error.reason == "hash_mismatch"
    assert error.path == "chats/line-export.txt"
    assert error.message == (
        f"package {story.package_id}: hash mismatch for data/chats/line-export.txt: "
        f"sealed sha256 {sealed}, file has {actual}"
    )


def test_a_missing_fetched_file_fails(story: Story, tmp_path: Path):
    files = fetched_folder(tmp_path, story)
    missing = files / story.package_id / "data" / "screenshots" / "wallet.png"
    missing.unlink()
    error = fails(story, story.bundle, files=files)
    assert error.reason == "file_missing"
    assert error.message == f"package {story.package_id}: file missing: {missing}"


def test_an_entry_of_another_case_is_refused(story: Story, sqlite_engine: Engine):
    bundle = copy.deepcopy(story.bundle)
    with session_scope(sqlite_engine) as session:
        size = ledger_store.tree_size(session)
        row = ledger_store.get_entry(session, 1)
        bundle["entries"].insert(1, {
            "seq": 1,
            "leaf": b64(bytes(row.data)),
            "inclusion": [b64(h) for h in ledger_store.inclusion_proof(session, 1, size)],
        })  # fmt: skip
    error = fails(story, bundle)
    assert error.reason == "case_mismatch"
    assert error.message == f"ledger entry 1 is about case {row.case_id}, not {story.case_id}"


def test_a_sealed_package_left_out_of_the_bundle_is_refused(story: Story):
    bundle = copy.deepcopy(story.bundle)
    bundle["packages"] = []
    error = fails(story, bundle)
    assert error.message == (
        f"package {story.package_id} was sealed but its manifest is not in the bundle"
    )


def test_a_manifest_without_its_seal_entry_is_refused(story: Story):
    bundle = copy.deepcopy(story.bundle)
    del bundle["entries"][2]  # package.sealed
    error = fails(story, bundle)
    assert error.reason == "not_sealed"
    assert error.message == f"package {story.package_id} has no package.sealed entry in the bundle"


def test_a_broken_hash_chain_is_caught_even_inside_a_signed_tree(th_signer: Signer):
    # A log operator who signed a tree over entries that do not chain: the proofs hold, the chain
    # does not.
    log = LogSigner.from_signer(Signer.generate(), origin="rogue.example/ledger")
    case_id = str(uuid.uuid4())
    _, first_bytes = make_entry(
        NewEntry(TH, Action.CASE_OPENED, case_id),
        seq=0,
        prev="0" * 64,
        time=NOW,
        case_link=(0, casechain.genesis(case_id).hex()),
    )
    _, second_bytes = make_entry(
        NewEntry(TH, Action.GRANT_REVOKED, case_id, None, {"grant_id": "g"}),
        seq=1,
        prev="ab" * 32,
        time=NOW,
        case_link=(1, "ab" * 32),
    )
    leaves = [merkle.leaf_hash(first_bytes), merkle.leaf_hash(second_bytes)]
    note = log.sign(Checkpoint(origin=log.origin, size=2, root_hash=merkle.root(leaves)))
    bundle = {
        "format": "exchange.custody-bundle/v1",
        "case_id": case_id,
        "checkpoint": note,
        "entries": [
            {"seq": 0, "leaf": b64(first_bytes), "inclusion": [b64(leaves[1])]},
            {"seq": 1, "leaf": b64(second_bytes), "inclusion": [b64(leaves[0])]},
        ],
        "packages": [],
        "signer_keys": [],
    }
    with pytest.raises(VerificationError) as info:
        verify_bundle(bundle, log_key=log.verifier().public_key)
    expected = hashlib.sha256(first_bytes).hexdigest()
    assert info.value.reason == "chain_broken"
    assert info.value.message == (
        f"ledger entry 1 does not chain to entry 0: prev {'ab' * 32} is not {expected}"
    )


def test_a_pinned_origin_must_match(story: Story):
    error = fails(story, story.bundle, origin="other.example/ledger")
    assert error.reason == "bad_checkpoint_signature"  # the origin is also the key name


def test_not_an_object_is_refused(story: Story):
    error = fails(story, [])  # type: ignore[arg-type]
    assert error.message == "custody bundle is not a JSON object"


@pytest.mark.parametrize("missing", ["checkpoint", "entries", "case_id"])
def test_a_bundle_missing_a_part_is_refused(story: Story, missing: str):
    bundle = copy.deepcopy(story.bundle)
    del bundle[missing]
    assert fails(story, bundle).reason == "bad_bundle"


# ------------------------------------------------------------------ the service's own bundle


def test_the_bundle_the_service_exports_verifies(
    tmp_path: Path, sqlite_engine: Engine, log: LogSigner
):
    """Through the real use cases (no HTTP): register, upload, seal, grant, fetch, export."""
    from exchange.auth import role_scopes
    from exchange.model import Principal, Role
    from exchange.service import cases, custody, fetch, grants, packages
    from exchange.service.agencies import DevClient, bootstrap_dev_registry
    from exchange.settings import DEV_KEY_DIR
    from exchange.storage.local import LocalBlobStore
    from exchange.trust import TrustStore

    now = datetime.now(UTC)
    store = LocalBlobStore(tmp_path / "blobs")
    with session_scope(sqlite_engine) as session:
        bootstrap_dev_registry(
            session,
            log=log,
            now=now,
            keys=list(TrustStore.from_directory(DEV_KEY_DIR / "trust")),
            clients=[DevClient("th", "TH-RTP", Role.INVESTIGATOR)],
        )

    def principal(client: str, agency: str, role: Role) -> Principal:
        return Principal(
            client_id=client,
            agency=agency,
            country=agency[:2],
            role=role,
            scopes=frozenset(role_scopes(role)),
            token_id="t",
            expires_at=now + timedelta(minutes=5),
        )

    th = principal("th", "TH-RTP", Role.INVESTIGATOR)
    ph = principal("ph", "PH-NBI", Role.PARTNER)
    th_key = Signer.from_pem((DEV_KEY_DIR / "TH-RTP.key.pem").read_bytes())
    pkg = build(tmp_path, th_key, created_at=now - timedelta(minutes=1))
    manifest = read_manifest(pkg)
    limits = packages.Limits(max_file_bytes=1 << 30, max_files_per_package=100)
    with session_scope(sqlite_engine) as session:
        case_id = cases.open_case(
            session, log=log, principal=th, now=now, case_ref="R", title="T", classification="c"
        ).id
        packages.register_package(
            session, store=store, log=log, principal=th, now=now, case_id=case_id,
            manifest=manifest, jws=(pkg / JWS_NAME).read_text().strip(), limits=limits,
        )  # fmt: skip
    for entry in manifest["files"]:
        with (pkg / "data" / entry["path"]).open("rb") as body:
            packages.upload_file(
                sqlite_engine, store=store, principal=th, now=now, case_id=case_id,
                package_id=manifest["package_id"], path=entry["path"], body=body,
                content_length=entry["size"], limits=limits,
            )  # fmt: skip
    with session_scope(sqlite_engine) as session:
        packages.seal_package(
            session, store=store, log=log, principal=th, now=now, case_id=case_id,
            package_id=manifest["package_id"],
        )  # fmt: skip
        grants.issue_grant(
            session, log=log, principal=th, now=now, case_id=case_id, grantee_country="PH",
            grantee_agency=None, scope=["read"], legal_basis_type="mla",
            legal_basis_reference="MLA-1", expires_at=now + timedelta(days=1),
        )  # fmt: skip
    download = fetch.open_file(
        sqlite_engine, store=store, log=log, principal=ph, now=now, case_id=case_id,
        package_id=manifest["package_id"], path="chats/line-export.txt",
    )  # fmt: skip
    assert b"".join(download.chunks).startswith("ข้อความ".encode())
    bundle = json.loads(
        custody.export_bundle(sqlite_engine, log=log, principal=th, now=now, case_id=case_id)
    )
    report = verify_bundle(json.loads(json.dumps(bundle)), log_key=log.verifier().public_key)
    assert [e.action for e in report.events] == [
        "case.opened",
        "package.registered",
        "package.sealed",
        "grant.issued",
        "bundle.fetched",
        "custody.exported",
    ]
    assert report.packages[0].package_id == manifest["package_id"]
    files = tmp_path / "fetched"
    files.mkdir()
    shutil.copytree(pkg, files / manifest["package_id"])
    assert verify_bundle(bundle, log_key=log.verifier().public_key, files=files).files_checked == 3
