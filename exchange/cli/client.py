"""Client commands against a running exchange: login, case, upload, grant, fetch.

The upload and fetch steps are plain functions (`upload_package`, `fetch_case`) so that
`exchange demo` runs exactly what a user runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import httpx
from rich.markup import escape

from exchange.cli.checkpoints import LogCheck, check_exchange_log
from exchange.cli.output import CommandError, DelayedProgress, print_json, stderr, stdout
from exchange.cli.profile import Profile
from exchange.client import DPOP_SCHEME, ClientError, ExchangeClient, file_url
from exchange.errors import ExchangeError, VerificationError
from exchange.model import LegalBasisType, Manifest
from exchange.package import load_manifest, verify_manifest
from exchange.package.paths import check_path
from exchange.package.source import JWS_NAME, MANIFEST_NAME, open_source
from exchange.schema import validate
from exchange.signing import Signer
from exchange.trust import TrustedKey, TrustStore

PROFILE_HELP = "saved profile to use (default: %(default)s)"


def say(text: str) -> None:
    """Print a line of plain text (no rich markup: case titles may hold brackets)."""
    stdout.print(text, markup=False)


def add_profile(parser: argparse.ArgumentParser) -> None:
    """The `--profile NAME` option every client command takes."""
    parser.add_argument("--profile", default="default", help=PROFILE_HELP)


def register(subparsers: Any) -> None:
    """Add `login`, `case`, `upload`, `grant` and `fetch`."""
    login = subparsers.add_parser(
        "login",
        help="check a client's credentials against an exchange and save them as a profile",
    )
    login.add_argument("--server", required=True, help="exchange base URL")
    login.add_argument("--client", required=True, help="client id registered at the exchange")
    login.add_argument("--key", required=True, type=Path, help="the client's private key (PEM)")
    login.add_argument(
        "--officer-id",
        help="id of the officer acting through the client; recorded in every ledger entry",
    )
    login.add_argument("--officer-name", help="display name of that officer (needs --officer-id)")
    add_profile(login)
    login.set_defaults(handler=login_command)

    case = subparsers.add_parser("case", help="create and list cases")
    case_commands = case.add_subparsers(dest="command", metavar="COMMAND", required=True)
    create = case_commands.add_parser("create", help="open a case owned by your agency")
    create.add_argument("--case-ref", required=True, help="your agency's case reference")
    create.add_argument("--title", required=True)
    create.add_argument("--classification", required=True, help="e.g. restricted")
    add_profile(create)
    create.set_defaults(handler=case_create_command)
    listing = case_commands.add_parser("list", help="the cases you may see")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    add_profile(listing)
    listing.set_defaults(handler=case_list_command)

    upload = subparsers.add_parser(
        "upload", help="upload a signed package into a case: register, send each file, seal"
    )
    upload.add_argument("package", type=Path, metavar="PKG", help="package folder or .tar")
    upload.add_argument("--case", required=True, help="case id")
    add_profile(upload)
    upload.set_defaults(handler=upload_command)

    grant = subparsers.add_parser("grant", help="grant, revoke and list partners' access")
    grant_commands = grant.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add = grant_commands.add_parser("add", help="let a country (or one agency) read a case")
    add.add_argument("--case", required=True, help="case id")
    add.add_argument("--country", required=True, help="grantee country, e.g. PH")
    add.add_argument("--agency", help="only this agency of the country, e.g. PH-NBI")
    add.add_argument("--legal-basis", required=True, choices=[t.value for t in LegalBasisType])
    add.add_argument("--legal-reference", required=True, help="e.g. the MLA request number")
    add.add_argument("--days", required=True, type=int, help="the grant expires after N days")
    add_profile(add)
    add.set_defaults(handler=grant_add_command)
    revoke = grant_commands.add_parser("revoke", help="revoke a grant (effective at once)")
    revoke.add_argument("--case", required=True)
    revoke.add_argument("--grant", required=True, help="grant id")
    add_profile(revoke)
    revoke.set_defaults(handler=grant_revoke_command)
    grants = grant_commands.add_parser("list", help="the grants of a case you own")
    grants.add_argument("--case", required=True)
    grants.add_argument("--json", action="store_true", help="machine-readable output")
    add_profile(grants)
    grants.set_defaults(handler=grant_list_command)

    fetch = subparsers.add_parser(
        "fetch",
        help="download every sealed package of a case, verifying hashes and signatures",
        description="Writes OUT/<package_id>/{manifest.json, manifest.jws, data/...}. A file "
        "whose bytes do not match the signed manifest is deleted and the command fails.",
    )
    fetch.add_argument("case", metavar="CASE", help="case id")
    fetch.add_argument("--out", required=True, type=Path, help="destination folder")
    fetch.add_argument(
        "--trust",
        type=Path,
        help="verify signers with this trust store (default: the signer key the exchange reports)",
    )
    add_profile(fetch)
    fetch.set_defaults(handler=fetch_command)


# ------------------------------------------------------------------------------ plumbing


@contextmanager
def session(profile: str) -> Iterator[ExchangeClient]:
    """A client for a saved profile; server errors become `CommandError`s."""
    client = Profile.load(profile).client()
    try:
        with client:
            yield client
    except ClientError as exc:
        raise CommandError(server_error(exc)) from exc
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach {client.base_url}: {exc}") from exc


def server_error(exc: ClientError) -> str:
    """A one-line message for an error answer."""
    if exc.code in ("stream_aborted", "stored_object_corrupt") and exc.status == 0:
        return f"the download broke off: {exc.detail}"
    if exc.status == 0:
        return exc.detail
    return f"the exchange refused ({exc.status} {exc.code}): {exc.detail}"


def answer_field(body: Mapping[str, Any], name: str) -> Any:
    """A member of the exchange's JSON answer; `CommandError` if it is missing."""
    if name not in body:
        raise CommandError(f"unexpected answer from the exchange (no {name}): {body}")
    return body[name]


