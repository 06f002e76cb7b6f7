"""`exchange demo`: drive a running exchange through the whole story with the three dev agencies.

It starts nothing: it talks HTTP to a server (default http://127.0.0.1:8000) started with
`exchange serve`, whose development bootstrap registered the agencies of `keys/dev/` and
their clients. Each step prints ✓ or ✗; the exit code is 0 only if every step behaved.
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from exchange.cli.client import (
    FetchedPackage,
    answer_field,
    fetch_case,
    grant_body,
    say,
    upload_package,
)
from exchange.cli.output import stdout
from exchange.client import ClientError, ExchangeClient, get_ledger_key
from exchange.custody import CustodyReport, timeline_lines, verify_bundle
from exchange.errors import ExchangeError
from exchange.package import build_package
from exchange.settings import DEV_KEY_DIR
from exchange.signing import PublicKey, Signer, load_public_key_pem
from exchange.trust import TrustStore

DEFAULT_SERVER = "http://127.0.0.1:8000"

# The dev bootstrap of `exchange serve` registers these clients, each holding its agency's key.
TH_INVESTIGATOR = "th-rtp-investigator"
TH_PROSECUTOR = "th-rtp-prosecutor"
PH_PARTNER = "ph-nbi-partner"
VN_PARTNER = "vn-c06-partner"
AGENCY_OF = {
    TH_INVESTIGATOR: "TH-RTP",
    TH_PROSECUTOR: "TH-RTP",
    PH_PARTNER: "PH-NBI",
    VN_PARTNER: "VN-C06",
}


def register(subparsers: Any) -> None:
    """Add `demo`."""
    demo = subparsers.add_parser(
        "demo",
        help="drive a running exchange through the whole story (upload, grant, fetch, revoke, "
        "custody) with the dev agencies",
    )
    demo.add_argument(
        "--server", default=DEFAULT_SERVER, help="exchange URL (default: %(default)s)"
    )
    demo.add_argument("--keys", type=Path, default=DEV_KEY_DIR, help="dev agency keys folder")
    demo.set_defaults(handler=demo_command)


class StepFailedError(Exception):
    """A step did not behave as the story expects."""


def expect_refusal(status: int, action: Callable[[], object], what: str) -> str:
    """Run `action` and require the exchange to refuse it with `status`."""
    try:
        action()
    except ClientError as exc:
        if exc.status == status:
            return f"{exc.status} {exc.code}"
        raise StepFailedError(
            f"expected {status}, got {exc.status} {exc.code}: {exc.detail}"
        ) from exc
    raise StepFailedError(f"{what} was allowed; expected {status}")


def write_evidence(folder: Path) -> None:
    """A few generated evidence files, different on every run."""
    tag = secrets.token_hex(4)
    files = {
        "phone/extraction.bin": secrets.token_bytes(256 * 1024),
        "chats/telegram-export.txt": (
            f"[{tag}] 2026-11-20 21:14 +07 'Investment desk': deposit 50,000 THB to "
            "account 123-4-56789 to unlock your profits\n"
        ).encode(),
        "bank/statement.csv": (
            b"date,amount,currency,to_account\n2026-11-20,50000,THB,123-4-56789\n"
        ),
    }
    for rel, data in files.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


@dataclass
class Story:
    """State carried from step to step."""

    server: str
    keys: Path
    work: Path
    clients: dict[str, ExchangeClient] = field(default_factory=dict)
    case_id: str = ""
    package_id: str = ""
    grant_id: str = ""
    fetched: list[FetchedPackage] = field(default_factory=list)
    bundle: dict[str, Any] = field(default_factory=dict)
    log_key: PublicKey | None = None
    report: CustodyReport | None = None

    def client(self, client_id: str) -> ExchangeClient:
        """A logged-in client of the dev bootstrap."""
        if client_id not in self.clients:
            key = self.keys / f"{AGENCY_OF[client_id]}.key.pem"
            self.clients[client_id] = ExchangeClient(
                base_url=self.server, client_id=client_id, signer=Signer.from_pem(key.read_bytes())
            )
        return self.clients[client_id]

    def close(self) -> None:
        """Close every client."""
        for client in self.clients.values():
            client.close()


def step_health(story: Story) -> str:
    response = httpx.get(story.server.rstrip("/") + "/healthz", timeout=10)
    if response.status_code != 200:
        raise StepFailedError(f"/healthz answered {response.status_code}")
    return "healthy"


def step_login_all(story: Story) -> str:
    for client_id in AGENCY_OF:
        story.client(client_id).login()
    return ", ".join(AGENCY_OF)


def step_open_case(story: Story) -> str:
    case = story.client(TH_INVESTIGATOR).create_case(
        case_ref=f"TH-TCSD-2026-{secrets.randbelow(10_000):04d}",
        title="Investment scam ring targeting Thai and Filipino victims",
        classification="restricted",
    )
    story.case_id = str(answer_field(case, "case_id"))
    return f"case {story.case_id}"


def step_build_and_upload(story: Story) -> str:
    source = story.work / "evidence"
    write_evidence(source)
    package = story.work / "package"
    manifest = build_package(
        source=source,
        out=package,
        signer=Signer.from_pem((story.keys / "TH-RTP.key.pem").read_bytes()),
        agency="TH-RTP",
        country="TH",
        case_ref="TH-TCSD-2026-0042",
        legal_basis={
            "type": "warrant",
            "reference": "W-2026-0042",
            "issued_by": "Bangkok Criminal Court",
        },
        collection={
            "collected_by": {"name": "Pol. Lt. Somchai K.", "role": "digital forensic examiner"},
            "collected_at": "2026-11-20T09:30:00+07:00",
            "location": "Technology Crime Suppression Division, Bangkok",
            "method": "logical extraction",
            "tool": {"name": "ExampleExtract", "version": "7.1.2"},
            "source_device": {"description": "Samsung Galaxy A54, black"},
            "seal_numbers": ["TH-SEAL-000123"],
        },
        created_at=datetime.now(UTC),
    )
    result = upload_package(story.client(TH_INVESTIGATOR), package, story.case_id)
    story.package_id = result.package_id
    return (
        f"package {result.package_id}: {len(manifest.files)} files, {manifest.total_bytes} "
        "bytes, signed by TH-RTP, sealed"
    )


def step_ph_refused_before_grant(story: Story) -> str:
    ph = story.client(PH_PARTNER)
    return expect_refusal(404, lambda: ph.get_case(story.case_id), "PH reading the case")


def step_grant_ph(story: Story) -> str:
    body = grant_body(
        country="PH",
        agency=None,
        legal_basis="mla",
        reference="MLA-TH-PH-2026-017",
        days=30,
        now=datetime.now(UTC),
    )
    grant = story.client(TH_INVESTIGATOR).add_grant(story.case_id, body)
    story.grant_id = str(answer_field(grant, "grant_id"))
    return f"grant {story.grant_id} to PH under MLA-TH-PH-2026-017, 30 days"


def step_ph_fetches(story: Story) -> str:
    trust = TrustStore.from_directory(story.keys / "trust")
    story.fetched = fetch_case(
        story.client(PH_PARTNER), story.case_id, story.work / "ph-fetched", trust=trust
    )
    if [p.package_id for p in story.fetched] != [story.package_id]:
        raise StepFailedError(f"expected package {story.package_id}, got {story.fetched}")
    p = story.fetched[0]
    return f"{p.file_count} files, {p.total_bytes} bytes; hashes and TH-RTP signature verified"


def step_vn_refused(story: Story) -> str:
    vn = story.client(VN_PARTNER)
    expect_refusal(404, lambda: vn.get_case(story.case_id), "VN reading the case")
    return expect_refusal(
        404, lambda: vn.get_package(story.case_id, story.package_id), "VN reading the package"
    )


def step_revoke(story: Story) -> str:
    story.client(TH_INVESTIGATOR).revoke_grant(story.case_id, story.grant_id)
    return f"grant {story.grant_id} revoked"


def step_ph_refused_after_revoke(story: Story) -> str:
    ph = story.client(PH_PARTNER)  # same session: its token was issued while the grant lived
    return expect_refusal(
        404, lambda: ph.get_package(story.case_id, story.package_id), "PH after revocation"
    )


def step_export(story: Story) -> str:
    story.bundle = story.client(TH_PROSECUTOR).custody(story.case_id)
    (story.work / "custody.json").write_text(json.dumps(story.bundle, indent=2))
    return f"{len(story.bundle.get('entries', []))} ledger entries"


def fetch_ledger_key(server: str) -> PublicKey:
    """The exchange's ledger public key, as GET /v1/ledger/key publishes it."""
    pem = get_ledger_key(server).get("public_key_pem")
    if not isinstance(pem, str):
        raise StepFailedError("GET /v1/ledger/key holds no public_key_pem")
    return load_public_key_pem(pem.encode())


