"""Offline verification of custody bundles: v2 (complete, redacted, keys proven) and v1.

`verify_bundle` reads the bundle's `format` and verifies it by that version's rules; v1 bundles
exported before v2 keep verifying as they did. See `exchange.custody.v2` for what v2 proves.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from exchange.custody.record import (
    FORMAT as FORMAT_V1,
    CustodyReport,
    KeyOrigin,
    PackageRecord,
    TimelineEvent,
    describe,
    timeline_lines,
    verify_bundle_v1,
    verify_files,
)
from exchange.custody.v2 import FORMAT as FORMAT_V2, verify_bundle_v2
from exchange.errors import VerificationError
from exchange.package.hashing import ProgressCallback
from exchange.signing import PublicKey
from exchange.trust import TrustStore


def verify_bundle(
    bundle: object,
    *,
    log_key: PublicKey,
    origin: str | None = None,
    trust: TrustStore | None = None,
    files: Path | None = None,
    on_bytes: ProgressCallback | None = None,
) -> CustodyReport:
    """Verify a parsed custody bundle of any supported format, fully offline.

    `log_key` is the exchange's ledger public key; `origin` pins the log's name. `trust`, when
    given, replaces the signer keys (a verifier's own trust store). `files` is a folder holding
    `<package_id>/data/...`. Raises `VerificationError` naming the first failure.
    """
    if isinstance(bundle, Mapping) and bundle.get("format") == FORMAT_V2:
        return verify_bundle_v2(
            bundle, log_key=log_key, origin=origin, trust=trust, files=files, on_bytes=on_bytes
        )
    if isinstance(bundle, Mapping) and bundle.get("format", FORMAT_V1) != FORMAT_V1:
        raise VerificationError(
            f"unknown custody bundle format {bundle.get('format')!r}", reason="bad_bundle"
        )
    return verify_bundle_v1(
        bundle, log_key=log_key, origin=origin, trust=trust, files=files, on_bytes=on_bytes
    )


__all__ = [
    "FORMAT_V1",
    "FORMAT_V2",
    "CustodyReport",
    "KeyOrigin",
    "PackageRecord",
    "TimelineEvent",
    "describe",
    "timeline_lines",
    "verify_bundle",
    "verify_files",
]
