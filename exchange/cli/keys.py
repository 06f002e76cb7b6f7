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

from exchange.auth import CLIENT_ID_PATTERN
from exchange.cli.output import CommandError, stdout
from exchange.signing import Signer, public_key_pem
from exchange.trust import TrustedKey

AGENCY = re.compile(r"^[A-Z]{2}-[A-Z0-9][A-Z0-9-]{0,62}\Z")


def register(subparsers: Any) -> None:
    """Add the `keys` group."""
    group = subparsers.add_parser("keys", help="agency signing keys and API client keys")
    commands = group.add_subparsers(dest="command", metavar="COMMAND", required=True)
    gen = commands.add_parser(
        "generate",
        help="write a new private key (mode 0600), public key and trust entry",
        description="With --agency: writes AGENCY.key.pem (private, mode 0600), AGENCY.pub.pem "
        "and AGENCY.json (a trust-store entry for keys/trust/agencies/) into --out. With "
        "--client: writes CLIENT.key.pem and CLIENT.pub.pem, the key pair an API client signs "
        "its logins with (register the public key with `exchange admin client add`). Prints "
        "the key id.",
    )
    who = gen.add_mutually_exclusive_group(required=True)
    who.add_argument("--agency", help="agency id, e.g. TH-RTP")
    who.add_argument("--client", help="API client id, e.g. ph-nbi-partner")
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


def _new_signer(algorithm: str) -> Signer:
    if algorithm == "es256":
        return Signer(ec.generate_private_key(ec.SECP256R1()))
    return Signer.generate()


def _check_free(paths: list[Path]) -> None:
    for path in paths:
        if path.exists():
            raise CommandError(f"{path} already exists; refusing to overwrite a key")


def generate(args: argparse.Namespace) -> int:
    """Handle `exchange keys generate`."""
    if args.client is not None:
        return _generate_client_key(args)
    agency: str = args.agency
    if not AGENCY.match(agency):
        raise CommandError(f"agency id {agency!r} must look like TH-RTP (country code, dash, name)")
    country = args.country or agency[:2]
    if not re.fullmatch(r"[A-Z]{2}", country):
        raise CommandError(f"country {country!r} is not an ISO 3166-1 alpha-2 code")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{agency}.key.pem", out / f"{agency}.pub.pem", out / f"{agency}.json"]
    _check_free(paths)
    signer = _new_signer(args.algorithm)
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


def _generate_client_key(args: argparse.Namespace) -> int:
    client: str = args.client
    # The id becomes a file name: the client-id pattern has no "/" and no leading dot.
    if not CLIENT_ID_PATTERN.match(client):
        raise CommandError(
            f"client id {client!r} must be 1 to 128 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit (e.g. ph-nbi-partner)"
        )
    if args.country is not None:
        raise CommandError("--country is for agency keys; a client belongs to its agency")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / f"{client}.key.pem", out / f"{client}.pub.pem"
    _check_free([private, public])
    signer = _new_signer(args.algorithm)
    write_private_key(private, signer.private_pem())
    public.write_text(public_key_pem(signer.public_key), encoding="ascii")
    stdout.print(f"key id      {signer.key_id}")
    stdout.print(f"private key {private}  (mode 0600: keep it where the client runs)")
    stdout.print(f"public key  {public}  (exchange admin client add ... --public-key {public})")
    return 0