def step_verify_custody(story: Story) -> str:
    story.log_key = fetch_ledger_key(story.server)
    story.report = verify_bundle(
        story.bundle, log_key=story.log_key, files=story.work / "ph-fetched"
    )
    actions = [e.action for e in story.report.events]
    for needed in (
        "case.opened",
        "package.sealed",
        "grant.issued",
        "bundle.fetched",
        "grant.revoked",
    ):
        if needed not in actions:
            raise StepFailedError(f"the custody record has no {needed} entry")
    keys = ", ".join(f"#{k.registered_seq}" for k in story.report.key_origins)
    return (
        f"checkpoint signature, all {story.report.case_entries} case entries chained to the "
        f"export (the checkpoint's last leaf), {len(story.report.packages)} manifest with its "
        f"signer key registered at {keys}, {story.report.files_checked} file hashes"
    )


STEPS: list[tuple[str, Callable[[Story], str]]] = [
    ("the exchange is up", step_health),
    ("the four dev clients log in (private_key_jwt)", step_login_all),
    ("TH-RTP investigator opens a case", step_open_case),
    ("TH-RTP investigator builds, uploads and seals a signed package", step_build_and_upload),
    ("PH-NBI partner cannot see the case before any grant (404)", step_ph_refused_before_grant),
    ("TH-RTP grants PH read access", step_grant_ph),
    ("PH-NBI partner fetches the package and verifies it", step_ph_fetches),
    ("VN-C06 partner, with no grant, is refused (404)", step_vn_refused),
    ("TH-RTP revokes the grant", step_revoke),
    ("PH-NBI is refused at once, with its old token (404)", step_ph_refused_after_revoke),
    ("TH-RTP prosecutor exports the custody bundle", step_export),
    ("the custody bundle verifies offline with the ledger key alone", step_verify_custody),
]


