"""Custody bundle v2 through the real use cases on SQLite and PostgreSQL: complete, minimally
disclosed, signer keys proven; and every way of cutting, reordering or forging one refused.

The story: TH opens a case, uploads and seals a package, grants PH and VN, VN and PH fetch, TH
revokes VN's grant, PH exports its bundle, TH's prosecutor exports the full one.
"""

from __future__ import annotations

import base64
import copy
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from exchange.auth import role_scopes
from exchange.custody import verify_bundle
from exchange.errors import VerificationError
from exchange.ledger import merkle
from exchange.ledger.signer import LogSigner
from exchange.model import Principal, Role
from exchange.package.source import JWS_NAME
from exchange.schema import schema_errors
from exchange.service import cases, custody, fetch, grants, packages
from exchange.service.agencies import DevClient, bootstrap_dev_registry
from exchange.settings import DEV_KEY_DIR
from exchange.signing import Signer
from exchange.storage import ledger_store
from exchange.storage.db import create_schema, make_engine, session_scope
from exchange.storage.local import LocalBlobStore
from exchange.trust import TrustStore
from tests.builders import build, read_manifest

VN_REFERENCE = "VN-MLA-2026-0099"
PH_REFERENCE = "PH-MLA-2026-0042"


def principal(client: str, agency: str, role: Role, now: datetime) -> Principal:
    return Principal(
        client_id=client,
        agency=agency,
        country=agency[:2],
        role=role,
        scopes=frozenset(role_scopes(role)),
        token_id="t",
        expires_at=now + timedelta(minutes=5),
    )


@dataclass
class Story:
    engine: Engine
    log: LogSigner
    package: Path
    package_id: str
    case_id: str
    th: Principal
    ph: Principal
    vn: Principal
    now: datetime

    def export(self, who: Principal) -> dict[str, Any]:
        body = custody.export_bundle(
            self.engine, log=self.log, principal=who, now=self.now, case_id=self.case_id
        )
        return json.loads(body)  # type: ignore[no-any-return]

    def verify(self, bundle: dict[str, Any], **kwargs: Any):
        return verify_bundle(bundle, log_key=self.log.verifier().public_key, **kwargs)

    def fails(self, bundle: dict[str, Any], **kwargs: Any) -> VerificationError:
        with pytest.raises(VerificationError) as caught:
            self.verify(bundle, **kwargs)
        return caught.value


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'exchange.db'}"
    else:
        url = request.getfixturevalue("fresh_pg_url")
    engine = make_engine(url)
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def story(tmp_path: Path, engine: Engine, log: LogSigner) -> Story:
    now = datetime.now(UTC)
    store = LocalBlobStore(tmp_path / "blobs")
    with session_scope(engine) as session:
        bootstrap_dev_registry(
            session,
            log=log,
            now=now,
            keys=list(TrustStore.from_directory(DEV_KEY_DIR / "trust")),
            clients=[DevClient("th", "TH-RTP", Role.INVESTIGATOR)],
        )
    th = principal("th", "TH-RTP", Role.INVESTIGATOR, now)
    ph = principal("ph", "PH-NBI", Role.PARTNER, now)
    vn = principal("vn", "VN-C06", Role.PARTNER, now)
    th_key = Signer.from_pem((DEV_KEY_DIR / "TH-RTP.key.pem").read_bytes())
    pkg = build(tmp_path, th_key, created_at=now - timedelta(minutes=1))
    manifest = read_manifest(pkg)
    pid = manifest["package_id"]
    limits = packages.Limits(max_file_bytes=1 << 30, max_files_per_package=100)
    with session_scope(engine) as session:
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
                engine, store=store, principal=th, now=now, case_id=case_id, package_id=pid,
                path=entry["path"], body=body, content_length=entry["size"], limits=limits,
            )  # fmt: skip
    with session_scope(engine) as session:
        packages.seal_package(
            session, store=store, log=log, principal=th, now=now, case_id=case_id, package_id=pid
        )
        for country, agency, reference in (
            ("PH", None, PH_REFERENCE),
            ("VN", "VN-C06", VN_REFERENCE),
        ):
            grants.issue_grant(
                session, log=log, principal=th, now=now, case_id=case_id,
                grantee_country=country, grantee_agency=agency, scope=["read"],
                legal_basis_type="mla", legal_basis_reference=reference,
                expires_at=now + timedelta(days=1),
            )  # fmt: skip
    for who in (vn, ph):
        download = fetch.open_file(
            engine, store=store, log=log, principal=who, now=now, case_id=case_id,
            package_id=pid, path="chats/line-export.txt",
        )  # fmt: skip
        b"".join(download.chunks)
    with session_scope(engine) as session:
        vn_grant = next(
            g
            for g in grants.list_grants(session, principal=th, now=now, case_id=case_id)
            if g.grantee_country == "VN"
        )
        grants.revoke_grant(
            session, log=log, principal=th, now=now, case_id=case_id, grant_id=vn_grant.id
        )
    return Story(engine, log, pkg, pid, case_id, th, ph, vn, now)


