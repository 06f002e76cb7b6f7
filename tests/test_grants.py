"""Object-level authorization: owners, country and agency grants, expiry, revocation, 404s."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from exchange.errors import ForbiddenError, InvalidInputError, NotFoundError
from exchange.grants import (
    CaseView,
    GrantView,
    authorizing_grant,
    can_read_case,
    check_case_access,
    check_case_owner,
    check_new_grant,
    check_scope,
    grant_covers,
    is_grant_live,
)
from exchange.model import Principal, Role

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
CASE = CaseView(case_id="0b5e6f3c-8a39-4d4b-9b8e-2f1f7a3c9d01", owner_agency="TH-RTP")
OTHER_CASE_ID = "7d1c2e4f-1a2b-4c3d-8e9f-0a1b2c3d4e5f"


def principal(agency: str, role: Role = Role.PARTNER, *scopes: str) -> Principal:
    return Principal(
        client_id=f"{agency.lower()}-client",
        agency=agency,
        country=agency[:2],
        role=role,
        scopes=frozenset(scopes or ("evidence:read", "custody:read")),
        token_id="t" * 32,
        expires_at=NOW + timedelta(minutes=15),
    )


def grant(
    country: str = "PH",
    agency: str | None = None,
    *,
    case_id: str = CASE.case_id,
    expires_at: datetime = NOW + timedelta(days=30),
    revoked_at: datetime | None = None,
    scope: frozenset[str] = frozenset({"read"}),
) -> GrantView:
    return GrantView(
        grant_id="g1",
        case_id=case_id,
        grantee_country=country,
        grantee_agency=agency,
        scope=scope,
        expires_at=expires_at,
        revoked_at=revoked_at,
    )


TH = principal("TH-RTP", Role.INVESTIGATOR)
TH_OTHER = principal("TH-DSI")
PH_NBI = principal("PH-NBI")
PH_PNP = principal("PH-PNP")
VN = principal("VN-MPS")


def test_live_grant():
    assert is_grant_live(grant(), now=NOW)


def test_grant_expires_at_its_instant():
    g = grant(expires_at=NOW + timedelta(seconds=1))
    assert is_grant_live(g, now=NOW)
    assert not is_grant_live(g, now=NOW + timedelta(seconds=1))


def test_revoked_grant_is_dead_from_revocation_on():
    g = grant(revoked_at=NOW)
    assert not is_grant_live(g, now=NOW)
    assert is_grant_live(g, now=NOW - timedelta(seconds=1))


def test_country_grant_covers_every_agency_of_the_country():
    g = grant("PH")
    assert grant_covers(g, PH_NBI)
    assert grant_covers(g, PH_PNP)
    assert not grant_covers(g, VN)


def test_agency_grant_covers_only_that_agency():
    g = grant("PH", "PH-NBI")
    assert grant_covers(g, PH_NBI)
    assert not grant_covers(g, PH_PNP)
    assert not grant_covers(g, VN)


def test_grant_covers_only_its_scopes():
    assert not grant_covers(grant(), PH_NBI, scope="write")
    assert not grant_covers(grant(scope=frozenset()), PH_NBI)


def test_owner_agency_reads_without_any_grant():
    assert can_read_case(TH, CASE, [], now=NOW)
    assert check_case_access(TH, CASE, [], now=NOW) is CASE


def test_other_agency_of_owner_country_needs_a_grant():
    assert not can_read_case(TH_OTHER, CASE, [], now=NOW)
    assert can_read_case(TH_OTHER, CASE, [grant("TH")], now=NOW)


def test_partner_reads_under_live_grant_only():
    assert can_read_case(PH_NBI, CASE, [grant("PH")], now=NOW)
    assert not can_read_case(PH_NBI, CASE, [grant("PH", expires_at=NOW)], now=NOW)
    assert not can_read_case(PH_NBI, CASE, [grant("PH", revoked_at=NOW)], now=NOW)
    assert not can_read_case(VN, CASE, [grant("PH")], now=NOW)


def test_one_live_grant_among_dead_ones_suffices():
    grants = [grant("PH", revoked_at=NOW), grant("PH", expires_at=NOW), grant("PH", "PH-NBI")]
    assert can_read_case(PH_NBI, CASE, grants, now=NOW)


def test_grant_on_another_case_does_not_open_this_one():
    assert not can_read_case(PH_NBI, CASE, [grant("PH", case_id=OTHER_CASE_ID)], now=NOW)


def test_no_access_is_answered_not_found_exactly_like_a_missing_case():
    with pytest.raises(NotFoundError) as hidden:
        check_case_access(VN, CASE, [grant("PH")], now=NOW)
    with pytest.raises(NotFoundError) as missing:
        check_case_access(VN, None, [], now=NOW)
    assert hidden.value.message == missing.value.message == "case not found"
    assert type(hidden.value) is type(missing.value) is NotFoundError


def test_revoked_grant_is_answered_not_found():
    with pytest.raises(NotFoundError, match="case not found"):
        check_case_access(PH_NBI, CASE, [grant("PH", revoked_at=NOW - timedelta(hours=1))], now=NOW)


def test_owner_check():
    assert check_case_owner(TH, CASE, [], now=NOW) is CASE
    with pytest.raises(ForbiddenError, match="only the owning agency may do this"):
        check_case_owner(PH_NBI, CASE, [grant("PH")], now=NOW)
    with pytest.raises(NotFoundError, match="case not found"):
        check_case_owner(VN, CASE, [grant("PH")], now=NOW)


def test_check_scope():
    check_scope(TH, "evidence:read")
    with pytest.raises(ForbiddenError, match="this requires the grants:manage scope"):
        check_scope(PH_NBI, "grants:manage")


# --------------------------------------------------------------------------- new grants


def new_grant(**overrides: object) -> None:
    fields: dict[str, object] = {
        "case": CASE,
        "grantee_country": "PH",
        "grantee_agency": "PH-NBI",
        "scope": ["read"],
        "legal_basis_type": "mla",
        "legal_basis_reference": "MLA-2026-0042",
        "expires_at": NOW + timedelta(days=90),
        "now": NOW,
    }
    fields.update(overrides)
    check_new_grant(**fields)  # type: ignore[arg-type]


def test_valid_grant_requests_pass():
    new_grant()
    new_grant(grantee_agency=None)
    new_grant(grantee_country="TH", grantee_agency="TH-DSI")
    new_grant(expires_at=NOW + timedelta(days=365))
    new_grant(legal_basis_type="eio")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"grantee_country": "ph"}, "grantee_country must be an ISO 3166-1 alpha-2 code, e.g. PH"),
        ({"grantee_country": "PHL"}, "grantee_country must be an ISO 3166-1 alpha-2 code, e.g. PH"),
        (
            {"grantee_country": "PH\n"},
            "grantee_country must be an ISO 3166-1 alpha-2 code, e.g. PH",
        ),
        ({"grantee_agency": "nbi"}, "grantee_agency must be an agency id, e.g. PH-NBI"),
        ({"grantee_agency": "VN-MPS"}, "grantee_agency must belong to grantee_country"),
        (
            {"grantee_country": "TH", "grantee_agency": "TH-RTP"},
            "grantee_agency already owns the case",
        ),
        ({"scope": []}, 'scope must be a non-empty list, e.g. ["read"]'),
        ({"scope": "read"}, 'scope must be a non-empty list, e.g. ["read"]'),
        ({"scope": ["read", "read"]}, "scope must not repeat an entry"),
        ({"scope": ["read", "write"]}, 'scope may only hold "read"'),
        ({"scope": ["admin"]}, 'scope may only hold "read"'),
        (
            {"legal_basis_type": "handshake"},
            "legal_basis.type must be one of: warrant, mla, production_order, eio, other",
        ),
        (
            {"legal_basis_reference": "  "},
            "legal_basis.reference must be 1 to 500 characters, not blank",
        ),
        (
            {"legal_basis_reference": "x" * 501},
            "legal_basis.reference must be 1 to 500 characters, not blank",
        ),
        ({"expires_at": datetime(2027, 1, 1)}, "expires_at must carry a UTC offset"),
        ({"expires_at": NOW}, "expires_at must be in the future"),
        ({"expires_at": NOW - timedelta(days=1)}, "expires_at must be in the future"),
        (
            {"expires_at": NOW + timedelta(days=365, seconds=1)},
            "expires_at must be at most 365 days from now",
        ),
    ],
)
def test_bad_grant_request_is_refused(overrides: dict[str, object], message: str):
    with pytest.raises(InvalidInputError) as info:
        new_grant(**overrides)
    assert info.value.message == message


def test_the_authorizing_grant_is_the_narrowest_then_longest_live_one():
    def named(grant_id: str, view: GrantView) -> GrantView:
        return GrantView(**{**view.__dict__, "grant_id": grant_id})

    wide_long = named("a-wide", grant(expires_at=NOW + timedelta(days=300)))
    nbi_short = named("z-nbi", grant(agency="PH-NBI", expires_at=NOW + timedelta(days=3)))
    nbi_long = named("y-nbi", grant(agency="PH-NBI", expires_at=NOW + timedelta(days=9)))
    nbi_long_too = named("x-nbi", grant(agency="PH-NBI", expires_at=NOW + timedelta(days=9)))
    revoked = named(
        "0-nbi", grant(agency="PH-NBI", revoked_at=NOW, expires_at=NOW + timedelta(days=99))
    )
    other_case = named("1-nbi", grant(agency="PH-NBI", case_id=OTHER_CASE_ID))
    grants = [wide_long, nbi_short, nbi_long, revoked, other_case, nbi_long_too]
    for order in (grants, grants[::-1]):
        assert authorizing_grant(PH_NBI, CASE, order, now=NOW) == nbi_long_too
    assert authorizing_grant(PH_PNP, CASE, grants, now=NOW) == wide_long
    assert authorizing_grant(PH_NBI, CASE, [revoked, other_case], now=NOW) is None
    # The owner reads under no grant, even if one would cover it.
    th_wide = named("th", grant("TH"))
    assert authorizing_grant(TH, CASE, [th_wide], now=NOW) is None
