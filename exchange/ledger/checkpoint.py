"""Signed checkpoints: C2SP tlog-checkpoint bodies in C2SP signed notes, Ed25519 only (pure).

A checkpoint note is::

    <origin>\\n<tree size>\\n<base64 root hash>\\n
    \\n
    — <key name> <base64(4-byte key id || 64-byte Ed25519 signature over the body)>\\n
    ... (more signature lines: other keys, witnesses)

with key id = SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]. Verifiers ignore
signatures by keys they do not know (key rotation, witness cosignatures) and accept a note when at
least one known key's signature verifies and none fails.
See: https://c2sp.org/tlog-checkpoint and https://c2sp.org/signed-note
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from exchange.errors import InvalidInputError, PayloadTooLargeError, VerificationError

MAX_NOTE_BYTES = 1 << 20
"""Notes longer than this (UTF-8 bytes) are refused before parsing."""
MAX_SIGNATURES = 100
"""Signature lines accepted per note (C2SP: at least 16)."""
MAX_TREE_SIZE = (1 << 63) - 1
"""The largest tree size a checkpoint may state (a signed 64-bit database integer)."""
SIGNATURE_TYPE_ED25519 = 0x01
EM_DASH = "\u2014"

_SIZE = re.compile(r"(?:0|[1-9][0-9]{0,18})\Z")
_KEY_ID_HEX = re.compile(r"[0-9a-f]{8}\Z")
# Unicode spaces (Zs) plus the ASCII/Unicode whitespace Python knows; C2SP forbids both in names.
_SPACE = re.compile(r"[\s\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


@dataclass(frozen=True)
class Checkpoint:
    """The signed body of a checkpoint: the log's origin, its size and its RFC 6962 root."""

    origin: str
    size: int
    root_hash: bytes

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin or _CONTROL.search(self.origin):
            raise InvalidInputError(
                f"checkpoint origin {self.origin!r} is empty or has control characters"
            )
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise InvalidInputError(f"checkpoint size {self.size} out of range")
        if len(self.root_hash) != 32:
            raise InvalidInputError(
                f"checkpoint root hash has {len(self.root_hash)} bytes, expected 32"
            )

    def body(self) -> str:
        """The note text: origin, size and base64 root, each ending in a newline."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root_hash).decode()}\n"


@dataclass(frozen=True)
class NoteSignature:
    """One parsed signature line: key name, 4-byte key id and the signature bytes after it."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        """The signature line, without its newline."""
        return f"{EM_DASH} {self.name} {base64.b64encode(self.key_id + self.signature).decode()}"


@dataclass(frozen=True)
class NoteVerifier:
    """A known Ed25519 note key: its name, key id and public key."""

    name: str
    key_id: bytes
    public_key: Ed25519PublicKey

    @classmethod
    def from_public_key(cls, name: str, public_key: Ed25519PublicKey) -> NoteVerifier:
        """The verifier for `public_key` signing under key name `name`."""
        return cls(name=name, key_id=checkpoint_key_id(name, public_key), public_key=public_key)

    def vkey(self) -> str:
        """The verifier key text ``<name>+<hex key id>+<base64(0x01 || public key)>``."""
        return vkey_text(self.name, self.public_key)

    def is_valid(self, text: bytes, signature: bytes) -> bool:
        """Whether `signature` is this key's Ed25519 signature over `text`."""
        if len(signature) != 64:
            return False
        try:
            self.public_key.verify(signature, text)
        except InvalidSignature:
            return False
        return True


Verifier = NoteVerifier | str | tuple[str, Ed25519PublicKey]
"""What `verify_checkpoint` accepts as a known key: a NoteVerifier, vkey text or (name, key)."""


def checkpoint_key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """SHA-256(name || 0x0A || 0x01 || raw public key)[:4], the C2SP signed-note Ed25519 key id."""
    _check_key_name(name)
    return hashlib.sha256(
        name.encode() + b"\n" + bytes([SIGNATURE_TYPE_ED25519]) + _raw(public_key)
    ).digest()[:4]


