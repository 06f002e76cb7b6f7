"""Private key files of the node itself: load a configured PEM, or make a development key once."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from exchange.errors import InvalidInputError
from exchange.signing import Signer


def load_or_create_dev_key(path: Path) -> Signer:
    """Load the Ed25519 key at `path`, creating it (mode 0600, parent folders 0700) if absent.

    For development only: the composition root calls this when no key path is configured.
    Several workers may start at once: the key is written whole under a temporary name and
    linked into place, so a reader never meets a half-written file and one key wins.
    Raises `InvalidInputError` if the file exists but is not an Ed25519 PEM private key.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        signer = Signer.generate()
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(signer.private_pem())
                f.flush()
                os.fsync(f.fileno())
            os.link(temporary, path)  # fails if another process linked its key first
        except FileExistsError:
            pass  # load theirs below
        else:
            return signer
        finally:
            temporary.unlink(missing_ok=True)
    return load_ed25519_key(path)


def load_ed25519_key(path: Path) -> Signer:
    """Load an Ed25519 PEM private key; raises `InvalidInputError` for anything else."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read key {path}: {exc.strerror}") from exc
    signer = Signer.from_pem(pem)
    if not signer.is_ed25519:
        raise InvalidInputError(f"{path}: the ledger key must be Ed25519")
    return signer


def ledger_key(*, key_path: Path | None, data_dir: Path, development: bool) -> Signer:
    """The ledger signing key: `key_path` if set, else (development only) `<data_dir>/keys/ledger.key.pem`."""
    if key_path is not None:
        return load_ed25519_key(key_path)
    if not development:
        raise InvalidInputError("no ledger key configured (EXCHANGE_LEDGER_KEY_PATH)")
    return load_or_create_dev_key(data_dir / "keys" / "ledger.key.pem")
