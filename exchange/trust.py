"""The trust store: agency public keys with validity windows and revocations (keys/trust/)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from exchange.errors import InvalidInputError, VerificationError
from exchange.model import KeyId, parse_json
from exchange.schema import validate
from exchange.signing import PublicKey, key_id, load_public_key_pem, public_key_pem


def parse_time(value: str) -> datetime:
    """RFC 3339 with an explicit offset -> aware datetime; raises `InvalidInputError`."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInputError(f"not an RFC 3339 time: {value!r}") from exc
    if parsed.tzinfo is None:
        raise InvalidInputError(f"time has no UTC offset: {value!r}")
    return parsed


@dataclass(frozen=True)
class TrustedKey:
    """One agency signing key and the window in which its signatures count."""

    agency: str
    country: str
    key_id: KeyId
    public_key: PublicKey
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None = None

    @classmethod
    def from_entry(cls, entry: dict[str, Any], *, source: str) -> TrustedKey:
        """Build from a schema-valid trust entry; the stated key id must match the key."""
        public_key = load_public_key_pem(entry["public_key_pem"].encode("ascii"))
        actual = key_id(public_key)
        if actual != entry["key_id"]:
            raise InvalidInputError(
                f"{source}: key_id {entry['key_id']} does not match the public key ({actual})"
            )
        revoked = entry.get("revoked_at")
        return cls(
            agency=entry["agency"],
            country=entry["country"],
            key_id=actual,
            public_key=public_key,
            not_before=parse_time(entry["not_before"]),
            not_after=parse_time(entry["not_after"]),
            revoked_at=parse_time(revoked) if revoked else None,
        )

    def to_entry(self) -> dict[str, Any]:
        """The trust-entry JSON object (schemas/trust-agency.v1.json)."""
        entry: dict[str, Any] = {
            "agency": self.agency,
            "country": self.country,
            "public_key_pem": public_key_pem(self.public_key),
            "key_id": self.key_id,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
        }
        if self.revoked_at is not None:
            entry["revoked_at"] = self.revoked_at.isoformat()
        return entry

    def check_usable(self, *, agency: str, signed_at: datetime, now: datetime) -> None:
        """Raise `VerificationError` unless this key may vouch for `agency` at `signed_at`.

        A revoked key is refused outright once its revocation time has passed: revocation
        means compromise, and a compromised key can backdate. The custody ledger, not the
        package, proves that a package was sealed before a revocation.
        """
        if agency != self.agency:
            raise VerificationError(
                f"key {self.key_id} belongs to agency {self.agency}, not {agency}",
                reason="agency_mismatch",
            )
        if self.revoked_at is not None and self.revoked_at <= now:
            raise VerificationError(
                f"key {self.key_id} of agency {self.agency} was revoked at "
                f"{self.revoked_at.isoformat()}",
                reason="revoked_key",
            )
        if not self.not_before <= signed_at <= self.not_after:
            raise VerificationError(
                f"key {self.key_id} of agency {self.agency} is valid from "
                f"{self.not_before.isoformat()} to {self.not_after.isoformat()}, "
                f"not at created_at {signed_at.isoformat()}",
                reason="key_not_valid",
            )


class TrustStore:
    """Agency keys indexed by key id."""

    def __init__(self, keys: Iterable[TrustedKey] = ()) -> None:
        self._keys: dict[KeyId, TrustedKey] = {}
        for key in keys:
            if key.key_id in self._keys:
                raise InvalidInputError(f"key {key.key_id} appears twice in the trust store")
            self._keys[key.key_id] = key

    @classmethod
    def from_directory(cls, path: Path) -> TrustStore:
        """Load `path/agencies/*.json` (or `path/*.json` when there is no agencies/ folder)."""
        folder = path / "agencies" if (path / "agencies").is_dir() else path
        if not folder.is_dir():
            raise InvalidInputError(f"trust store {path} is not a directory")
        keys: list[TrustedKey] = []
        for file in sorted(folder.glob("*.json")):
            doc = parse_json(file.read_bytes(), what=str(file))
            try:
                validate("trust-agency.v1.json", doc)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{file}: {exc.message}") from exc
            entries = doc if isinstance(doc, list) else [doc]
            for entry in entries:
                if entry["agency"] != file.stem:
                    raise InvalidInputError(
                        f"{file}: entry for agency {entry['agency']} in the file of {file.stem}"
                    )
                keys.append(TrustedKey.from_entry(entry, source=str(file)))
        return cls(keys)

    def __iter__(self) -> Iterator[TrustedKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, kid: KeyId) -> TrustedKey:
        """The key with this id; raises `VerificationError` (``unknown_key``)."""
        try:
            return self._keys[kid]
        except KeyError:
            raise VerificationError(
                f"key {kid} is not in the trust store", reason="unknown_key"
            ) from None
