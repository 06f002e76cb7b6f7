"""Loads the JSON Schemas under `schemas/` and validates wire documents against them."""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator, FormatChecker

from exchange.errors import InvalidInputError

# exchange/schemas is a link to the repository's schemas/, so an installed wheel (which has no
# repository around it) carries the same files as package data.
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"

_format_checker = FormatChecker(formats=())


@_format_checker.checks("date-time", raises=ValueError)
def _is_rfc3339(value: object) -> bool:
    # The schema's pattern already demands an explicit offset; this rejects impossible dates.
    if not isinstance(value, str):
        return True
    datetime.fromisoformat(value)
    return True


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    # ECMA-262 `$` matches only at the very end; Python's also matches before a final newline.
    # Make the two agree (for a final `$`, the only place our schemas use it) so that "abc\n" never passes a pattern that ends in `$`.
    if not validator.is_type(instance, "string"):
        return
    python_pattern = (
        pattern[:-1] + r"\Z" if pattern.endswith("$") and not pattern.endswith("\\$") else pattern
    )
    if not re.search(python_pattern, instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]  # untyped in jsonschema
    Draft202012Validator, {"pattern": _pattern}
)


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Return the parsed schema `schemas/<name>`."""
    with (SCHEMA_DIR / name).open(encoding="utf-8") as f:
        schema: dict[str, Any] = json.load(f)
    Draft202012Validator.check_schema(schema)
    return schema


@cache
def _validator(name: str) -> Any:
    return _Validator(load_schema(name), format_checker=_format_checker)


def schema_errors(name: str, instance: object) -> list[str]:
    """Every violation of schema `name` by `instance`, as 'json/path: message' lines, in order."""
    errors = sorted(_validator(name).iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{_where(e.absolute_path)}: {e.message}" for e in errors]


def validate(name: str, instance: object) -> None:
    """Raise `InvalidInputError` naming the first violation of schema `name`."""
    errors = schema_errors(name, instance)
    if errors:
        raise InvalidInputError(f"not valid against {name}: {errors[0]}")


def _where(path: Any) -> str:
    parts = [str(p) for p in path]
    return "/" + "/".join(parts) if parts else "/"