def actions(report: Any) -> list[str]:
    return [e.action for e in report.events]


# --- the story verifies, for each audience ------------------------------------------------


def test_the_prosecutors_full_bundle_is_complete_and_verifies(story: Story):
    bundle = story.export(story.th)
    assert schema_errors("custody-bundle.v2.json", bundle) == []
    report = story.verify(bundle)
    assert actions(report) == [
        "case.opened",
        "package.registered",
        "package.sealed",
        "grant.issued",
        "grant.issued",
        "bundle.fetched",
        "bundle.fetched",
        "grant.revoked",
        "custody.exported",
    ]
    assert report.case_entries == 9
    assert report.redacted == 0
    assert report.audience == ("TH-RTP", "TH", "owner")
    assert report.tree_size == report.events[-1].seq + 1
    # Signer keys come from their proven registrations, with their seqs.
    assert report.keys_from_log
    [origin] = report.key_origins
    assert origin.agency == "TH-RTP"
    with session_scope(story.engine) as session:
        reg = json.loads(ledger_store.get_entry(session, origin.registered_seq).data)
    assert reg["action"] == "key.registered"
    assert reg["details"]["key_id"] == origin.key_id
    files = story.package.parent / "fetched"
    shutil.copytree(story.package, files / story.package_id)
    assert story.verify(bundle, files=files).files_checked == 3


def test_a_partners_bundle_redacts_every_other_partner_and_still_verifies(story: Story):
    bundle = story.export(story.ph)
    assert schema_errors("custody-bundle.v2.json", bundle) == []
    report = story.verify(bundle)
    assert actions(report) == [
        "case.opened",
        "package.registered",
        "package.sealed",
        "grant.issued",  # PH's own grant
        "redacted",  # VN's grant
        "redacted",  # VN's fetch
        "bundle.fetched",  # PH's own fetch
        "redacted",  # revocation of VN's grant
        "custody.exported",
    ]
    assert report.case_entries == 9
    assert report.redacted == 3
    assert report.audience == ("PH-NBI", "PH", "partner")


def test_the_second_export_counts_the_first(story: Story):
    story.export(story.ph)
    report = story.verify(story.export(story.th))
    assert report.case_entries == 10
    assert actions(report)[-2:] == ["custody.exported", "custody.exported"]


def _all_text(bundle: dict[str, Any]) -> str:
    # Everything a partner holds: the JSON, and every base64 value decoded as far as it goes.
    text = json.dumps(bundle, ensure_ascii=False)
    decoded = []
    for item in bundle["entries"]:
        if "leaf_hash" in item:
            decoded.append(base64.b64decode(item["leaf_hash"]).decode("latin-1"))
    return text + "".join(decoded)


def test_a_partners_bundle_names_no_other_partner_anywhere(story: Story):
    text = _all_text(story.export(story.ph))
    for secret in ("VN-C06", '"VN"', VN_REFERENCE, "client:vn"):
        assert secret not in text
    # PH's own part is there.
    assert PH_REFERENCE in text