class Bars:
    """One delayed progress bar per item (package), replacing the previous one."""

    def __init__(self, verb: str) -> None:
        self._verb = verb
        self._bar: DelayedProgress | None = None

    def __enter__(self) -> Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, name: str, total: int) -> None:
        """Begin the bar of the next item."""
        self.close()
        self._bar = DelayedProgress(f"{self._verb} {name[:8]}", total)

    def advance(self, n: int) -> None:
        """Count `n` more bytes of the current item."""
        if self._bar is not None:
            self._bar.advance(n)

    def close(self) -> None:
        """Take the current bar down."""
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


# ------------------------------------------------------------------------------ login, case


def login_command(args: argparse.Namespace) -> int:
    """Handle `exchange login`: get one token to prove the credentials, then save the profile."""
    if args.officer_name is not None and args.officer_id is None:
        raise CommandError("--officer-name needs --officer-id")
    profile = Profile(
        server=args.server,
        client_id=args.client,
        key_path=str(args.key.resolve()),
        officer_id=args.officer_id,
        officer_name=args.officer_name,
    )
    try:
        signer = Signer.from_pem(args.key.read_bytes())
    except OSError as exc:
        raise CommandError(f"cannot read key {args.key}: {exc.strerror}") from exc
    except ExchangeError as exc:
        raise CommandError(f"{args.key}: {exc.message}") from exc
    client = ExchangeClient(
        base_url=args.server, client_id=args.client, signer=signer, act=profile.act
    )
    try:
        with client:
            token = client.login()
    except ClientError as exc:
        raise CommandError(f"login failed: {server_error(exc)}") from exc
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach {args.server}: {exc}") from exc
    path = profile.save(args.profile)
    scopes = str(token.get("scope", "")).split()
    say(f"logged in to {args.server} as {args.client}")
    if args.officer_id is not None:
        officer = (
            f"{args.officer_name} ({args.officer_id})" if args.officer_name else args.officer_id
        )
        say(f"  officer  {officer}")
    say(f"  scopes   {' '.join(scopes) or '-'}")
    if client.token_type == DPOP_SCHEME:
        say("  tokens   DPoP-bound to a key of this process (RFC 9449)")
    else:
        say("  tokens   bearer (the exchange issued no DPoP-bound token)")
    say(f"  profile  {args.profile} ({path})")
    return 0


