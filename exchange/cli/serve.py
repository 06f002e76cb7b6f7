"""`exchange serve`: run the exchange service with uvicorn on embedded defaults."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import uvicorn
from pydantic import ValidationError

from exchange.cli.output import CommandError, stdout
from exchange.settings import Settings

APP_FACTORY = "exchange.api.app:create_app"


def register(subparsers: Any) -> None:
    """Add `serve`."""
    serve = subparsers.add_parser(
        "serve",
        help="run the exchange service (creates the data dir, database and dev keys on first start)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port (%(default)s)")
    serve.set_defaults(handler=serve_command)


def describe(settings: Settings, host: str, port: int) -> list[str]:
    """Where things are, for the operator starting the node."""
    storage = (
        f"S3 bucket {settings.s3_bucket} at {settings.s3_endpoint}"
        if settings.storage == "s3"
        else str((settings.data_dir / "blobs").resolve())
    )
    keys = settings.data_dir.resolve() / "keys"
    return [
        f"Evidence Exchange ({settings.env}) listening on http://{host}:{port}",
        f"  public URL  {settings.public_url}  (token issuer and audience)",
        f"  database    {settings.resolved_database_url.split('@')[-1]}",
        f"  evidence    {storage}",
        f"  issuer key  {settings.issuer_key_path or keys / 'issuer.key.pem'}",
        f"  ledger key  {settings.ledger_key_path or keys / 'ledger.key.pem'}",
        f"  ledger      {settings.ledger_origin}; public key at GET /v1/ledger/key",
        "  API docs    /docs  (OpenAPI at /openapi.json)",
    ]


def serve_command(args: argparse.Namespace) -> int:
    """Handle `exchange serve`."""
    try:
        settings = Settings()
    except ValidationError as exc:
        raise CommandError(f"bad settings: {exc}") from exc
    if "public_url" not in settings.model_fields_set:
        # Unconfigured, the node is reached where it listens: that URL is the token audience.
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host  # noqa: S104
        settings = settings.model_copy(update={"public_url": f"http://{host}:{args.port}"})
        os.environ["EXCHANGE_PUBLIC_URL"] = settings.public_url  # read by the app factory
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    for line in describe(settings, args.host, args.port):
        stdout.print(line, markup=False)
    if settings.env == "development":
        stdout.print(
            "  development: dev keys are created in the data dir and the agencies of "
            f"{settings.trust_dir} are registered with their dev clients",
            markup=False,
        )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    # By name, as a factory: the app reads the same settings from the environment itself.
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=args.host,
        port=args.port,
        proxy_headers=True,
        log_level="info",
        timeout_graceful_shutdown=10,
    )
    return 0