def test_every_entry_type_of_another_partner_is_redacted(story: Story):
    owner_view = story.export(story.th)
    partner_view = story.export(story.ph)
    by_seq = {item["seq"]: item for item in partner_view["entries"]}
    for item in owner_view["entries"]:
        entry = item["entry"]
        other_partner = entry["actor"]["agency"] == "VN-C06" or "VN" in json.dumps(entry["details"])
        if other_partner:
            stub = by_seq[item["seq"]]
            assert set(stub) == {"seq", "case_seq", "leaf_hash"}, entry["action"]
    redacted_actions = {
        item["entry"]["action"]
        for item in owner_view["entries"]
        if "leaf_hash" in by_seq.get(item["seq"], {})
    }
    # VN's grant, fetch and revocation; and TH's own export, which is not PH's business either.
    assert redacted_actions == {
        "grant.issued",
        "bundle.fetched",
        "grant.revoked",
        "custody.exported",
    }


# --- cut, reorder, forge ------------------------------------------------------------------


@pytest.fixture
def bundle(story: Story) -> dict[str, Any]:
    return story.export(story.th)


@pytest.fixture
def partner_bundle(story: Story) -> dict[str, Any]:
    return story.export(story.ph)


def without(bundle: dict[str, Any], *indexes: int) -> dict[str, Any]:
    damaged = copy.deepcopy(bundle)
    damaged["entries"] = [e for i, e in enumerate(damaged["entries"]) if i not in indexes]
    return damaged


def test_removing_the_first_entry_is_named(story: Story, bundle: dict[str, Any]):
    error = story.fails(without(bundle, 0))
    assert error.reason == "case_entry_missing"
    assert error.message.startswith("case entry 1 of 9 is missing (before ledger entry")


def test_removing_a_middle_entry_is_named(story: Story, bundle: dict[str, Any]):
    seqs = [e["seq"] for e in bundle["entries"]]
    error = story.fails(without(bundle, 4))
    assert error.reason == "case_entry_missing"
    assert error.message == (
        f"case entry 5 of 9 is missing (after ledger entry {seqs[3]} before ledger entry {seqs[5]})"
    )


def test_removing_the_revocation_and_a_partners_fetches_is_named(
    story: Story, bundle: dict[str, Any]
):
    # The attack of the issue: drop grant.revoked and every fetch of one partner.
    damaged = copy.deepcopy(bundle)
    damaged["entries"] = [
        e
        for e in damaged["entries"]
        if e["entry"]["action"] != "grant.revoked"
        and not (
            e["entry"]["action"] == "bundle.fetched" and e["entry"]["actor"]["agency"] == "VN-C06"
        )
    ]
    error = story.fails(damaged)
    assert error.reason == "case_entry_missing"
    assert error.message.startswith("case entry 6 of 9 is missing")


def test_removing_the_newest_entries_is_refused(story: Story, bundle: dict[str, Any]):
    error = story.fails(without(bundle, 8))
    assert error.reason == "case_incomplete"
    assert "the newest case entries are missing" in error.message
    error = story.fails(without(bundle, 7, 8))
    assert error.reason == "case_incomplete"


def test_removing_a_stub_is_named(story: Story, partner_bundle: dict[str, Any]):
    stub = next(i for i, e in enumerate(partner_bundle["entries"]) if "leaf_hash" in e)
    error = story.fails(without(partner_bundle, stub))
    assert error.reason == "case_entry_missing"
    assert error.message.startswith(f"case entry {stub + 1} of 9 is missing")


def test_two_swapped_entries_are_refused(story: Story, bundle: dict[str, Any]):
    damaged = copy.deepcopy(bundle)
    entries = damaged["entries"]
    entries[3], entries[4] = entries[4], entries[3]
    error = story.fails(damaged)
    assert error.reason == "case_order"
    assert error.message == (
        f"case entries out of order: ledger entry {entries[3]['seq']} (case entry 5) is listed "
        "where case entry 4 belongs"
    )


def test_swapped_stub_numbers_are_refused(story: Story, partner_bundle: dict[str, Any]):
    damaged = copy.deepcopy(partner_bundle)
    stubs = [e for e in damaged["entries"] if "leaf_hash" in e]
    stubs[0]["leaf_hash"], stubs[1]["leaf_hash"] = stubs[1]["leaf_hash"], stubs[0]["leaf_hash"]
    error = story.fails(damaged)
    assert error.reason == "case_chain_broken"


