"""The `exchange keys` and `exchange package` commands, run as a user would run them."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from exchange.cli import main
from exchange.signing import Signer, load_private_key_pem, public_key_pem
from tests.builders import COLLECTION, write_source

BUILD_FLAGS = [
    "--case-ref", "TH-TCSD-2026-0042",
    "--legal-basis", "warrant",
    "--legal-reference", "W-2026-0042",
    "--legal-issued-by", "Bangkok Criminal Court",
    "--collected-by", "Pol. Lt. Somchai K.",
    "--collector-role", "examiner",
    "--collected-at", "2026-11-20T09:30:00+07:00",
    "--location", "Bangkok",
    "--method", "logical extraction",
    "--tool", "ExampleExtract",
    "--tool-version", "7.1.2",
    "--device", "Samsung Galaxy A54",
    "--seal", "S-1",
    "--seal", "S-2",
]  # fmt: skip


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    out = tmp_path / "keys"
    assert main(["keys", "generate", "--agency", "TH-RTP", "--out", str(out)]) == 0
    trust = tmp_path / "trust" / "agencies"
    trust.mkdir(parents=True)
    (out / "TH-RTP.json").rename(trust / "TH-RTP.json")
    return out


def test_keys_generate_writes_a_private_key_0600_and_a_matching_entry(tmp_path: Path, capsys):
    keys = tmp_path / "k"
    assert (
        main(["keys", "generate", "--agency", "PH-NBI", "--out", str(keys), "--algorithm", "es256"])
        == 0
    )
    private = keys / "PH-NBI.key.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = load_private_key_pem(private.read_bytes())
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected_id = hashlib.sha256(der).hexdigest()[:32]
    entry = json.loads((keys / "PH-NBI.json").read_text())
    assert entry["key_id"] == expected_id
    assert entry["country"] == "PH"
    assert entry["public_key_pem"] == (keys / "PH-NBI.pub.pem").read_text()
    assert f"key id      {expected_id}" in capsys.readouterr().out


def test_keys_generate_refuses_to_overwrite(keys: Path, capsys):
    assert main(["keys", "generate", "--agency", "TH-RTP", "--out", str(keys)]) == 1
    assert "already exists; refusing to overwrite a key" in capsys.readouterr().err


def test_keys_generate_refuses_a_bad_agency_id(tmp_path: Path, capsys):
    assert main(["keys", "generate", "--agency", "rtp", "--out", str(tmp_path)]) == 1
    assert "must look like TH-RTP" in capsys.readouterr().err


def test_keys_generate_makes_a_client_key_pair(tmp_path: Path, capsys):
    keys = tmp_path / "k"
    assert main(["keys", "generate", "--client", "ph-nbi-partner", "--out", str(keys)]) == 0
    private = keys / "ph-nbi-partner.key.pem"
    public = keys / "ph-nbi-partner.pub.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert sorted(p.name for p in keys.iterdir()) == [private.name, public.name]  # no trust entry
    signer = Signer.from_pem(private.read_bytes())
    assert public.read_text() == public_key_pem(signer.public_key)
    assert capsys.readouterr().out.splitlines() == [
        f"key id      {signer.key_id}",
        f"private key {private}  (mode 0600: keep it where the client runs)",
        f"public key  {public}  (exchange admin client add ... --public-key {public})",
    ]
    assert main(["keys", "generate", "--client", "ph-nbi-partner", "--out", str(keys)]) == 1
    assert capsys.readouterr().err == (
        f"error: {private} already exists; refusing to overwrite a key\n"
    )


@pytest.mark.parametrize("client", ["../escape", ".hidden", "a/b", "", "x" * 129])
def test_keys_generate_refuses_a_bad_client_id(tmp_path: Path, capsys, client: str):
    assert main(["keys", "generate", "--client", client, "--out", str(tmp_path / "k")]) == 1
    assert capsys.readouterr().err == (
        f"error: client id {client!r} must be 1 to 128 letters, digits, '.', '_', ':' or '-', "
        "starting with a letter or digit (e.g. ph-nbi-partner)\n"
    )
    assert not (tmp_path / "k").exists()


def test_keys_generate_needs_an_agency_or_a_client(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["keys", "generate", "--agency", "PH-NBI", "--client", "ph-nbi-partner",
              "--out", str(tmp_path)])  # fmt: skip
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_build_then_verify(keys: Path, tmp_path: Path, capsys):
    source = write_source(tmp_path / "src")
    out = tmp_path / "pkg"
    code = main(
        [
            "package",
            "build",
            str(source),
            "--agency",
            "TH-RTP",
            "--key",
            str(keys / "TH-RTP.key.pem"),
            "--out",
            str(out),
            *BUILD_FLAGS,
        ]
    )
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["collection"]["seal_numbers"] == ["S-1", "S-2"]
    capsys.readouterr()
    assert main(["package", "verify", str(out), "--trust", str(tmp_path / "trust")]) == 0
    text = capsys.readouterr().out
    assert f"VERIFIED package {manifest['package_id']}" in text
    assert "3 files" in text
    assert "warrant W-2026-0042, issued by Bangkok Criminal Court" in text


@pytest.mark.parametrize(("flags", "alg"), [([], "Ed25519"), (["--jws-alg", "EdDSA"], "EdDSA")])
def test_build_signs_as_ed25519_unless_asked_for_eddsa(
    keys: Path, tmp_path: Path, capsys, flags: list[str], alg: str
):
    source = write_source(tmp_path / "src")
    out = tmp_path / "pkg"
    key = str(keys / "TH-RTP.key.pem")
    argv = ["package", "build", str(source), "--agency", "TH-RTP", "--key", key, "--out", str(out)]
    assert main([*argv, *flags, *BUILD_FLAGS]) == 0
    head = (out / "manifest.jws").read_text().split(".")[0]
    assert json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["alg"] == alg
    capsys.readouterr()
    assert main(["package", "verify", str(out), "--trust", str(tmp_path / "trust")]) == 0
    assert "VERIFIED package" in capsys.readouterr().out


def test_build_from_a_metadata_file_into_a_tar_and_verify_as_json(
    keys: Path, tmp_path: Path, capsys
):
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({
        "case_ref": "C-9",
        "legal_basis": {"type": "mla", "reference": "MLA-1", "issued_by": "Ministry of Justice"},
        "collection": COLLECTION,
        "exhibit_ref": "EXH-1",
    }))  # fmt: skip
    out = tmp_path / "pkg.tar"
    argv = ["package", "build", str(write_source(tmp_path / "src")), "--agency", "TH-RTP"]
    assert (
        main(
            [
                *argv,
                "--key",
                str(keys / "TH-RTP.key.pem"),
                "--metadata",
                str(meta),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["package", "verify", str(out), "--trust", str(tmp_path / "trust"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is True
    assert result["case_ref"] == "C-9"
    assert result["legal_basis"]["type"] == "mla"
    assert result["file_count"] == 3


def test_build_with_missing_fields_names_the_field(keys: Path, tmp_path: Path, capsys):
    argv = [
        "package",
        "build",
        str(write_source(tmp_path / "src")),
        "--agency",
        "TH-RTP",
        "--key",
        str(keys / "TH-RTP.key.pem"),
    ]
    assert main([*argv, "--out", str(tmp_path / "pkg"), "--case-ref", "C-1"]) == 1
    assert (
        "not valid against manifest.v1.json: /collection: 'collected_at' is a required property"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "pkg").exists()


def test_verify_failure_exits_non_zero_naming_the_file(keys: Path, tmp_path: Path, capsys):
    out = tmp_path / "pkg"
    main(
        [
            "package",
            "build",
            str(write_source(tmp_path / "src")),
            "--agency",
            "TH-RTP",
            "--key",
            str(keys / "TH-RTP.key.pem"),
            "--out",
            str(out),
            *BUILD_FLAGS,
        ]
    )
    victim = out / "data" / "chats" / "line-export.txt"
    os.chmod(victim, 0o644)
    victim.write_bytes(victim.read_bytes().replace(b"50,000", b"90,000"))
    capsys.readouterr()
    assert main(["package", "verify", str(out), "--trust", str(tmp_path / "trust")]) == 1
    err = capsys.readouterr().err
    assert "verification failed: hash mismatch for data/chats/line-export.txt" in err
    assert main(["package", "verify", str(out), "--trust", str(tmp_path / "trust"), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result == {
        "ok": False,
        "error": {
            "reason": "hash_mismatch",
            "message": result["error"]["message"],
            "path": "chats/line-export.txt",
        },
    }


def test_console_script_runs_as_a_process(keys: Path, tmp_path: Path):
    out = tmp_path / "pkg"
    build = [
        sys.executable,
        "-m",
        "exchange",
        "package",
        "build",
        str(write_source(tmp_path / "src")),
    ]
    subprocess.run(
        [
            *build,
            "--agency",
            "TH-RTP",
            "--key",
            str(keys / "TH-RTP.key.pem"),
            "--out",
            str(out),
            *BUILD_FLAGS,
        ],
        check=True,
        capture_output=True,
    )
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "exchange",
            "package",
            "verify",
            str(out),
            "--trust",
            str(tmp_path / "trust"),
        ],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 0, verify.stderr
    (out / "manifest.jws").unlink()
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "exchange",
            "package",
            "verify",
            str(out),
            "--trust",
            str(tmp_path / "trust"),
        ],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 1
    assert "package has no manifest.jws" in again.stderr
