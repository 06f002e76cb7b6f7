"""Signed checkpoint notes (C2SP tlog-checkpoint / signed-note), and the docs' worked example."""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from exchange.errors import InvalidInputError, PayloadTooLargeError, VerificationError
from exchange.ledger import checkpoint, merkle, tlog
from exchange.ledger.checkpoint import Checkpoint, NoteVerifier
from tests.conftest import REPO, VECTORS

ORIGIN = "exchange.example/ledger"
ROOT = hashlib.sha256(b"a root").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()
CP = Checkpoint(origin=ORIGIN, size=42, root_hash=ROOT)
ED25519, ECDSA = b"\x01", b"\x02"  # signed-note signature type bytes
URLSAFE_ROOT = base64.urlsafe_b64encode(b"\xff" * 32).decode()
SUMDB = json.loads((VECTORS / "ledger" / "sumdb-notes.json").read_text())
EXAMPLE = json.loads((VECTORS / "ledger" / "docs-example.json").read_text())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def key(label: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(label.encode()).digest())


LOG_KEY = key("log")
OTHER_KEY = key("other")


def raw(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def signed(body: str, *signers: tuple[str, Ed25519PrivateKey]) -> str:
    lines = [checkpoint.signature_line(body, name=n, private_key=k) for n, k in signers]
    return body + "\n" + "".join(line + "\n" for line in lines)


def assert_bad(note: str, message: str, reason: str = "bad_checkpoint") -> None:
    with pytest.raises(VerificationError, match=message) as caught:
        checkpoint.verify_checkpoint(note, verifiers=[(ORIGIN, LOG_KEY.public_key())])
    assert caught.value.reason == reason
    if reason == "bad_checkpoint":
        with pytest.raises(VerificationError, match=message):
            checkpoint.parse_checkpoint_note(note)


def test_round_trip() -> None:
    note = checkpoint.sign_checkpoint(CP, name=ORIGIN, private_key=LOG_KEY)
    assert note.startswith(f"{ORIGIN}\n42\n{ROOT_B64}\n\n\u2014 {ORIGIN} ")
    assert note.endswith("\n")
    assert note.count("\n") == 5
    parsed, signatures = checkpoint.parse_checkpoint_note(note)
    assert parsed == CP
    assert [(s.name, s.key_id, len(s.signature)) for s in signatures] == [
        (ORIGIN, checkpoint.checkpoint_key_id(ORIGIN, LOG_KEY.public_key()), 64)
    ]
    assert note.endswith(signatures[0].line() + "\n")
    for verifier in (
        (ORIGIN, LOG_KEY.public_key()),
        NoteVerifier.from_public_key(ORIGIN, LOG_KEY.public_key()),
        checkpoint.vkey_text(ORIGIN, LOG_KEY.public_key()),
    ):
        assert checkpoint.verify_checkpoint(note, verifiers=[verifier], origin=ORIGIN) == CP


def test_empty_tree_checkpoint() -> None:
    empty = Checkpoint(origin=ORIGIN, size=0, root_hash=merkle.EMPTY_ROOT)
    note = checkpoint.sign_checkpoint(empty, name=ORIGIN, private_key=LOG_KEY)
    assert note.split("\n")[1] == "0"
    assert checkpoint.verify_checkpoint(note, verifiers=[(ORIGIN, LOG_KEY.public_key())]) == empty


def test_key_id_matches_an_independent_computation() -> None:
    public = raw(LOG_KEY)
    expected = hashlib.sha256(ORIGIN.encode() + b"\x0a\x01" + public).digest()[:4]
    assert checkpoint.checkpoint_key_id(ORIGIN, LOG_KEY.public_key()) == expected
    vkey = checkpoint.vkey_text(ORIGIN, LOG_KEY.public_key())
    assert vkey == f"{ORIGIN}+{expected.hex()}+{b64(ED25519 + public)}"
    parsed = checkpoint.parse_vkey(vkey)
    assert (parsed.name, parsed.key_id, raw_public(parsed)) == (ORIGIN, expected, public)
    assert parsed.vkey() == vkey


def raw_public(verifier: NoteVerifier) -> bytes:
    return verifier.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_go_sumdb_key_id_is_the_published_one() -> None:
    verifier = checkpoint.parse_vkey(SUMDB["vkey"])
    assert verifier.name == "sum.golang.org"
    assert verifier.key_id.hex() == "033de0ae"
    assert verifier.vkey() == SUMDB["vkey"]


@pytest.mark.parametrize("vector", SUMDB["notes"], ids=lambda v: str(v["size"]))
def test_real_sum_golang_org_notes_verify(vector: dict[str, object]) -> None:
    note = vector["note"]
    assert isinstance(note, str)
    cp = checkpoint.verify_checkpoint(
        note, verifiers=[SUMDB["vkey"]], origin="go.sum database tree"
    )
    assert (cp.origin, cp.size, base64.b64encode(cp.root_hash).decode()) == (
        vector["origin"],
        vector["size"],
        vector["root_base64"],
    )
    size = str(vector["size"])
    tampered = note.replace(f"\n{size}\n", f"\n{int(size) + 1}\n")
    with pytest.raises(
        VerificationError, match=r"the signature by sum\.golang\.org .* does not verify"
    ):
        checkpoint.verify_checkpoint(tampered, verifiers=[SUMDB["vkey"]])


def test_unknown_keys_are_ignored_when_a_known_key_verifies() -> None:
    body = CP.body()
    for note in (
        signed(body, ("witness.example/w1", OTHER_KEY), (ORIGIN, LOG_KEY)),
        signed(body, (ORIGIN, LOG_KEY), ("witness.example/w1", OTHER_KEY)),
        # Same name, other key (a rotated-out log key): unknown, so ignored.
        signed(body, (ORIGIN, OTHER_KEY), (ORIGIN, LOG_KEY)),
    ):
        assert checkpoint.verify_checkpoint(note, verifiers=[(ORIGIN, LOG_KEY.public_key())]) == CP


def test_key_rotation_accepts_either_known_key() -> None:
    verifiers = [(ORIGIN, LOG_KEY.public_key()), (ORIGIN, OTHER_KEY.public_key())]
    for k in (LOG_KEY, OTHER_KEY):
        note = checkpoint.sign_checkpoint(CP, name=ORIGIN, private_key=k)
        assert checkpoint.verify_checkpoint(note, verifiers=verifiers) == CP


def test_sixteen_signatures_with_one_known_verify() -> None:
    witnesses = [(f"witness.example/w{i}", key(f"w{i}")) for i in range(15)]
    note = signed(CP.body(), *witnesses, (ORIGIN, LOG_KEY))
    assert checkpoint.verify_checkpoint(note, verifiers=[(ORIGIN, LOG_KEY.public_key())]) == CP
    _, signatures = checkpoint.parse_checkpoint_note(note)
    assert len(signatures) == 16


def test_only_unknown_keys_is_rejected() -> None:
    note = signed(CP.body(), ("witness.example/w1", OTHER_KEY), (ORIGIN, OTHER_KEY))
    key_id = checkpoint.checkpoint_key_id(ORIGIN, LOG_KEY.public_key()).hex()
    assert_bad(
        note,
        re.escape(f"no signature by a known key (known: {ORIGIN}+{key_id})"),
        "bad_checkpoint_signature",
    )
    with pytest.raises(VerificationError, match=r"known: none"):
        checkpoint.verify_checkpoint(note, verifiers=[])


def test_a_failing_signature_by_a_known_key_rejects_the_note() -> None:
    good = checkpoint.signature_line(CP.body(), name=ORIGIN, private_key=LOG_KEY)
    other_body = Checkpoint(ORIGIN, 43, ROOT).body()
    bad = checkpoint.signature_line(other_body, name=ORIGIN, private_key=LOG_KEY)
    note = f"{CP.body()}\n{bad}\n{good}\n"
    key_id = checkpoint.checkpoint_key_id(ORIGIN, LOG_KEY.public_key()).hex()
    assert_bad(
        note,
        re.escape(f"the signature by {ORIGIN} (key id {key_id}) does not verify"),
        "bad_checkpoint_signature",
    )


def test_a_body_edited_after_signing_is_rejected() -> None:
    note = checkpoint.sign_checkpoint(CP, name=ORIGIN, private_key=LOG_KEY)
    other_root = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    for edited in (
        note.replace("\n42\n", "\n43\n"),
        note.replace(ROOT_B64, other_root),
        note.replace(ORIGIN + "\n", "exchange.example/other\n", 1),
    ):
        assert_bad(edited, "does not verify", "bad_checkpoint_signature")


def test_origin_must_match_when_given() -> None:
    note = checkpoint.sign_checkpoint(CP, name=ORIGIN, private_key=LOG_KEY)
    with pytest.raises(
        VerificationError, match=re.escape(f"checkpoint origin {ORIGIN!r} is not 'x'")
    ) as caught:
        checkpoint.verify_checkpoint(note, verifiers=[(ORIGIN, LOG_KEY.public_key())], origin="x")
    assert caught.value.reason == "origin_mismatch"


def sig_line() -> str:
    return checkpoint.signature_line(CP.body(), name=ORIGIN, private_key=LOG_KEY)


MALFORMED = [
    (f"{ORIGIN}\n42\n{ROOT_B64}\n" + "{sig}\n", "note has no blank line before its signatures"),
    (
        f"{ORIGIN}\n042\n{ROOT_B64}\n\n" + "{sig}\n",
        "checkpoint size '042' is not a decimal without leading zeros",
    ),
    (f"{ORIGIN}\n00\n{ROOT_B64}\n\n" + "{sig}\n", "checkpoint size '00' is not a decimal"),
    (f"{ORIGIN}\n+42\n{ROOT_B64}\n\n" + "{sig}\n", r"checkpoint size '\+42' is not a decimal"),
    (f"{ORIGIN}\n-1\n{ROOT_B64}\n\n" + "{sig}\n", "checkpoint size '-1' is not a decimal"),
    (f"{ORIGIN}\n 42\n{ROOT_B64}\n\n" + "{sig}\n", "checkpoint size ' 42' is not a decimal"),
    (f"{ORIGIN}\n4\u0662\n{ROOT_B64}\n\n" + "{sig}\n", "is not a decimal"),
    (f"{ORIGIN}\n9223372036854775808\n{ROOT_B64}\n\n" + "{sig}\n", "is not a decimal"),
    (
        f"{ORIGIN}\n42\n{base64.b64encode(ROOT[:31]).decode()}\n\n" + "{sig}\n",
        "is not base64 of 32 bytes",
    ),
    (
        f"{ORIGIN}\n42\n{base64.b64encode(ROOT + b'x').decode()}\n\n" + "{sig}\n",
        "is not base64 of 32 bytes",
    ),
    (f"{ORIGIN}\n42\n{ROOT_B64.rstrip('=')}\n\n" + "{sig}\n", "is not base64 of 32 bytes"),
    (
        f"{ORIGIN}\n42\n{URLSAFE_ROOT}\n\n" + "{sig}\n",
        "is not base64 of 32 bytes",
    ),
    (f"{ORIGIN}\n42\n{ROOT_B64}\nextension\n\n" + "{sig}\n", "checkpoint has extension lines"),
    (f"{ORIGIN}\n42\n\n{ROOT_B64}\n\n" + "{sig}\n", "checkpoint body line 3 is empty"),
    (f"{ORIGIN}\n42\n\n" + "{sig}\n", "checkpoint body has 2 lines"),
    (f"\n42\n{ROOT_B64}\n\n" + "{sig}\n", "checkpoint body line 1 is empty"),
    (f"{ORIGIN}\n42\n{ROOT_B64}\n\n" + "{sig}", "note does not end with a newline"),
    (f"{ORIGIN}\n42\n{ROOT_B64}\n\n", "note has no signature lines"),
    (f"{ORIGIN}\r\n42\n{ROOT_B64}\n\n" + "{sig}\n", r"note contains control character '\\r'"),
    (f"{ORIGIN}\n42\n{ROOT_B64}\n\n" + "{sig}\n\n", "note has no signature lines"),
]


@pytest.mark.parametrize(("template", "message"), MALFORMED, ids=[m for _, m in MALFORMED])
def test_malformed_notes_are_rejected(template: str, message: str) -> None:
    assert_bad(template.replace("{sig}", sig_line()), message)


@pytest.mark.parametrize(
    ("dash", "message"),
    [
        ("-", "does not start with an em dash"),
        ("\u2013", "does not start with an em dash"),
        ("\u2014\u2014", "does not start with an em dash"),
    ],
)
def test_wrong_dash_is_rejected(dash: str, message: str) -> None:
    assert_bad(f"{CP.body()}\n{sig_line().replace(chr(0x2014), dash, 1)}\n", message)


def test_bad_signature_lines_are_rejected() -> None:
    line = sig_line()
    sig_b64 = line.split(" ")[2]
    cases = [
        (f"\u2014 {ORIGIN}  {sig_b64}", "is not '— <key name> <base64 signature>'"),
        (f"\u2014 {ORIGIN}", "is not '— <key name> <base64 signature>'"),
        (f"\u2014  {sig_b64}", "is not '— <key name> <base64 signature>'"),
        (f"\u2014 a+b {sig_b64}", r"key name 'a\+b' contains a space or '\+'"),
        (f"\u2014 a\u00a0b {sig_b64}", "contains a space"),
        (f"\u2014 {ORIGIN} {sig_b64[:-1]}", f"signature of {ORIGIN} is not base64"),
        (
            f"\u2014 {ORIGIN} AAAA",
            f"signature of {ORIGIN} is not base64 of a key id and a signature",
        ),
    ]
    for bad, message in cases:
        assert_bad(f"{CP.body()}\n{bad}\n", re.escape(message) if "+" not in message else message)


def test_too_many_signatures_and_oversized_notes_are_refused() -> None:
    line = sig_line()
    assert_bad(
        CP.body() + "\n" + (line + "\n") * (checkpoint.MAX_SIGNATURES + 1),
        f"note has {checkpoint.MAX_SIGNATURES + 1} signature lines, more than {checkpoint.MAX_SIGNATURES}",
    )
    huge = CP.body() + "\n" + (line + "\n") * (checkpoint.MAX_NOTE_BYTES // len(line) + 1)
    with pytest.raises(PayloadTooLargeError, match="more than 1048576"):
        checkpoint.verify_checkpoint(huge, verifiers=[(ORIGIN, LOG_KEY.public_key())])


def test_a_lone_surrogate_is_not_utf8() -> None:
    assert_bad(f"{ORIGIN}\ud800\n42\n{ROOT_B64}\n\n{sig_line()}\n", "note is not valid UTF-8")


def test_bad_vkeys_are_refused() -> None:
    good = checkpoint.vkey_text(ORIGIN, LOG_KEY.public_key())
    name, key_id, material = good.split("+", 2)
    ed_key = base64.b64decode(material)
    cases = [
        (f"{name}+{key_id}", "verifier key is not <name>+<hex key id>+<base64 key>"),
        (f"{name}+{key_id.upper()}+{material}", "is not 8 lowercase hex digits"),
        (
            f"{name}+00000000+{material}",
            f"verifier key id 00000000 does not match its key ({key_id})",
        ),
        (
            f"{name}+{key_id}+{b64(ECDSA + ed_key[1:])}",
            "is not base64 of 0x01",
        ),
        (f"{name}+{key_id}+{base64.b64encode(ed_key[:-1]).decode()}", "is not base64 of 0x01"),
        (f"+{key_id}+{material}", "key name '' is empty"),
        (f"a b+{key_id}+{material}", "key name 'a b' is empty or contains a space"),
    ]
    for text, message in cases:
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            checkpoint.parse_vkey(text)
    with pytest.raises(InvalidInputError, match="does not match"):
        checkpoint.verify_checkpoint(
            checkpoint.sign_checkpoint(CP, name=ORIGIN, private_key=LOG_KEY),
            verifiers=[f"{name}+00000000+{material}"],
        )


def test_checkpoint_construction_is_checked() -> None:
    for kwargs, message in [
        ({"origin": "", "size": 1, "root_hash": ROOT}, "checkpoint origin '' is empty"),
        ({"origin": "a\nb", "size": 1, "root_hash": ROOT}, "is empty or has control characters"),
        ({"origin": ORIGIN, "size": -1, "root_hash": ROOT}, "checkpoint size -1 out of range"),
        ({"origin": ORIGIN, "size": 2**63, "root_hash": ROOT}, "out of range"),
        ({"origin": ORIGIN, "size": 1, "root_hash": ROOT[:31]}, "has 31 bytes, expected 32"),
    ]:
        with pytest.raises(InvalidInputError, match=re.escape(message)):
            Checkpoint(**kwargs)  # type: ignore[arg-type]  # a dict of mixed values
    with pytest.raises(InvalidInputError, match="key name 'a b'"):
        checkpoint.sign_checkpoint(CP, name="a b", private_key=LOG_KEY)


# --- the worked example of docs/ledger.md ------------------------------------------------------


def test_docs_example_values_are_right() -> None:
    ex = EXAMPLE
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(ex["private_key_seed_hex"]))
    public = raw(private)
    assert public.hex() == ex["public_key_hex"]
    key_id = hashlib.sha256(ex["origin"].encode() + b"\n\x01" + public).digest()[:4]
    assert key_id.hex() == ex["key_id_hex"]
    assert ex["vkey"] == f"{ex['origin']}+{key_id.hex()}+{b64(ED25519 + public)}"

    def sha(data: bytes) -> bytes:
        return hashlib.sha256(data).digest()

    leaves = [sha(b"\x00" + e.encode()) for e in ex["entries_utf8"]]
    assert [x.hex() for x in leaves] == ex["leaf_hashes"]
    n01, n23 = sha(b"\x01" + leaves[0] + leaves[1]), sha(b"\x01" + leaves[2] + leaves[3])
    n0123 = sha(b"\x01" + n01 + n23)
    expected_roots = [
        sha(b""),
        leaves[0],
        n01,
        sha(b"\x01" + n01 + leaves[2]),
        n0123,
        sha(b"\x01" + n0123 + leaves[4]),
    ]
    assert [x.hex() for x in expected_roots] == ex["roots_by_size"]
    # Post-order: leaf 0, leaf 1, (0-1), leaf 2, leaf 3, (2-3), (0-3), leaf 4.
    assert ex["stored_hashes"] == [
        x.hex() for x in (leaves[0], leaves[1], n01, leaves[2], leaves[3], n23, n0123, leaves[4])
    ]
    store = [bytes.fromhex(x) for x in ex["stored_hashes"]]
    read = lambda indexes: [store[i] for i in indexes]  # noqa: E731  # a one-line reader
    assert ex["inclusion"]["path"] == [x.hex() for x in (leaves[3], n01, leaves[4])]
    assert [x.hex() for x in merkle.inclusion_proof(2, 5, read)] == ex["inclusion"]["path"]
    assert ex["consistency"]["path"] == [x.hex() for x in (leaves[2], leaves[3], n01, leaves[4])]
    assert [x.hex() for x in merkle.consistency_proof(3, 5, read)] == ex["consistency"]["path"]
    assert tlog.tree_hash(5, read) == expected_roots[5]

    for note, size in ((ex["checkpoint_note"], 5), (ex["old_checkpoint_note"], 3)):
        assert (
            checkpoint.sign_checkpoint(
                Checkpoint(ex["origin"], size, expected_roots[size]),
                name=ex["origin"],
                private_key=private,
            )
            == note
        )
        cp = checkpoint.verify_checkpoint(note, verifiers=[ex["vkey"]], origin=ex["origin"])
        assert cp.root_hash == expected_roots[size]
    merkle.verify_inclusion(
        leaves[2], 2, 5, [bytes.fromhex(x) for x in ex["inclusion"]["path"]], expected_roots[5]
    )
    merkle.verify_consistency(
        3,
        5,
        expected_roots[3],
        expected_roots[5],
        [bytes.fromhex(x) for x in ex["consistency"]["path"]],
    )


def test_docs_show_the_example_values() -> None:
    docs = (REPO / "docs" / "ledger.md").read_text()
    ex = EXAMPLE
    wanted = [
        ex["vkey"],
        ex["key_id_hex"],
        ex["public_key_hex"],
        *ex["leaf_hashes"],
        *ex["roots_by_size"][3:],
    ]
    wanted += ex["inclusion"]["path"] + ex["consistency"]["path"]
    wanted += [
        line
        for note in (ex["checkpoint_note"], ex["old_checkpoint_note"])
        for line in note.splitlines()
        if line
    ]
    missing = [w for w in wanted if w not in docs]
    assert not missing
    for heading in (
        "Entries",
        "Hashing and the Merkle tree",
        "Proofs",
        "Checkpoints",
        "Verifying with your own code",
    ):
        assert f"## {heading}" in docs