def test_a_stub_with_another_leaf_hash_is_refused(story: Story, partner_bundle: dict[str, Any]):
    damaged = copy.deepcopy(partner_bundle)
    stub = next(e for e in damaged["entries"] if "leaf_hash" in e)
    stub["leaf_hash"] = base64.b64encode(merkle.leaf_hash(b"another entry")).decode()
    error = story.fails(damaged)
    assert error.reason == "case_chain_broken"
    assert error.message.startswith("the case's entries do not lead to its custody export")


def test_an_unredacted_stub_with_forged_content_is_refused(
    story: Story, bundle: dict[str, Any], partner_bundle: dict[str, Any]
):
    # PH fills a stub in with what it claims the entry said: VN's grant, made harmless.
    damaged = copy.deepcopy(partner_bundle)
    index = next(i for i, e in enumerate(damaged["entries"]) if "leaf_hash" in e)
    full = copy.deepcopy(bundle["entries"][index]["entry"])
    full["details"]["legal_basis"]["reference"] = "NOTHING-TO-SEE"
    damaged["entries"][index] = {"seq": full["seq"], "entry": full}
    error = story.fails(damaged)
    assert error.reason == "case_chain_broken"
    # The real content in place of the stub is fine: un-redacting truthfully changes nothing.
    honest = copy.deepcopy(partner_bundle)
    honest["entries"][index] = copy.deepcopy(bundle["entries"][index])
    assert story.verify(honest).redacted == story.verify(partner_bundle).redacted - 1


def test_an_edited_disclosed_entry_is_refused(story: Story, bundle: dict[str, Any]):
    damaged = copy.deepcopy(bundle)
    grant = next(e for e in damaged["entries"] if e["entry"]["action"] == "grant.issued")
    grant["entry"]["details"]["expires_at"] = "2099-01-01T00:00:00+00:00"
    error = story.fails(damaged)
    assert error.reason == "case_chain_broken"
    assert "an entry of the case was altered, replaced, reordered or left out" in error.message


def test_an_entry_moved_from_another_cases_bundle_is_refused(story: Story, bundle: dict[str, Any]):
    with session_scope(story.engine) as session:
        other = cases.open_case(
            session, log=story.log, principal=story.th, now=story.now,
            case_ref="R2", title="T2", classification="c",
        ).id  # fmt: skip
    foreign = json.loads(
        custody.export_bundle(
            story.engine, log=story.log, principal=story.th, now=story.now, case_id=other
        )
    )
    damaged = copy.deepcopy(bundle)
    damaged["entries"][1] = foreign["entries"][0]
    error = story.fails(damaged)
    assert error.reason in ("case_mismatch", "case_order")
    moved = copy.deepcopy(bundle)
    moved["entries"].insert(1, foreign["entries"][0])
    error = story.fails(moved)
    assert error.reason == "case_mismatch" or error.reason == "case_order"


def test_a_bundle_against_an_older_checkpoint_is_refused(story: Story, bundle: dict[str, Any]):
    with session_scope(story.engine) as session:
        older = ledger_store.checkpoint_at(session, bundle["tree_size"] - 1)
    damaged = copy.deepcopy(bundle)
    damaged["checkpoint"] = older
    error = story.fails(damaged)
    assert error.reason == "checkpoint_mismatch"
    assert "covers" in error.message


def test_a_bundle_against_a_newer_checkpoint_is_refused(story: Story, bundle: dict[str, Any]):
    story.export(story.ph)  # the log grows past the bundle's export
    with session_scope(story.engine) as session:
        newer = ledger_store.latest_checkpoint(session)
    damaged = copy.deepcopy(bundle)
    damaged["checkpoint"] = newer
    error = story.fails(damaged)
    assert error.reason == "checkpoint_mismatch"


def test_a_checkpoint_of_a_rewritten_log_is_refused(story: Story, bundle: dict[str, Any]):
    # Same log key, same size, other history: the export entry's proof no longer leads there.
    from exchange.ledger.checkpoint import Checkpoint, parse_checkpoint_note

    checkpoint = parse_checkpoint_note(bundle["checkpoint"])[0]
    damaged = copy.deepcopy(bundle)
    damaged["checkpoint"] = story.log.sign(
        Checkpoint(origin=checkpoint.origin, size=checkpoint.size, root_hash=b"\x01" * 32)
    )
    error = story.fails(damaged)
    assert error.reason == "case_chain_broken"


