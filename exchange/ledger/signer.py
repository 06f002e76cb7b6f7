"""The log's identity: its origin (also its note key name) and the Ed25519 key signing checkpoints."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from exchange.errors import InvalidInputError
from exchange.ledger.checkpoint import (
    Checkpoint,
    key_fingerprint,
    sign_checkpoint,
    verify_checkpoint,
    vkey_text,
)
from exchange.signing import PublicKey, Signer


@dataclass(frozen=True)
class LogSigner:
    """Signs the checkpoints of the log named `origin`, under key name `origin`."""

    private_key: Ed25519PrivateKey
    origin: str

    @classmethod
    def from_signer(cls, signer: Signer, *, origin: str) -> LogSigner:
        """Raises `InvalidInputError` unless the key is Ed25519."""
        if not isinstance(signer.private_key, Ed25519PrivateKey):
            raise InvalidInputError("the ledger key must be Ed25519")
        return cls(private_key=signer.private_key, origin=origin)

    def sign(self, body: Checkpoint) -> str:
        """The signed checkpoint note for `body`."""
        return sign_checkpoint(body, name=self.origin, private_key=self.private_key)

    def verifier(self) -> LogVerifier:
        """The matching verifier."""
        return LogVerifier(public_key=self.private_key.public_key(), origin=self.origin)

    @property
    def vkey(self) -> str:
        """The C2SP verifier key text partners pin (``<origin>+<key id>+<base64 key>``)."""
        return vkey_text(self.origin, self.private_key.public_key())

    @property
    def fingerprint(self) -> str:
        """`key_fingerprint` of the public key: what an operator publishes beside the vkey."""
        return key_fingerprint(self.private_key.public_key())


@dataclass(frozen=True)
class LogVerifier:
    """Verifies checkpoints of one log key; `origin` None takes it from each note (offline proofs)."""

    public_key: Ed25519PublicKey
    origin: str | None

    @classmethod
    def from_public_key(cls, public_key: PublicKey, *, origin: str | None) -> LogVerifier:
        """Raises `InvalidInputError` unless the key is Ed25519."""
        if not isinstance(public_key, Ed25519PublicKey):
            raise InvalidInputError("the ledger key must be Ed25519")
        return cls(public_key=public_key, origin=origin)

    def verify(self, note: str) -> Checkpoint:
        """The checkpoint body if this key signed `note`; raises `VerificationError` otherwise."""
        name = self.origin if self.origin is not None else note.split("\n", 1)[0]
        return verify_checkpoint(note, verifiers=[(name, self.public_key)], origin=self.origin)
