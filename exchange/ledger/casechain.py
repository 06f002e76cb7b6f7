"""The per-case chain: one running hash over a case's entries, in log order.

Every v2 entry about a case records `case_seq` (its place in the case's history, from 0) and
`case_prev`, the chain head before it:

    H(-1) = SHA-256("exchange.case-chain/v1" || 0x00 || case_id as UTF-8)
    H(k)  = SHA-256(H(k-1) || uint64 big-endian(seq of entry k) || leaf hash of entry k)

The head folds in each entry's *leaf hash* (RFC 6962, SHA-256(0x00 || bytes)) and its log seq,
so a redacted entry still takes part through its leaf hash alone, and an entry of one case can
never pass for another's (the case id seeds the chain). v1 entries, which carry no link, are
folded in all the same, in seq order: the first v2 entry of a case commits to all of them.
See docs/ledger.md, "Completeness of a case".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from exchange.errors import InvalidInputError
from exchange.ledger.entry import parse_entry
from exchange.ledger.merkle import leaf_hash

_DOMAIN = b"exchange.case-chain/v1\x00"


def genesis(case_id: str) -> bytes:
    """The head before a case's first entry."""
    return hashlib.sha256(_DOMAIN + case_id.encode("utf-8")).digest()


def advance(head: bytes, seq: int, leaf_hash: bytes) -> bytes:
    """The head after the entry at log `seq` with `leaf_hash`."""
    return hashlib.sha256(head + seq.to_bytes(8, "big") + leaf_hash).digest()


def fold(case_id: str, links: Iterable[tuple[int, bytes]]) -> tuple[int, bytes]:
    """(number of entries, head) after (seq, leaf hash) pairs in log order."""
    head = genesis(case_id)
    count = 0
    for seq, leaf in links:
        head = advance(head, seq, leaf)
        count += 1
    return count, head


class Heads:
    """Each case's (entries so far, head) while a log is built or read in seq order."""

    def __init__(self) -> None:
        self._heads: dict[str, tuple[int, bytes]] = {}

    def link(self, case_id: str) -> tuple[int, bytes]:
        """(case_seq, case_prev) that the case's next entry must carry."""
        return self._heads.get(case_id) or (0, genesis(case_id))

    def add(self, case_id: str, seq: int, leaf_hash: bytes) -> None:
        """Fold the case's next entry in."""
        count, head = self.link(case_id)
        self._heads[case_id] = (count + 1, advance(head, seq, leaf_hash))


class DeepCheck:
    """`audit.verify_log`'s `deep` check: parse each entry and hold every case chain to account.

    Called with each entry's bytes in seq order; raises `InvalidInputError` for an entry that
    does not parse or whose `case_seq`/`case_prev` differ from what its case's history gives.
    """

    def __init__(self) -> None:
        self._heads = Heads()

    def __call__(self, data: bytes) -> None:
        entry = parse_entry(data)
        if entry.case_id is None:
            return
        count, head = self._heads.link(entry.case_id)
        if entry.case_seq is not None and entry.case_seq != count:
            raise InvalidInputError(
                f"case {entry.case_id}: case_seq {entry.case_seq}, but {count} entries of the "
                "case come before it"
            )
        if entry.case_prev is not None and entry.case_prev != head.hex():
            raise InvalidInputError(
                f"case {entry.case_id}: case_prev is not the chain head of the case's "
                f"{count} earlier entries"
            )
        self._heads.add(entry.case_id, entry.seq, leaf_hash(data))