def test_a_missing_key_registration_is_refused(story: Story, bundle: dict[str, Any]):
    damaged = copy.deepcopy(bundle)
    damaged["key_entries"] = []
    error = story.fails(damaged)
    assert error.reason == "key_unregistered"
    kid = bundle["signer_keys"][0]["key_id"]
    assert error.message == (
        f"signer key {kid} has no key.registered entry in the bundle: its origin is not proven"
    )


def test_an_altered_key_registration_is_refused(story: Story, bundle: dict[str, Any]):
    damaged = copy.deepcopy(bundle)
    damaged["key_entries"][0]["entry"]["details"]["not_before"] = "2000-01-01T00:00:00+00:00"
    error = story.fails(damaged)
    assert error.reason == "key_registration_invalid"
    assert error.message.startswith(
        f"key entry {bundle['key_entries'][0]['seq']} is not in the signed ledger"
    )


def test_a_key_registered_for_another_agency_is_refused(story: Story, bundle: dict[str, Any]):
    damaged = copy.deepcopy(bundle)
    damaged["signer_keys"][0]["agency"] = "PH-NBI"
    error = story.fails(damaged)
    assert error.reason == "key_registration_mismatch"


def test_the_registration_window_not_the_bundles_decides(story: Story, bundle: dict[str, Any]):
    # The bundle's own trust entry lies about the window; the proven registration still rules.
    damaged = copy.deepcopy(bundle)
    damaged["signer_keys"][0]["not_after"] = "2000-01-02T00:00:00+00:00"
    damaged["signer_keys"][0]["not_before"] = "2000-01-01T00:00:00+00:00"
    assert story.verify(damaged).packages


def test_v1_bundles_still_verify(story: Story):
    # A v1 bundle, as the exchange served before v2, over the same (now v2) ledger.
    with session_scope(story.engine) as session:
        note = ledger_store.latest_checkpoint(session)
        assert note is not None
        size = ledger_store.tree_size(session)
        rows = ledger_store.entries_for_case(session, story.case_id)
        entries = [
            {
                "seq": r.seq,
                "leaf": base64.b64encode(bytes(r.data)).decode(),
                "inclusion": [
                    base64.b64encode(h).decode()
                    for h in ledger_store.inclusion_proof(session, r.seq, size)
                ],
            }
            for r in rows
        ]
        from exchange.service.packages import signer_entry

        manifest = read_manifest(story.package)
        v1 = {
            "format": "exchange.custody-bundle/v1",
            "case_id": story.case_id,
            "checkpoint": note,
            "entries": entries,
            "packages": [
                {
                    "package_id": story.package_id,
                    "manifest": manifest,
                    "jws": (story.package / JWS_NAME).read_text().strip(),
                }
            ],
            "signer_keys": [
                signer_entry(session, json.loads(rows[2].data)["details"]["signer_key_id"])
            ],
        }
    report = story.verify(v1)
    assert report.case_entries is None
    assert len(report.events) == 8


def test_writers_do_not_wait_for_an_export(story: Story):
    # The bundle is built in a read-only transaction after the export entry has committed:
    # while that transaction is open, another writer appends and commits. (With the export
    # built inside a write transaction, as before v2, this test fails: the writer waits.)
    import threading

    from exchange.ledger.entry import Action, Actor, NewEntry

    with session_scope(story.engine) as session:
        export = custody.record_export(
            session, log=story.log, principal=story.ph, now=story.now, case_id=story.case_id
        )
    committed = threading.Event()

    def write() -> None:
        ledger_store.append_committed(
            story.engine,
            NewEntry(Actor(agency="TH-RTP", country="TH", subject="client:th"),
                     Action.CASE_OPENED, "another-case", None, {}),
            log=story.log,
            now=story.now,
        )  # fmt: skip
        committed.set()

    with session_scope(story.engine, read_only=True) as reading:
        body = custody.build_bundle(reading, export=export, origin=story.log.origin)
        writer = threading.Thread(target=write)
        writer.start()
        assert committed.wait(30), "an append waited for the export's read transaction"
        # Still inside the export's transaction: what it built stays the export's view.
        assert json.loads(body)["tree_size"] == export.seq + 1
    writer.join()
    assert story.verify(json.loads(body)).case_entries == 9