def run_story(server: str, keys: Path) -> bool:
    """Run every step in order, printing each; stops at the first that misbehaves."""
    say(f"Evidence Exchange demo against {server}")
    with tempfile.TemporaryDirectory(prefix="exchange-demo-") as work:
        story = Story(server=server, keys=keys, work=Path(work))
        try:
            for title, step in STEPS:
                try:
                    detail = step(story)
                except (
                    StepFailedError,
                    ClientError,
                    ExchangeError,
                    httpx.HTTPError,
                    OSError,
                ) as exc:
                    message = exc.message if isinstance(exc, ExchangeError) else str(exc)
                    stdout.print(f"[bold red]✗[/] {title}", markup=True)
                    say(f"    {message}")
                    return False
                stdout.print(f"[bold green]✓[/] {title}", markup=True)
                say(f"    {detail}")
        finally:
            story.close()
        if story.report is not None:
            say("")
            say(f"Custody timeline of case {story.case_id} (verified):")
            for line in timeline_lines(story.report):
                say(f"  {line}")
    return True


def demo_command(args: argparse.Namespace) -> int:
    """Handle `exchange demo`."""
    ok = run_story(args.server, args.keys)
    say("")
    if ok:
        stdout.print("[bold green]demo passed[/]: every step behaved as expected", markup=True)
        return 0
    stdout.print("[bold red]demo failed[/]", markup=True)
    return 1
