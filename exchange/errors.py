"""Domain exceptions of the exchange; HTTP status codes are mapped in `exchange.api.errors` only.

The tree::

    ExchangeError                      code "error"
    ├── InvalidInputError              "invalid_input"        bad request body, schema or semantic check
    │   └── PayloadTooLargeError       "payload_too_large"    a size or count limit was exceeded
    ├── NotFoundError                  "not_found"            unknown case, package, grant, log index
    │   └── BlobNotFoundError          "blob_not_found"       object missing from the blob store
    ├── ConflictError                  "conflict"             duplicate id, already sealed or revoked
    ├── UnauthenticatedError           "unauthenticated"      bad, expired or replayed token
    │   ├── CredentialsMissingError    "unauthenticated"      no token at all (RFC 6750 §3.1)
    │   ├── InvalidDPoPProofError      "invalid_dpop_proof"   DPoP proof bad, replayed or for another request
    │   │   └── DPoPNonceRequiredError "use_dpop_nonce"       the proof needs the server's current nonce
    │   └── DPoPRequiredError          "dpop_required"        bound token without DPoP, or bearer refused
    ├── ForbiddenError                 "forbidden"            authenticated but not allowed
    ├── VerificationError              "verification_failed"  signature, digest or proof does not hold
    │   └── IntegrityFailureError      "integrity_failure"    stored bytes no longer match the record
    │       └── StoredObjectCorruptError "stored_object_corrupt" a stored evidence object, found on fetch
    ├── UnavailableError               "unavailable"          a backend is busy or down; retry later
    │   ├── DatabaseUnavailableError   "database_unavailable" the database does not answer
    │   └── StorageUnavailableError    "storage_unavailable"  the object store does not answer
    └── StorageError                   "storage_error"        a backend failed in an unexpected way

Every error carries a human message; `VerificationError` also carries a stable machine `reason`
(e.g. ``hash_mismatch``) and, where one file is at fault, its ``path``. Errors translated from a
driver (SQL, S3, the file system) keep the driver's exception as their ``__cause__`` for the
server log; their message stays plain, and the HTTP layer never shows a server-side error's
message to a caller anyway (see `exchange.api.errors`).
"""

from __future__ import annotations

from typing import ClassVar


class ExchangeError(Exception):
    """Base of every error the exchange raises on purpose."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInputError(ExchangeError):
    """Input failed a schema or semantic check."""

    code = "invalid_input"


class PayloadTooLargeError(InvalidInputError):
    """A body, file or count exceeded a configured limit."""

    code = "payload_too_large"


class NotFoundError(ExchangeError):
    """The thing asked for does not exist, or the caller may not know that it does."""

    code = "not_found"


class BlobNotFoundError(NotFoundError):
    """The blob store holds no object under that key."""

    code = "blob_not_found"


class ConflictError(ExchangeError):
    """The request conflicts with the current state (duplicate id, already sealed...)."""

    code = "conflict"


class UnauthenticatedError(ExchangeError):
    """Credentials are missing, malformed, expired or replayed; the message stays opaque."""

    code = "unauthenticated"


class CredentialsMissingError(UnauthenticatedError):
    """The request carries no credentials the exchange understands."""

    # Same code as its parent: for the caller, both mean "log in"; only the WWW-Authenticate
    # challenge differs (no error code without a token, RFC 6750 §3.1).


class InvalidDPoPProofError(UnauthenticatedError):
    """A DPoP proof (RFC 9449) is malformed, replayed, or does not fit the request or token."""

    code = "invalid_dpop_proof"


class DPoPNonceRequiredError(InvalidDPoPProofError):
    """The DPoP proof must carry the server's current nonce (sent back with this error)."""

    code = "use_dpop_nonce"

    def __init__(self, message: str, *, nonce: str) -> None:
        super().__init__(message)
        self.nonce = nonce


class DPoPRequiredError(UnauthenticatedError):
    """The access token must be used with DPoP: it is DPoP-bound, or bearer tokens are off."""

    code = "dpop_required"


class ForbiddenError(ExchangeError):
    """The caller is known but not allowed to do this."""

    code = "forbidden"


class VerificationError(ExchangeError):
    """A signature, digest, path rule or proof does not hold.

    `reason` is a stable machine-readable code; `path` names the file at fault, if any.
    """

    code = "verification_failed"

    def __init__(self, message: str, *, reason: str, path: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.path = path


class IntegrityFailureError(VerificationError):
    """Bytes held by the exchange no longer match what was sealed."""

    code = "integrity_failure"


class StoredObjectCorruptError(IntegrityFailureError):
    """A stored evidence object no longer matches its sealed size or SHA-256."""

    code = "stored_object_corrupt"


class UnavailableError(ExchangeError):
    """A backend (database, object store) is unreachable; the caller should retry."""

    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DatabaseUnavailableError(UnavailableError):
    """The database does not answer or is busy; the caller should retry."""

    code = "database_unavailable"


class StorageUnavailableError(UnavailableError):
    """The object store does not answer in time; the caller should retry."""

    code = "storage_unavailable"


class StorageError(ExchangeError):
    """A storage backend failed in a way that is not a plain outage."""

    code = "storage_error"
