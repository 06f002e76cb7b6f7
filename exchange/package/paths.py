"""The path rules for files inside a package's data/ directory."""

from __future__ import annotations

import unicodedata

from exchange.errors import VerificationError

MAX_PATH_BYTES = 1024
MAX_SEGMENT_BYTES = 255


def path_problem(path: str) -> str | None:
    """Why `path` is not a safe POSIX path relative to data/, or None if it is."""
    if not path:
        return "is empty"
    if "\x00" in path:
        return "contains a NUL byte"
    if "\\" in path:
        return "contains a backslash"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        return "contains a control character"
    if path.startswith("/"):
        return "is absolute"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"is longer than {MAX_PATH_BYTES} bytes"
    if unicodedata.normalize("NFC", path) != path:
        return "is not in Unicode NFC form"
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            return f"has a {segment or 'empty'!r} segment" if segment else "has an empty segment"
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            return f"has a segment longer than {MAX_SEGMENT_BYTES} bytes"
    return None


def check_path(path: str) -> None:
    """Raise `VerificationError` (reason ``unsafe_path``) unless `path` stays inside data/."""
    problem = path_problem(path)
    if problem is not None:
        raise VerificationError(f"unsafe path {path!r}: {problem}", reason="unsafe_path", path=path)
