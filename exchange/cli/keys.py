"""`exchange keys`: generate agency signing keys and their trust-store entry."""

from __future__ import annotations

import argparse
import json
import os
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from exchange.cli.output import CommandError, stdout
from exchange.signing import Signer, public_key_pem
from exchange.trust import TrustedKey

AGENCY = re.compile(r"^[A-Z]{2}-[A-Z0-9][A-Z0-9-]{0,62}\Z")


def register(subparsers: Any) -> None:
    """Add the `keys` group."""
    group = subparsers.add_parser("keys", help="agency signing keys")
    commands = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    gen = commands.add_parser(
        "generate",
        help="write a new private key (mode 0600), public key and trust entry",
        description="Writes AGENCY.key.pem (private, mode 0600), AGENCY.pub.pem and AGENCY.json "
        "(a trust-store entry for keys/trust/agencies/) into --out, and prints the key id.",
    )
    gen.add_argument("--agency", required=True, help="agency id, e.g. TH-RTP")
    gen.add_argument("--out", required=True, type=Path, help="folder to write the files into")
    gen.add_argument("--country", help="ISO 3166-1 alpha-2 (default: the agency id's prefix)")
    gen.add_argument("--algorithm", choices=("ed25519", "es256"), default="ed25519")
    gen.add_argument("--valid-days", type=int, default=730, help="validity window (default 730)")
    gen.set_defaults(handler=generate)


def write_private_key(path: Path, pem: bytes) -> None:
    """Create `path` with mode 0600 from the start; never overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def generate(args: argparse.Namespace) -> int:
    """Handle `exchange keys generate`."""
    agency: str = args.agency
    if not AGENCY.match(agency):
        raise CommandError(f"agency id {agency!r} must look like TH-RTP (country code, dash, name)")
    country = args.country or agency[:2]
    if not re.fullmatch(r"[A-Z]{2}", country):
        raise CommandError(f"country {country!r} is not an ISO 3166-1 alpha-2 code")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{agency}.key.pem", out / f"{agency}.pub.pem", out / f"{agency}.json"]
    for path in paths:
        if path.exists():
            raise CommandError(f"{path} already exists; refusing to overwrite a key")
    signer = (
        Signer(ec.generate_private_key(ec.SECP256R1()))
        if args.algorithm == "es256"
        else Signer.generate()
    )
    now = datetime.now(UTC).replace(microsecond=0)
    entry = TrustedKey(
        agency=agency,
        country=country,
        key_id=signer.key_id,
        public_key=signer.public_key,
        not_before=now,
        not_after=now + timedelta(days=args.valid_days),
    ).to_entry()
    write_private_key(paths[0], signer.private_pem())
    paths[1].write_text(public_key_pem(signer.public_key), encoding="ascii")
    paths[2].write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
    stdout.print(f"key id      {signer.key_id}")
    stdout.print(f"private key {paths[0]}  (mode 0600: keep it on the agency's machine)")
    stdout.print(f"public key  {paths[1]}")
    stdout.print(f"trust entry {paths[2]}  (copy into the verifier's trust/agencies/)")
    return 0