def _write_v1_log(engine: Engine, log: LogSigner, case_id: str, count: int) -> None:
    """A ledger as the exchange wrote it before v2: entries without v, case_seq, case_prev."""
    import hashlib

    from sqlalchemy import text

    from exchange.ledger import tlog
    from exchange.ledger.checkpoint import Checkpoint
    from exchange.model import canonical_bytes

    stored: dict[int, bytes] = {}
    prev = "0" * 64
    with session_scope(engine) as session:
        connection = session.connection()
        for seq in range(count):
            wire = {
                "seq": seq,
                "prev": prev,
                "time": "2026-11-29T12:00:00.000000Z",
                "actor": {"agency": "TH-RTP", "country": "TH", "subject": "client:th"},
                "action": "case.opened" if seq == 0 else "bundle.fetched",
                "case_id": case_id,
                "details": {"n": seq},
            }
            data = canonical_bytes(wire)
            first = tlog.stored_hash_index(0, seq)
            hashes = tlog.stored_hashes_for_record(
                seq, merkle.leaf_hash(data), lambda ix: [stored[i] for i in ix]
            )
            for offset, value in enumerate(hashes):
                stored[first + offset] = value
            connection.execute(
                text(
                    "INSERT INTO ledger_entry (seq, data, entry_hash, action, case_id, time) "
                    "VALUES (:seq, :data, :hash, :action, :case_id, :time)"
                ),
                {"seq": seq, "data": data, "hash": hashlib.sha256(data).digest(),
                 "action": wire["action"], "case_id": case_id, "time": datetime.now(UTC)},
            )  # fmt: skip
            prev = hashlib.sha256(data).hexdigest()
        for idx, value in stored.items():
            connection.execute(
                text("INSERT INTO ledger_hash (idx, hash) VALUES (:idx, :hash)"),
                {"idx": idx, "hash": value},
            )
        root = tlog.tree_hash(count, lambda ix: [stored[i] for i in ix])
        connection.execute(
            text("INSERT INTO ledger_checkpoint (size, note, created_at) VALUES (:s, :n, :t)"),
            {"s": count, "n": log.sign(Checkpoint(log.origin, count, root)),
             "t": datetime.now(UTC)},
        )  # fmt: skip


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_ledger_written_before_v2_is_folded_into_the_first_v2_entry(
    backend: str, tmp_path: Path, log: LogSigner
):
    from exchange.custody.disclosure import Audience
    from exchange.ledger.entry import Action, Actor, NewEntry

    engine = make_engine(f"sqlite:///{tmp_path / backend}.db")
    create_schema(engine)
    _write_v1_log(engine, log, "LEGACY-1", 4)
    th = Actor(agency="TH-RTP", country="TH", subject="client:th")
    store_entry = ledger_store.append_committed(
        engine, NewEntry(th, Action.BUNDLE_FETCHED, "LEGACY-1", None, {}), log=log, now=NOW_V2
    )
    with session_scope(engine) as session:
        first_v2 = json.loads(ledger_store.get_entry(session, store_entry.seq).data)
    # The old entries keep their place: the first v2 entry is the case's fifth.
    assert (first_v2["v"], first_v2["case_seq"]) == (2, 4)
    appended = ledger_store.append_committed(
        engine, NewEntry(th, Action.CUSTODY_EXPORTED, "LEGACY-1", None, {}), log=log, now=NOW_V2
    )
    export = custody.Export("LEGACY-1", "TH-RTP", Audience("TH-RTP", "TH", owner=True),
                            appended.seq, appended.checkpoint, NOW_V2)  # fmt: skip
    with session_scope(engine, read_only=True) as session:
        bundle = json.loads(custody.build_bundle(session, export=export, origin=log.origin))
    report = verify_bundle(bundle, log_key=log.verifier().public_key)
    assert report.case_entries == 6
    # A v1 entry removed is caught too: the v2 entries after it no longer sit where they claim.
    damaged = copy.deepcopy(bundle)
    del damaged["entries"][2]
    with pytest.raises(VerificationError) as caught:
        verify_bundle(damaged, log_key=log.verifier().public_key)
    assert caught.value.reason == "case_entry_missing"
    assert caught.value.message == (
        "1 of the case's first 4 entries are missing (entries written before ledger v2, "
        "somewhere before ledger entry 4)"
    )
    engine.dispose()


