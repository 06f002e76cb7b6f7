"""The path rules: anything they accept stays inside data/; anything that could escape is refused."""

from __future__ import annotations

import os
import posixpath

import pytest
from hypothesis import given, strategies as st

from exchange.errors import VerificationError
from exchange.package import check_path, path_problem

segment_chars = st.characters(exclude_categories=["Cs"], exclude_characters="/")
segments = st.text(segment_chars, min_size=0, max_size=12) | st.sampled_from(["..", ".", ""])
paths = st.lists(segments, min_size=1, max_size=6).map("/".join) | st.text(max_size=40)


@given(paths)
def test_accepted_paths_stay_inside_the_root(path: str):
    if path_problem(path) is not None:
        return
    root = "/pkg/data"
    joined = posixpath.normpath(posixpath.join(root, path))
    assert joined.startswith(root + "/")
    assert joined == posixpath.join(root, path), "an accepted path is already normal"


@given(st.lists(segments, min_size=1, max_size=5), st.integers(0, 5))
def test_any_dotdot_segment_is_refused(parts: list[str], at: int):
    parts.insert(min(at, len(parts)), "..")
    assert path_problem("/".join(parts)) is not None


@given(st.text(min_size=1, max_size=20))
def test_nul_backslash_and_leading_slash_are_refused(text: str):
    for bad in ("\x00" + text, text + "\\x", "/" + text):
        assert path_problem(bad) is not None


@pytest.mark.parametrize(
    "path",
    ["a", "phone/image.bin", "ข้อความ/แชท.txt", "a b/c-d_e.f", "..hidden", "x..y/z", "...."],
)
def test_ordinary_paths_are_accepted(path: str):
    check_path(path)


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("", "is empty"),
        ("a/", "has an empty segment"),
        ("a\tb", "contains a control character"),
        ("e\u0301.txt", "is not in Unicode NFC form"),
        ("x" * 256, "has a segment longer than 255 bytes"),
        ("a/" * 600, "is longer than 1024 bytes"),
    ],
)
def test_edge_paths_are_refused_with_a_reason(path: str, problem: str):
    with pytest.raises(VerificationError) as info:
        check_path(path)
    assert info.value.message == f"unsafe path {path!r}: {problem}"


def test_platform_separator_is_posix():
    assert os.sep == "/"  # the rules assume POSIX; the exchange runs on Linux