def vkey_text(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key text ``<name>+<hex key id>+<base64(0x01 || public key)>`` (Go note format)."""
    key = bytes([SIGNATURE_TYPE_ED25519]) + _raw(public_key)
    return f"{name}+{checkpoint_key_id(name, public_key).hex()}+{base64.b64encode(key).decode()}"


def key_fingerprint(public_key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte Ed25519 public key, lowercase hex in 16 groups of 4.

    Unlike the 4-byte key id of a vkey, this names the key alone (not the key name) with a
    collision-resistant hash, so an operator can publish it and a reader compare it by eye.
    """
    digest = hashlib.sha256(_raw(public_key)).hexdigest()
    return " ".join(digest[i : i + 4] for i in range(0, len(digest), 4))


def parse_vkey(text: str) -> NoteVerifier:
    """The verifier named by vkey `text`; raises `InvalidInputError` if malformed or inconsistent."""
    # The base64 key may itself contain "+", and names may not: split on the first two only.
    parts = text.strip().split("+", 2)
    if len(parts) != 3:
        raise InvalidInputError("verifier key is not <name>+<hex key id>+<base64 key>")
    name, key_id_hex, key_b64 = parts
    _check_key_name(name)
    if not _KEY_ID_HEX.match(key_id_hex):
        raise InvalidInputError(f"verifier key id {key_id_hex!r} is not 8 lowercase hex digits")
    key = _b64decode(key_b64)
    if key is None or len(key) != 33 or key[0] != SIGNATURE_TYPE_ED25519:
        raise InvalidInputError(
            "verifier key is not base64 of 0x01 followed by a 32-byte Ed25519 key"
        )
    try:
        public_key = Ed25519PublicKey.from_public_bytes(key[1:])
    except ValueError as exc:
        raise InvalidInputError("verifier key is not a valid Ed25519 public key") from exc
    verifier = NoteVerifier.from_public_key(name, public_key)
    if verifier.key_id.hex() != key_id_hex:
        raise InvalidInputError(
            f"verifier key id {key_id_hex} does not match its key ({verifier.key_id.hex()})"
        )
    return verifier


def signature_line(text: str, *, name: str, private_key: Ed25519PrivateKey) -> str:
    """The signature line (no newline) of key `name` over note text `text`."""
    key_id = checkpoint_key_id(name, private_key.public_key())
    return NoteSignature(name, key_id, private_key.sign(text.encode())).line()


def sign_checkpoint(cp: Checkpoint, *, name: str, private_key: Ed25519PrivateKey) -> str:
    """The signed note of `cp`, with one signature by `private_key` under key name `name`."""
    body = cp.body()
    return f"{body}\n{signature_line(body, name=name, private_key=private_key)}\n"


def parse_checkpoint_note(text: str) -> tuple[Checkpoint, list[NoteSignature]]:
    """Split and strictly parse a checkpoint note WITHOUT checking any signature.

    Raises `VerificationError` (reason ``bad_checkpoint``) if the note or body is malformed, or
    `PayloadTooLargeError` if it exceeds `MAX_NOTE_BYTES`.
    """
    body, signatures = _split_note(text)
    return _parse_body(body), signatures


def verify_checkpoint(
    note: str, *, verifiers: Sequence[Verifier], origin: str | None = None
) -> Checkpoint:
    """The checkpoint of `note` if a known key signed it and every known key's signature holds.

    Signatures by keys not in `verifiers` (matched on name AND key id) are ignored. If `origin`
    is given the checkpoint must carry it. Raises `VerificationError` with reason
    ``bad_checkpoint`` (malformed), ``bad_checkpoint_signature`` (no known key verifies, or a
    known key's signature fails) or ``origin_mismatch``; `InvalidInputError` for a bad verifier.
    """
    body, signatures = _split_note(note)
    checkpoint = _parse_body(body)
    known: dict[tuple[str, bytes], list[NoteVerifier]] = {}
    for v in verifiers:
        verifier = _as_verifier(v)
        known.setdefault((verifier.name, verifier.key_id), []).append(verifier)
    text = body.encode()
    verified = False
    for sig in signatures:
        candidates = known.get((sig.name, sig.key_id))
        if candidates is None:
            continue
        if not any(c.is_valid(text, sig.signature) for c in candidates):
            raise VerificationError(
                f"the signature by {sig.name} (key id {sig.key_id.hex()}) does not verify",
                reason="bad_checkpoint_signature",
            )
        verified = True
    if not verified:
        names = ", ".join(sorted({f"{n}+{k.hex()}" for n, k in known})) or "none"
        raise VerificationError(
            f"no signature by a known key (known: {names})", reason="bad_checkpoint_signature"
        )
    if origin is not None and checkpoint.origin != origin:
        raise VerificationError(
            f"checkpoint origin {checkpoint.origin!r} is not {origin!r}", reason="origin_mismatch"
        )
    return checkpoint


def _split_note(text: str) -> tuple[str, list[NoteSignature]]:
    if not isinstance(text, str):
        raise _bad(f"a note is text, not {type(text).__name__}")
    try:
        size = len(text.encode())
    except UnicodeEncodeError as exc:
        raise _bad("note is not valid UTF-8") from exc
    if size > MAX_NOTE_BYTES:
        raise PayloadTooLargeError(f"note has {size} bytes, more than {MAX_NOTE_BYTES}")
    if match := _CONTROL.search(text):
        raise _bad(f"note contains control character {match.group()!r}")
    if not text.endswith("\n"):
        raise _bad("note does not end with a newline")
    split = text.rfind("\n\n")
    if split < 0:
        raise _bad("note has no blank line before its signatures")
    body, block = text[: split + 1], text[split + 2 :]
    lines = block[:-1].split("\n") if block else []
    if not lines:
        raise _bad("note has no signature lines")
    if len(lines) > MAX_SIGNATURES:
        raise _bad(f"note has {len(lines)} signature lines, more than {MAX_SIGNATURES}")
    return body, [_parse_signature(line) for line in lines]


def _parse_signature(line: str) -> NoteSignature:
    if not line.startswith(EM_DASH + " "):
        raise _bad(
            f"signature line {line[:40]!r} does not start with an em dash (U+2014) and a space"
        )
    parts = line[2:].split(" ")
    if len(parts) != 2 or not parts[0]:
        raise _bad(f"signature line {line[:40]!r} is not '— <key name> <base64 signature>'")
    name, sig_b64 = parts
    if "+" in name or _SPACE.search(name):
        raise _bad(f"key name {name!r} contains a space or '+'")
    raw = _b64decode(sig_b64)
    if raw is None or len(raw) < 5:
        raise _bad(f"signature of {name} is not base64 of a key id and a signature")
    return NoteSignature(name=name, key_id=raw[:4], signature=raw[4:])


def _parse_body(body: str) -> Checkpoint:
    lines = body[:-1].split("\n")
    if len(lines) < 3:
        raise _bad(f"checkpoint body has {len(lines)} lines, expected origin, size and root hash")
    if "" in lines:
        raise _bad(f"checkpoint body line {lines.index('') + 1} is empty")
    if len(lines) > 3:
        raise _bad("checkpoint has extension lines, which this log does not support")
    origin, size_text, root_text = lines
    if not origin:
        raise _bad("checkpoint origin is empty")
    if not _SIZE.match(size_text) or int(size_text) > MAX_TREE_SIZE:
        raise _bad(f"checkpoint size {size_text!r} is not a decimal without leading zeros")
    root_hash = _b64decode(root_text)
    if root_hash is None or len(root_hash) != 32:
        raise _bad(f"checkpoint root {root_text!r} is not base64 of 32 bytes")
    return Checkpoint(origin=origin, size=int(size_text), root_hash=root_hash)


def _as_verifier(v: Verifier) -> NoteVerifier:
    if isinstance(v, NoteVerifier):
        return v
    if isinstance(v, str):
        return parse_vkey(v)
    name, public_key = v
    return NoteVerifier.from_public_key(name, public_key)


def _check_key_name(name: str) -> None:
    if not name or "+" in name or _SPACE.search(name) or _CONTROL.search(name):
        raise InvalidInputError(f"key name {name!r} is empty or contains a space, '+' or control")


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _b64decode(text: str) -> bytes | None:
    # Strict: standard alphabet, padded, and canonical (re-encodes to the same text), so one
    # value has exactly one accepted spelling.
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if base64.b64encode(raw).decode() == text else None


def _bad(message: str) -> VerificationError:
    return VerificationError(message, reason="bad_checkpoint")