def case_create_command(args: argparse.Namespace) -> int:
    """Handle `exchange case create`: prints the new case id."""
    with session(args.profile) as client:
        case = client.create_case(
            case_ref=args.case_ref, title=args.title, classification=args.classification
        )
    case_id = answer_field(case, "case_id")
    say(f"created case {case_id}")
    return 0


def case_list_command(args: argparse.Namespace) -> int:
    """Handle `exchange case list`."""
    with session(args.profile) as client:
        cases = client.list_cases()
    if args.json:
        print_json(cases)
        return 0
    if not cases:
        say("no cases")
    for case in cases:
        say(
            f"{answer_field(case, 'case_id')}  {case.get('owner_agency', '')}  "
            f"{case.get('case_ref', '')}  {case.get('title', '')}"
        )
    return 0


# ------------------------------------------------------------------------------ upload


@dataclass(frozen=True)
class UploadResult:
    """What `upload_package` did."""

    package_id: str
    files_sent: int
    bytes_sent: int
    retried: tuple[str, ...]


def _expected_paths(answer: Any, manifest: Manifest) -> list[str]:
    """The files the exchange still wants, from its answer to the registration."""
    if isinstance(answer, Mapping):
        listed = answer.get("expected_files")
        if isinstance(listed, list):
            return [str(item["path"]) for item in listed]
    return [entry.path for entry in manifest.files]


