"""Loading the trust store from keys/trust-style folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exchange.errors import InvalidInputError
from exchange.signing import Signer
from exchange.trust import TrustStore
from tests.conftest import REPO, trusted


def _write(folder: Path, name: str, doc: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(doc))


def test_the_committed_dev_trust_store_loads():
    store = TrustStore.from_directory(REPO / "keys" / "dev" / "trust")
    assert {k.agency for k in store} == {"TH-RTP", "PH-NBI", "VN-C06"}


def test_single_entry_and_rotation_list(tmp_path: Path):
    a, b = Signer.generate(), Signer.generate()
    _write(
        tmp_path / "agencies",
        "TH-RTP",
        [trusted(a, "TH-RTP").to_entry(), trusted(b, "TH-RTP").to_entry()],
    )
    _write(tmp_path / "agencies", "PH-NBI", trusted(Signer.generate(), "PH-NBI").to_entry())
    store = TrustStore.from_directory(tmp_path)
    assert len(store) == 3
    assert store.get(a.key_id).agency == "TH-RTP"


def test_key_id_that_does_not_match_the_key(tmp_path: Path):
    entry = trusted(Signer.generate(), "TH-RTP").to_entry()
    entry["key_id"] = "0" * 32
    _write(tmp_path / "agencies", "TH-RTP", entry)
    with pytest.raises(InvalidInputError, match=r"key_id 0{32} does not match the public key"):
        TrustStore.from_directory(tmp_path)


def test_entry_in_the_wrong_file(tmp_path: Path):
    _write(tmp_path / "agencies", "PH-NBI", trusted(Signer.generate(), "TH-RTP").to_entry())
    with pytest.raises(InvalidInputError, match="entry for agency TH-RTP in the file of PH-NBI"):
        TrustStore.from_directory(tmp_path)


def test_schema_invalid_entry(tmp_path: Path):
    entry = trusted(Signer.generate(), "TH-RTP").to_entry()
    del entry["not_after"]
    _write(tmp_path / "agencies", "TH-RTP", entry)
    with pytest.raises(InvalidInputError, match=r"not valid against trust-agency\.v1\.json"):
        TrustStore.from_directory(tmp_path)


def test_missing_folder(tmp_path: Path):
    with pytest.raises(InvalidInputError, match="is not a directory"):
        TrustStore.from_directory(tmp_path / "nope")
