"""Whether a log only grew between two checkpoints a client saw, named as a client reads it (pure).

A client keeps the last checkpoint it verified. A later checkpoint of the same log must extend
it: a larger size with an RFC 9162 consistency proof, or the same size with the same root. Any
other answer means the log behind the signatures was rewritten, rolled back or forked (a split
view), which no honest exchange can produce once it has signed a checkpoint.
See: https://www.rfc-editor.org/rfc/rfc9162#section-2.1.4
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from exchange.errors import VerificationError
from exchange.ledger import merkle
from exchange.ledger.checkpoint import Checkpoint

REASON = "log_rewritten"


def _b64(root: bytes) -> str:
    return base64.b64encode(root).decode("ascii")


def verify_log_growth(*, seen: Checkpoint, current: Checkpoint, proof: Sequence[bytes]) -> None:
    """Check that `current` extends `seen`, using the consistency `proof` from seen to current.

    Both checkpoints' signatures must already have been verified. Raises `VerificationError`
    with reason ``origin_mismatch`` for checkpoints of two different logs, and ``log_rewritten``
    when the log shrank, holds another root at the same size, or the proof does not hold.
    """
    if seen.origin != current.origin:
        raise VerificationError(
            f"checkpoint of ledger {current.origin!r} compared with one of {seen.origin!r}",
            reason="origin_mismatch",
        )
    where = f"the ledger {current.origin}"
    if current.size < seen.size:
        raise VerificationError(
            f"{where} is now at tree size {current.size}, smaller than the size {seen.size} "
            "this client saw before: the log was rolled back or rewritten",
            reason=REASON,
        )
    if current.size == seen.size:
        if current.root_hash != seen.root_hash:
            raise VerificationError(
                f"{where} has root {_b64(current.root_hash)} at tree size {current.size}, but "
                f"this client saw root {_b64(seen.root_hash)} at that size: the log was rewritten",
                reason=REASON,
            )
        return
    try:
        merkle.verify_consistency(seen.size, current.size, seen.root_hash, current.root_hash, proof)
    except VerificationError as exc:
        raise VerificationError(
            f"{where} at tree size {current.size} does not extend the checkpoint at size "
            f"{seen.size} this client saw ({exc.message}): the log was rewritten",
            reason=REASON,
        ) from exc