def upload_package(
    client: ExchangeClient,
    package: Path,
    case_id: str,
    *,
    on_start: Callable[[str, int], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_retry: Callable[[str, Exception], None] | None = None,
) -> UploadResult:
    """Register a package's signed manifest, PUT each expected file (one retry each), seal.

    A file whose PUT fails for a reason a retry may cure (a transport error, a 5xx, 408) is
    sent once more, after `on_retry(path, error)`. Raises `ClientError` when the exchange
    refuses a step, `ExchangeError` for a bad package.
    """
    with open_source(package) as source:
        raw = source.read_small(MANIFEST_NAME)
        manifest = load_manifest(raw)  # strict: duplicate keys, schema, model
        manifest_doc = json.loads(raw)
        jws = source.read_small(JWS_NAME).decode("ascii").strip()
        present = source.data_files()
        sizes = {entry.path: entry.size for entry in manifest.files}
        for path, size in sizes.items():
            if present.get(path) != size:
                raise VerificationError(
                    f"data/{path} is missing or not {size} bytes", reason="file_missing", path=path
                )
        answer = client.register_package(case_id, manifest=manifest_doc, jws=jws)
        expected = _expected_paths(answer, manifest)
        retried: list[str] = []
        sent = 0
        for path in expected:
            if on_start is not None:
                on_start(path, sizes[path])
            url = file_url(case_id, manifest.package_id, path)
            opener = partial(source.open_data, path)
            try:
                client.put_stream(url, opener, sizes[path], on_bytes=on_bytes)
            except (ClientError, httpx.TransportError) as exc:
                if isinstance(exc, ClientError) and 400 <= exc.status < 500 and exc.status != 408:
                    raise  # the exchange judged the request itself: a retry gets the same answer
                retried.append(path)
                if on_retry is not None:
                    on_retry(path, exc)
                client.put_stream(url, opener, sizes[path], on_bytes=on_bytes)
            sent += sizes[path]
    client.seal_package(case_id, manifest.package_id)
    return UploadResult(
        package_id=manifest.package_id,
        files_sent=len(expected),
        bytes_sent=sent,
        retried=tuple(retried),
    )


def upload_command(args: argparse.Namespace) -> int:
    """Handle `exchange upload`: prints the package id once sealed."""
    try:
        with open_source(args.package) as source:  # a bad package fails before any request
            total = load_manifest(source.read_small(MANIFEST_NAME)).total_bytes
    except ExchangeError as exc:
        raise CommandError(f"{args.package}: {exc.message}") from exc
    with session(args.profile) as client, DelayedProgress("uploading", total) as progress:
        try:
            result = upload_package(
                client,
                args.package,
                args.case,
                on_bytes=progress.advance,
                on_retry=lambda path, exc: stderr.print(
                    f"sending {path} failed ({exc}); retrying once", markup=False
                ),
            )
        except ExchangeError as exc:
            raise CommandError(f"{args.package}: {exc.message}") from exc
    say(f"sealed package {result.package_id} in case {args.case}")
    say(f"  {result.files_sent} files, {result.bytes_sent} bytes sent")
    return 0


# ------------------------------------------------------------------------------ grants


def grant_body(
    *, country: str, agency: str | None, legal_basis: str, reference: str, days: int, now: datetime
) -> dict[str, Any]:
    """The JSON body of POST /v1/cases/{id}/grants."""
    if days < 1:
        raise CommandError("--days must be at least 1")
    body: dict[str, Any] = {
        "grantee_country": country,
        "scope": ["read"],
        "legal_basis": {"type": legal_basis, "reference": reference},
        "expires_at": (now + timedelta(days=days)).isoformat().replace("+00:00", "Z"),
    }
    if agency:
        body["grantee_agency"] = agency
    return body


def grant_add_command(args: argparse.Namespace) -> int:
    """Handle `exchange grant add`: prints the grant id."""
    body = grant_body(
        country=args.country,
        agency=args.agency,
        legal_basis=args.legal_basis,
        reference=args.legal_reference,
        days=args.days,
        now=datetime.now(UTC),
    )
    with session(args.profile) as client:
        grant = client.add_grant(args.case, body)
    grantee = args.agency or f"all agencies of {args.country}"
    say(f"granted {grantee} read access to case {args.case}")
    say(f"  grant id  {answer_field(grant, 'grant_id')}")
    say(f"  expires   {grant.get('expires_at', body['expires_at'])}")
    return 0


def grant_revoke_command(args: argparse.Namespace) -> int:
    """Handle `exchange grant revoke`."""
    with session(args.profile) as client:
        client.revoke_grant(args.case, args.grant)
    say(f"revoked grant {args.grant} of case {args.case}")
    return 0


def grant_list_command(args: argparse.Namespace) -> int:
    """Handle `exchange grant list`."""
    with session(args.profile) as client:
        grants = client.list_grants(args.case)
    if args.json:
        print_json(grants)
        return 0
    if not grants:
        say("no grants")
    for g in grants:
        state = "revoked" if g.get("revoked_at") else "live"
        say(
            f"{answer_field(g, 'grant_id')}  {g.get('grantee_country', '')} "
            f"{g.get('grantee_agency') or '*'}  until {g.get('expires_at', '?')}  {state}"
        )
    return 0


# ------------------------------------------------------------------------------ fetch


@dataclass(frozen=True)
class FetchedPackage:
    """One package downloaded and verified."""

    package_id: str
    folder: Path
    agency: str
    signer_key_id: str
    file_count: int
    total_bytes: int


def reported_trust(package: Mapping[str, Any]) -> TrustStore:
    """A trust store of the signer key the exchange reports with a package."""
    entry = package.get("signer_key")
    try:
        validate("trust-agency.v1.json", entry)
        if not isinstance(entry, dict):  # the schema demands an object; this narrows the type
            raise TypeError("not an object")
        return TrustStore([TrustedKey.from_entry(entry, source="the exchange's signer key")])
    except (ExchangeError, TypeError) as exc:
        raise VerificationError(
            f"the exchange reported an unusable signer key: {exc}", reason="bad_signer_key"
        ) from exc


class _SizeCappedHashingSink:
    """A file sink that hashes what it is given and refuses bytes past the expected size."""

    def __init__(self, target: BinaryIO, *, path: str, limit: int) -> None:
        self._target = target
        self._path = path
        self._limit = limit
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        if self.size > self._limit:
            raise VerificationError(
                f"size mismatch for data/{self._path}: the exchange sent more than the "
                f"{self._limit} bytes the signed manifest states",
                reason="size_mismatch",
                path=self._path,
            )
        self.digest.update(data)
        return self._target.write(data)


def _fetch_package(
    client: ExchangeClient,
    case_id: str,
    package_id: str,
    partial: Path,
    *,
    trust: TrustStore | None,
    now: datetime,
    on_start: Callable[[str, int], None] | None,
    on_bytes: Callable[[int], None] | None,
) -> FetchedPackage:
    answer = client.get_package(case_id, package_id)
    manifest_doc = answer.get("manifest")
    jws = answer.get("jws")
    if not isinstance(manifest_doc, Mapping) or not isinstance(jws, str):
        raise VerificationError(
            f"package {package_id}: the exchange sent no manifest and JWS", reason="bad_response"
        )
    manifest_bytes = json.dumps(manifest_doc).encode()
    manifest = load_manifest(manifest_bytes)
    if manifest.package_id != package_id:
        raise VerificationError(
            f"package {package_id}: the exchange sent the manifest of package "
            f"{manifest.package_id}",
            reason="manifest_mismatch",
        )
    store = trust if trust is not None else reported_trust(answer)
    try:
        signed = verify_manifest(manifest, jws, trust=store, now=now)
    except VerificationError as exc:
        raise VerificationError(
            f"package {package_id}: manifest signature does not verify: {exc.message}",
            reason=exc.reason,
            path=exc.path,
        ) from exc
    if on_start is not None:
        on_start(package_id, manifest.total_bytes)
    (partial / "data").mkdir(parents=True)
    for entry in manifest.files:
        check_path(entry.path)
        target = partial / "data" / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("xb") as f:
            sink = _SizeCappedHashingSink(f, path=entry.path, limit=entry.size)
            try:
                client.download_file(case_id, package_id, entry.path, sink, on_bytes=on_bytes)  # type: ignore[arg-type]
            except ClientError as exc:
                if exc.code == "stored_object_corrupt":
                    how = (
                        "and refused the fetch"
                        if exc.status
                        else f"and broke off the download after {sink.size} of {entry.size} bytes"
                    )
                    raise VerificationError(
                        f"package {package_id}: the exchange detected a corrupt stored object: "
                        f"its copy of data/{entry.path} no longer matches the sealed manifest; "
                        f"it recorded this in the ledger (integrity.failure) {how}; nothing of "
                        "the package was kept",
                        reason="stored_object_corrupt",
                        path=entry.path,
                    ) from exc
                if exc.code != "stream_aborted":
                    raise
                raise VerificationError(
                    f"package {package_id}: the download of data/{entry.path} broke off "
                    f"({exc.detail}); nothing of the package was kept",
                    reason="incomplete_download",
                    path=entry.path,
                ) from exc
            f.flush()
            os.fsync(f.fileno())
        if sink.size != entry.size:
            raise VerificationError(
                f"package {package_id}: size mismatch for data/{entry.path}: the signed manifest "
                f"states {entry.size} bytes, the exchange sent {sink.size}",
                reason="size_mismatch",
                path=entry.path,
            )
        digest = sink.digest.hexdigest()
        if digest != entry.sha256:
            raise VerificationError(
                f"package {package_id}: hash mismatch for data/{entry.path}: the signed manifest "
                f"states sha256 {entry.sha256}, the exchange sent {digest}",
                reason="hash_mismatch",
                path=entry.path,
            )
        target.chmod(0o444)
    (partial / MANIFEST_NAME).write_text(
        json.dumps(manifest_doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (partial / JWS_NAME).write_text(signed.jws + "\n", encoding="ascii")
    return FetchedPackage(
        package_id=package_id,
        folder=partial,
        agency=manifest.agency,
        signer_key_id=signed.key.key_id,
        file_count=len(manifest.files),
        total_bytes=manifest.total_bytes,
    )


def _remove(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o644)
    shutil.rmtree(folder, ignore_errors=True)


def fetch_case(
    client: ExchangeClient,
    case_id: str,
    out: Path,
    *,
    trust: TrustStore | None = None,
    now: datetime | None = None,
    on_start: Callable[[str, int], None] | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> list[FetchedPackage]:
    """Download and verify every sealed package of a case into `out/<package_id>/`.

    Each package is written beside its final place and renamed only once every file verified;
    on any failure the partial package is deleted and the error raised (`VerificationError`
    for bytes or signatures that do not hold, `ClientError` for a refusal).
    """
    moment = now or datetime.now(UTC)
    out.mkdir(parents=True, exist_ok=True)
    fetched: list[FetchedPackage] = []
    for listed in client.list_packages(case_id):
        if listed.get("state") != "sealed":  # our own agency's unfinished uploads
            continue
        package_id = str(answer_field(listed, "package_id"))
        final = out / package_id
        if final.exists():
            raise VerificationError(
                f"{final} already exists; refusing to overwrite it", reason="exists"
            )
        partial = out / f".{package_id}.partial-{uuid.uuid4().hex[:8]}"
        try:
            package = _fetch_package(
                client,
                case_id,
                package_id,
                partial,
                trust=trust,
                now=moment,
                on_start=on_start,
                on_bytes=on_bytes,
            )
            os.rename(partial, final)
        except BaseException:
            _remove(partial)
            raise
        fetched.append(
            FetchedPackage(
                package_id=package.package_id,
                folder=final,
                agency=package.agency,
                signer_key_id=package.signer_key_id,
                file_count=package.file_count,
                total_bytes=package.total_bytes,
            )
        )
    return fetched


def fetch_command(args: argparse.Namespace) -> int:
    """Handle `exchange fetch`."""
    try:
        trust = TrustStore.from_directory(args.trust) if args.trust else None
    except ExchangeError as exc:
        raise CommandError(exc.message) from exc
    with session(args.profile) as client, Bars("downloading") as bars:
        try:
            # Before any download: a rewritten log must not go unnoticed behind new evidence.
            log = check_exchange_log(client)
            fetched = fetch_case(
                client, args.case, args.out, trust=trust, on_start=bars.start, on_bytes=bars.advance
            )
        except VerificationError as exc:
            raise CommandError(f"fetch refused: {exc.message}") from exc
        except ExchangeError as exc:
            raise CommandError(exc.message) from exc
    if not fetched:
        say(f"case {args.case} has no sealed package you may see")
    for p in fetched:
        stdout.print(
            f"[bold green]VERIFIED[/] package {escape(p.package_id)} from {escape(p.agency)}: "
            f"{p.file_count} files, {p.total_bytes} bytes, signed by key {escape(p.signer_key_id)}",
            markup=True,
        )
        say(f"  {p.folder}")
    say_log_check(log)
    return 0


def say_log_check(log: LogCheck) -> None:
    """What the ledger check before a fetch showed, and where the pinned key came from."""
    size = log.current.size
    if log.seen is None:
        say(
            f"ledger {log.origin} at tree size {size}: first seen by this client; its key is now pinned"
        )
        say(f"  vkey         {log.vkey}")
        say(f"  fingerprint  {log.fingerprint}")
        say("  compare them with the ones the exchange's operator published")
    else:
        say(
            f"ledger {log.origin} at tree size {size} extends the checkpoint at size "
            f"{log.seen.size} this client saw before"
        )
