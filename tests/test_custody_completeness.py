"""Completeness of custody bundle v2, property-tested over random case histories.

Several cases' entries are interleaved in one in-memory log (real entries, real Merkle tree,
real signed checkpoint); the target case's bundle is cut exactly as the service cuts it, for
the owner or a partner. Any such bundle verifies; any entry removed, any two swapped, any stub
or entry changed, is refused.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from exchange.custody import verify_bundle
from exchange.custody.disclosure import Audience, disclosed
from exchange.errors import VerificationError
from exchange.ledger import casechain, merkle, tlog
from exchange.ledger.checkpoint import Checkpoint
from exchange.ledger.entry import GENESIS_PREV, Action, Actor, NewEntry, make_entry
from exchange.ledger.signer import LogSigner
from exchange.signing import Signer

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LOG = LogSigner.from_signer(Signer.generate(), origin="property.example/ledger")
CASES = ("TH-CASE-A", "TH-CASE-B", "TH-CASE-C")
ACTORS = {
    "TH": Actor(agency="TH-RTP", country="TH", subject="client:th"),
    "PH": Actor(agency="PH-NBI", country="PH", subject="client:ph"),
    "VN": Actor(agency="VN-C06", country="VN", subject="client:vn"),
}
TARGET = CASES[0]

# One step of a history: which case, who, what (the details follow from the action).
_STEP = st.tuples(
    st.sampled_from(CASES),
    st.sampled_from(sorted(ACTORS)),
    st.sampled_from(
        [Action.GRANT_ISSUED, Action.GRANT_REVOKED, Action.BUNDLE_FETCHED, Action.INTEGRITY_FAILURE]
    ),
    st.sampled_from(["PH", "VN"]),
)


def _new(step: tuple[str, str, Action, str], i: int) -> NewEntry:
    case_id, who, action, grantee = step
    if action in (Action.GRANT_ISSUED, Action.GRANT_REVOKED):
        who = "TH"  # only the owning agency grants and revokes
    details: dict[str, Any] = {"n": i}
    if action == Action.GRANT_ISSUED:
        details = {"grant_id": f"g-{i}", "grantee_country": grantee, "scope": ["read"]}
    elif action == Action.GRANT_REVOKED:
        details = {"grant_id": f"g-{i - 1}"}
    elif action == Action.BUNDLE_FETCHED:
        details = {"files": [f"{who.lower()}/secret-{i}.txt"], "bytes": i}
    return NewEntry(ACTORS[who], action, case_id, None, details)


def build_bundle(
    steps: Sequence[tuple[str, str, Action, str]], audience: Audience
) -> dict[str, Any]:
    """A log of every case's opening, then `steps`, then the target's export; its bundle."""
    news = [NewEntry(ACTORS["TH"], Action.CASE_OPENED, c, None, {}) for c in CASES]
    news += [_new(step, i) for i, step in enumerate(steps)]
    exporter = ACTORS["TH"] if audience.owner else ACTORS[audience.country]
    news.append(NewEntry(exporter, Action.CUSTODY_EXPORTED, TARGET, None, {}))
    stored: dict[int, bytes] = {}
    heads = casechain.Heads()
    prev = GENESIS_PREV
    rows: list[tuple[int, bytes]] = []

    def read(indexes: Sequence[int]) -> list[bytes]:
        return [stored[i] for i in indexes]

    for seq, new in enumerate(news):
        assert new.case_id is not None
        count, head = heads.link(new.case_id)
        _, data = make_entry(new, seq=seq, prev=prev, time=NOW, case_link=(count, head.hex()))
        leaf = merkle.leaf_hash(data)
        heads.add(new.case_id, seq, leaf)
        first = tlog.stored_hash_index(0, seq)
        for offset, value in enumerate(tlog.stored_hashes_for_record(seq, leaf, read)):
            stored[first + offset] = value
        prev = hashlib.sha256(data).hexdigest()
        if new.case_id == TARGET:
            rows.append((seq, data))
    size = len(news)
    note = LOG.sign(Checkpoint(origin=LOG.origin, size=size, root_hash=tlog.tree_hash(size, read)))
    objects = [json.loads(d) for _, d in rows]
    shown = disclosed(objects, owner_agency="TH-RTP", audience=audience)
    entries: list[dict[str, Any]] = []
    for (seq, data), obj, show in zip(rows, objects, shown, strict=True):
        if show:
            entries.append(
                {"seq": seq, "entry": {k: v for k, v in obj.items() if k != "case_prev"}}
            )
        else:
            stub = base64.b64encode(merkle.leaf_hash(data)).decode()
            entries.append({"seq": seq, "case_seq": obj["case_seq"], "leaf_hash": stub})
    return {
        "format": "exchange.custody-bundle/v2",
        "case_id": TARGET,
        "audience": audience.to_wire(),
        "checkpoint": note,
        "entries": entries,
        "export_inclusion": [
            base64.b64encode(h).decode() for h in tlog.inclusion_proof(size - 1, size, read)
        ],
        "key_entries": [],
        "packages": [],
        "signer_keys": [],
    }


def verify(bundle: dict[str, Any]):
    return verify_bundle(bundle, log_key=LOG.verifier().public_key)


_AUDIENCE = st.sampled_from(
    [Audience("TH-RTP", "TH", owner=True), Audience("PH-NBI", "PH", owner=False)]
)
_HISTORY = st.lists(_STEP, min_size=0, max_size=25)


@settings(max_examples=60, deadline=None)
@given(steps=_HISTORY, audience=_AUDIENCE)
def test_every_honest_bundle_verifies_and_counts_its_case(steps, audience):
    bundle = build_bundle(steps, audience)
    report = verify(bundle)
    assert report.case_entries == 2 + sum(1 for s in steps if s[0] == TARGET)
    assert report.redacted == sum(1 for e in bundle["entries"] if "leaf_hash" in e)
    if audience.owner:
        assert report.redacted == 0
    text = json.dumps(bundle)
    if not audience.owner:
        assert "VN-C06" not in text
        assert "vn/secret" not in text
        assert '"grantee_country": "VN"' not in text


@settings(max_examples=60, deadline=None)
@given(steps=_HISTORY, audience=_AUDIENCE, data=st.data())
def test_any_removed_entry_is_refused(steps, audience, data):
    bundle = build_bundle(steps, audience)
    index = data.draw(st.integers(0, len(bundle["entries"]) - 1))
    damaged = copy.deepcopy(bundle)
    del damaged["entries"][index]
    with pytest.raises(VerificationError) as caught:
        verify(damaged)
    assert caught.value.reason in ("case_entry_missing", "case_incomplete")


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(_STEP, min_size=3, max_size=25), audience=_AUDIENCE, data=st.data())
def test_any_two_swapped_entries_are_refused(steps, audience, data):
    bundle = build_bundle(steps, audience)
    n = len(bundle["entries"])
    if n < 2:
        return
    i = data.draw(st.integers(0, n - 2))
    j = data.draw(st.integers(i + 1, n - 1))
    damaged = copy.deepcopy(bundle)
    entries = damaged["entries"]
    entries[i], entries[j] = entries[j], entries[i]
    with pytest.raises(VerificationError) as caught:
        verify(damaged)
    assert caught.value.reason in ("case_order", "case_incomplete", "checkpoint_mismatch")


@settings(max_examples=60, deadline=None)
@given(steps=_HISTORY, data=st.data())
def test_any_changed_stub_or_entry_is_refused(steps, data):
    bundle = build_bundle(steps, Audience("PH-NBI", "PH", owner=False))
    index = data.draw(st.integers(0, len(bundle["entries"]) - 1))
    damaged = copy.deepcopy(bundle)
    item = damaged["entries"][index]
    if "leaf_hash" in item:
        item["leaf_hash"] = base64.b64encode(merkle.leaf_hash(b"forged")).decode()
    else:
        item["entry"]["details"] = {"forged": True}
    with pytest.raises(VerificationError) as caught:
        verify(damaged)
    assert caught.value.reason == "case_chain_broken"
