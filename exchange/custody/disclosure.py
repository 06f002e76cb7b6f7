"""Who may read which entry of a case: the owning agency everything, a partner its own part.

A partner's custody bundle discloses the owner's case, package and seal entries, the grants made
to it (to its agency or to its whole country) and their revocations, and what its own agency did
(fetches, exports). Every other entry, above all another partner's grants and fetches, becomes a
redacted stub: its seq, case_seq and leaf hash, which keep the case chain whole (see
`exchange.ledger.casechain`) and say nothing of its content.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from exchange.ledger.entry import Action

# The owner's entries that describe the evidence itself, shown to every partner of the case.
_EVIDENCE_ACTIONS = frozenset(
    {Action.CASE_OPENED, Action.PACKAGE_REGISTERED, Action.PACKAGE_SEALED}
)


@dataclass(frozen=True)
class Audience:
    """The agency a bundle is exported for; `owner` when it owns the case."""

    agency: str
    country: str
    owner: bool

    @property
    def view(self) -> str:
        """`owner` or `partner`, as the bundle states it."""
        return "owner" if self.owner else "partner"

    def to_wire(self) -> dict[str, str]:
        """The bundle's `audience` object."""
        return {"agency": self.agency, "country": self.country, "view": self.view}


def _granted_to(details: Mapping[str, Any], audience: Audience) -> bool:
    agency = details.get("grantee_agency")
    return details.get("grantee_country") == audience.country and agency in (None, audience.agency)


def disclosed(
    entries: Iterable[Mapping[str, Any]], *, owner_agency: str, audience: Audience
) -> list[bool]:
    """For each entry (wire objects of one case, in seq order): may `audience` read it in full."""
    if audience.owner:
        return [True for _ in entries]
    shown: list[bool] = []
    own_grants: set[object] = set()
    for entry in entries:
        agency = entry["actor"]["agency"]
        action = entry["action"]
        details = entry["details"]
        if agency == audience.agency:
            show = True
        elif action == Action.GRANT_ISSUED:
            show = _granted_to(details, audience)
            if show:
                own_grants.add(details.get("grant_id"))
        elif action == Action.GRANT_REVOKED:
            show = details.get("grant_id") in own_grants
        else:
            show = agency == owner_agency and action in _EVIDENCE_ACTIONS
        shown.append(show)
    return shown