NOW_V2 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _independent_check(bundle: dict[str, Any], public_key: Any) -> int:
    """A second verifier of bundle v2, written from docs/ledger.md with hashlib, cryptography and
    the rfc8785 package only (none of exchange's code): returns the case's entry count, or
    raises AssertionError."""
    import hashlib

    import rfc8785
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    assert isinstance(public_key, Ed25519PublicKey)
    body, _, sigs = bundle["checkpoint"].rpartition("\n\n")
    body += "\n"
    origin, size_text, root_b64 = body.splitlines()
    size, root = int(size_text), base64.b64decode(root_b64)
    raw = public_key.public_bytes_raw()
    key_id = hashlib.sha256(origin.encode() + b"\n\x01" + raw).digest()[:4]
    signed = False
    for line in sigs.splitlines():
        name, blob = line.removeprefix("\u2014 ").split(" ")
        sig = base64.b64decode(blob)
        if name == origin and sig[:4] == key_id:
            public_key.verify(sig[4:], body.encode())
            signed = True
    assert signed
    head = hashlib.sha256(b"exchange.case-chain/v1\x00" + bundle["case_id"].encode()).digest()
    leaf = b""
    for place, item in enumerate(bundle["entries"]):
        if "entry" in item:
            entry = dict(item["entry"])
            assert entry["case_id"] == bundle["case_id"]
            if entry.get("v") == 2:
                assert entry["case_seq"] == place
                entry["case_prev"] = head.hex()
            leaf = hashlib.sha256(b"\x00" + rfc8785.dumps(entry)).digest()
        else:
            assert item["case_seq"] == place
            leaf = base64.b64decode(item["leaf_hash"])
        head = hashlib.sha256(head + item["seq"].to_bytes(8, "big") + leaf).digest()
    last = bundle["entries"][-1]["entry"]
    assert last["action"] == "custody.exported"
    assert last["seq"] == size - 1
    # RFC 9162 §2.1.3.2, for the export's leaf.
    fn, sn, r = size - 1, size - 1, leaf
    for p in (base64.b64decode(h) for h in bundle["export_inclusion"]):
        assert sn != 0
        if fn % 2 == 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            while fn % 2 == 0 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn, sn = fn >> 1, sn >> 1
    assert sn == 0
    assert r == root
    return len(bundle["entries"])


def test_an_independent_verifier_agrees(story: Story):
    key = story.log.verifier().public_key
    for who in (story.th, story.ph):
        bundle = story.export(who)
        assert _independent_check(bundle, key) == story.verify(bundle).case_entries
    damaged = copy.deepcopy(bundle)
    damaged["entries"][0]["entry"]["details"]["title"] = "another"
    with pytest.raises(AssertionError):
        _independent_check(damaged, key)
    assert story.fails(damaged).reason == "case_chain_broken"


def test_the_partner_export_reads_agency_and_case_seq_as_a_parse_would(story: Story):
    # The partner's export peeks at two fields instead of parsing each entry: it must agree
    # with a full parse on every entry of the case, officer (`act`) entries included.
    from exchange.service.custody import _case_seq, _decision_view

    with session_scope(story.engine) as session:
        rows = ledger_store.case_entries(session, story.case_id, below=10**9)
    assert rows
    for index, row in enumerate(rows):
        parsed = json.loads(row.data)
        view = _decision_view(row)
        assert view["action"] == parsed["action"]
        assert view["actor"]["agency"] == parsed["actor"]["agency"]
        assert _case_seq(row.data, index) == parsed["case_seq"]
    officer = {"agency": "TH-RTP", "act": {"sub": '"agency":"VN-C06"', "name": "x"}}
    assert _decision_view(
        ledger_store.CaseEntryRow(0, json.dumps({"action": "bundle.fetched", "actor": officer},
                                                sort_keys=True, separators=(",", ":")).encode(),
                                  "bundle.fetched", None)
    )["actor"]["agency"] == "TH-RTP"  # fmt: skip
