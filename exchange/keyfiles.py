"""Private key files of the node itself: load a configured PEM, or make a development key once."""

from __future__ import annotations

import os
from pathlib import Path

from exchange.errors import InvalidInputError
from exchange.signing import Signer


def load_or_create_dev_key(path: Path) -> Signer:
    """Load the Ed25519 key at `path`, creating it (mode 0600, parent folders 0700) if absent.

    For development only: the composition root calls this when no key path is configured.
    Raises `InvalidInputError` if the file exists but is not an Ed25519 PEM private key.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        signer = Signer.generate()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: load theirs below
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(signer.private_pem())
            return signer
    return load_ed25519_key(path)


def load_ed25519_key(path: Path) -> Signer:
    """Load an Ed25519 PEM private key; raises `InvalidInputError` for anything else."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read key {path}: {exc.strerror}") from exc
    signer = Signer.from_pem(pem)
    if signer.algorithm != "EdDSA":
        raise InvalidInputError(f"{path}: the ledger key must be Ed25519")
    return signer


def ledger_key(*, key_path: Path | None, data_dir: Path, development: bool) -> Signer:
    """The ledger signing key: `key_path` if set, else (development only) `<data_dir>/keys/ledger.key.pem`."""
    if key_path is not None:
        return load_ed25519_key(key_path)
    if not development:
        raise InvalidInputError("no ledger key configured (EXCHANGE_LEDGER_KEY_PATH)")
    return load_or_create_dev_key(data_dir / "keys" / "ledger.key.pem")
