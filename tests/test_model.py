"""schemas/manifest.v1.json and exchange.model agree on every vector; canonical form properties."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rfc8785
from hypothesis import given, strategies as st

from exchange.errors import InvalidInputError
from exchange.model import Manifest, canonical_bytes, parse_json
from exchange.schema import schema_errors
from tests.conftest import VECTORS

VALID = sorted((VECTORS / "manifest" / "valid").glob("*.json"))
INVALID = sorted((VECTORS / "manifest" / "invalid").glob("*.json"))


def test_there_are_vectors():
    assert len(VALID) >= 3
    assert len(INVALID) >= 25


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_vectors_pass_schema_and_model_and_round_trip(path: Path):
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert schema_errors("manifest.v1.json", doc) == []
    manifest = Manifest.from_wire(doc)
    assert canonical_bytes(manifest) == canonical_bytes(doc)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_vectors_fail_schema_and_model(path: Path):
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert schema_errors("manifest.v1.json", doc) != []
    with pytest.raises(InvalidInputError, match=r"^manifest /"):
        Manifest.from_wire(doc)


def test_integral_float_size_is_accepted_by_both_and_canonicalises_to_an_integer():
    doc = json.loads(VALID[0].read_text())
    doc["files"][0]["size"] = 16000.0
    assert schema_errors("manifest.v1.json", doc) == []
    assert canonical_bytes(Manifest.from_wire(doc)) == canonical_bytes(
        json.loads(VALID[0].read_text())
    )


def test_parse_json_rejects_nan_and_bad_utf8():
    with pytest.raises(InvalidInputError, match="NaN is not JSON"):
        parse_json(b'{"a": NaN}', what="x")
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        parse_json(b'{"a": "\xff"}', what="x")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_canonical_bytes_are_a_fixed_point(value: object):
    once = canonical_bytes(value)
    assert canonical_bytes(json.loads(once)) == once


@given(st.dictionaries(st.text(), st.integers(-(2**53) + 1, 2**53 - 1), min_size=2, max_size=8))
def test_canonical_bytes_ignore_key_order(d: dict[str, int]):
    reordered = dict(reversed(list(d.items())))
    assert canonical_bytes(reordered) == canonical_bytes(d)


@given(st.dictionaries(st.text(), st.text(), min_size=1, max_size=6))
def test_canonical_keys_sorted_by_utf16_code_units(d: dict[str, str]):
    keys = list(json.loads(canonical_bytes(d)).keys())
    assert keys == sorted(keys, key=lambda k: k.encode("utf-16-be"))


def test_canonical_number_forms():
    assert (
        canonical_bytes({"b": 1.0, "a": 1e21, "c": "\u00e9"})
        == '{"a":1e+21,"b":1,"c":"é"}'.encode()
    )


any_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=25,
)


@given(any_json)
def test_fast_canonical_path_equals_the_general_serializer(value: object):
    assert canonical_bytes(value) == rfc8785.dumps(value)  # type: ignore[arg-type]  # any JSON value


def test_keys_beyond_the_bmp_sort_by_utf16_code_units():
    # U+1F600 is D83D DE00 in UTF-16, so it sorts before U+FB01; code points say the opposite.
    value = {"\U0001f600": 1, "\ufb01": 2}
    assert canonical_bytes(value) == rfc8785.dumps(value)
    assert canonical_bytes(value).startswith('{"\U0001f600"'.encode())
