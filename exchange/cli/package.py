"""`exchange package`: build and verify signed evidence packages offline."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exchange.cli.output import CommandError, DelayedProgress, print_json, stdout
from exchange.errors import ExchangeError, VerificationError
from exchange.model import LegalBasisType, parse_json
from exchange.package import VerifiedPackage, build_package, verify_package
from exchange.package.build import scan_source
from exchange.signing import Signer
from exchange.trust import TrustStore, parse_time


def register(subparsers: Any) -> None:
    """Add the `package` group."""
    group = subparsers.add_parser("package", help="build and verify evidence packages")
    commands = group.add_subparsers(dest="command", metavar="COMMAND", required=True)

    build = commands.add_parser(
        "build",
        help="hash a folder of evidence, write a signed manifest, lay out the package",
        description="Fields may also come from --metadata FILE.json (keys legal_basis, "
        "collection, exhibit_ref, notes, case_ref); flags win over the file.",
    )
    build.add_argument("source", type=Path, metavar="SRC_DIR")
    build.add_argument("--agency", required=True)
    build.add_argument("--country", help="default: the agency id's prefix")
    build.add_argument("--key", required=True, type=Path, help="the agency's private key (PEM)")
    build.add_argument("--case-ref")
    build.add_argument("--out", required=True, type=Path, help="PKG_DIR, or PKG.tar")
    build.add_argument("--metadata", type=Path, help="JSON file with manifest fields")
    build.add_argument("--package-id", help="UUID (default: a new random one)")
    build.add_argument(
        "--jws-alg",
        choices=["Ed25519", "EdDSA"],
        help="JWS alg name for an Ed25519 key (default Ed25519, RFC 9864); EdDSA only for "
        "recipients whose verifiers predate RFC 9864",
    )
    legal = build.add_argument_group("legal basis")
    legal.add_argument("--legal-basis", choices=[t.value for t in LegalBasisType])
    legal.add_argument("--legal-reference", help="e.g. the warrant number")
    legal.add_argument("--legal-issued-by", help="court or authority")
    legal.add_argument("--legal-valid-until", help="RFC 3339")
    coll = build.add_argument_group("collection")
    coll.add_argument("--collected-by", help="name of the person who collected")
    coll.add_argument("--collector-role", help="their role")
    coll.add_argument("--collected-at", help="RFC 3339 with offset")
    coll.add_argument("--location")
    coll.add_argument("--method", help="e.g. 'logical extraction'")
    coll.add_argument("--tool", help="tool name")
    coll.add_argument("--tool-version")
    coll.add_argument("--device", help="source device description")
    coll.add_argument("--device-serial")
    coll.add_argument("--device-imei")
    coll.add_argument("--seal", action="append", default=None, help="seal number (repeatable)")
    build.add_argument("--exhibit-ref")
    build.add_argument("--notes")
    build.set_defaults(handler=build_command)

    verify = commands.add_parser("verify", help="verify a package directory or tar offline")
    verify.add_argument("package", type=Path, metavar="PKG")
    verify.add_argument("--trust", required=True, type=Path, help="trust store folder")
    verify.add_argument("--at", help="verify as of this RFC 3339 time (default: now)")
    verify.add_argument("--json", action="store_true", help="machine-readable result")
    verify.set_defaults(handler=verify_command)


def _set(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        target[key] = value


def _fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.metadata is not None:
        try:
            loaded = parse_json(args.metadata.read_bytes(), what=str(args.metadata))
        except (OSError, ExchangeError) as exc:
            raise CommandError(str(exc)) from exc
        if not isinstance(loaded, dict):
            raise CommandError(f"{args.metadata} must hold a JSON object")
        fields = loaded
    legal: dict[str, Any] = dict(fields.get("legal_basis") or {})
    _set(legal, "type", args.legal_basis)
    _set(legal, "reference", args.legal_reference)
    _set(legal, "issued_by", args.legal_issued_by)
    _set(legal, "valid_until", args.legal_valid_until)
    coll: dict[str, Any] = dict(fields.get("collection") or {})
    person = dict(coll.get("collected_by") or {})
    _set(person, "name", args.collected_by)
    _set(person, "role", args.collector_role)
    tool = dict(coll.get("tool") or {})
    _set(tool, "name", args.tool)
    _set(tool, "version", args.tool_version)
    device = dict(coll.get("source_device") or {})
    _set(device, "description", args.device)
    _set(device, "serial", args.device_serial)
    _set(device, "imei", args.device_imei)
    coll.update(collected_by=person, tool=tool, source_device=device)
    _set(coll, "collected_at", args.collected_at)
    _set(coll, "location", args.location)
    _set(coll, "method", args.method)
    _set(coll, "seal_numbers", args.seal)
    coll.setdefault("seal_numbers", [])
    case_ref = args.case_ref or fields.get("case_ref")
    if not case_ref:
        raise CommandError("--case-ref is required (or case_ref in --metadata)")
    return {
        "case_ref": case_ref,
        "legal_basis": legal,
        "collection": coll,
        "exhibit_ref": args.exhibit_ref or fields.get("exhibit_ref"),
        "notes": args.notes or fields.get("notes"),
    }


def build_command(args: argparse.Namespace) -> int:
    """Handle `exchange package build`."""
    fields = _fields(args)
    try:
        signer = Signer.from_pem(args.key.read_bytes())
    except OSError as exc:
        raise CommandError(f"cannot read key {args.key}: {exc.strerror}") from exc
    except ExchangeError as exc:
        raise CommandError(f"{args.key}: {exc}") from exc
    try:
        total = sum(f.size for f in scan_source(args.source))
        with DelayedProgress("hashing + writing", total * 2) as progress:
            manifest = build_package(
                source=args.source,
                out=args.out,
                signer=signer,
                agency=args.agency,
                country=args.country or args.agency[:2],
                created_at=datetime.now(UTC),
                package_id=args.package_id,
                on_bytes=progress.advance,
                jws_alg=args.jws_alg,
                **fields,
            )
    except ExchangeError as exc:
        raise CommandError(exc.message) from exc
    stdout.print(f"built package {manifest.package_id} at {args.out}")
    stdout.print(
        f"  {len(manifest.files)} files, {manifest.total_bytes} bytes, signed by key {signer.key_id}"
    )
    return 0


def _summary(result: VerifiedPackage) -> dict[str, Any]:
    m = result.signed.manifest
    return {
        "ok": True,
        "package_id": m.package_id,
        "case_ref": m.case_ref,
        "agency": m.agency,
        "country": m.country,
        "created_at": m.created_at,
        "signer_key_id": result.signed.key.key_id,
        "manifest_sha256": result.signed.digest,
        "legal_basis": m.legal_basis.to_wire(),
        "collected_by": m.collection.collected_by.to_wire(),
        "collected_at": m.collection.collected_at,
        "file_count": result.file_count,
        "total_bytes": result.total_bytes,
    }


def verify_command(args: argparse.Namespace) -> int:
    """Handle `exchange package verify`: exit 0 when every check holds, 1 naming the first failure."""
    try:
        trust = TrustStore.from_directory(args.trust)
        now = parse_time(args.at) if args.at else datetime.now(UTC)
        total = 0
        with DelayedProgress("verifying", 1) as progress:
            result = verify_package(args.package, trust=trust, now=now, on_bytes=progress.advance)
            total = result.total_bytes
    except VerificationError as exc:
        if args.json:
            print_json(
                {
                    "ok": False,
                    "error": {"reason": exc.reason, "message": exc.message, "path": exc.path},
                }
            )
            return 1
        raise CommandError(f"verification failed: {exc.message}") from exc
    except ExchangeError as exc:
        if args.json:
            print_json(
                {"ok": False, "error": {"reason": exc.code, "message": exc.message, "path": None}}
            )
            return 1
        raise CommandError(exc.message) from exc
    summary = _summary(result)
    if args.json:
        print_json(summary)
        return 0
    m = result.signed.manifest
    lb = m.legal_basis
    c = m.collection
    stdout.print(f"[bold green]VERIFIED[/] package {m.package_id}", markup=True)
    stdout.print(
        f"  case ref      {m.case_ref}" + (f"   exhibit {m.exhibit_ref}" if m.exhibit_ref else "")
    )
    stdout.print(f"  agency        {m.agency} ({m.country}), key {result.signed.key.key_id}")
    stdout.print(f"  created       {m.created_at}")
    stdout.print(f"  legal basis   {lb.type.value} {lb.reference}, issued by {lb.issued_by}")
    stdout.print(
        f"  collected     {c.collected_at} by {c.collected_by.name} ({c.collected_by.role})"
    )
    stdout.print(f"                at {c.location}; {c.method}; {c.tool.name} {c.tool.version}")
    stdout.print(f"  source        {c.source_device.description}")
    if c.seal_numbers:
        stdout.print(f"  seals         {', '.join(c.seal_numbers)}")
    stdout.print(f"  files         {result.file_count} files, {total} bytes, every SHA-256 matches")
    stdout.print(f"  manifest      sha256 {result.signed.digest}")
    return 0
