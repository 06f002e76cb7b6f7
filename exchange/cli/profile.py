"""Saved client profiles: which exchange to talk to, as which client, with which key."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from exchange.cli.output import CommandError
from exchange.client import ExchangeClient
from exchange.errors import ExchangeError
from exchange.signing import Signer


def profiles_dir() -> Path:
    """`$EXCHANGE_CONFIG_DIR`, else `~/.config/evidence-exchange`."""
    configured = os.environ.get("EXCHANGE_CONFIG_DIR")
    return Path(configured) if configured else Path.home() / ".config" / "evidence-exchange"


@dataclass(frozen=True)
class Profile:
    """One saved login: server URL, client id, the path of the client's private key, and the
    officer acting through the client (named in every assertion, so recorded in the ledger)."""

    server: str
    client_id: str
    key_path: str
    officer_id: str | None = None
    officer_name: str | None = None

    @property
    def act(self) -> dict[str, str] | None:
        """The assertion's `act` claim, or None when no officer is set."""
        if self.officer_id is None:
            return None
        act = {"sub": self.officer_id}
        if self.officer_name is not None:
            act["name"] = self.officer_name
        return act

    def save(self, name: str) -> Path:
        """Write to the profiles folder (mode 0600: it names a key path)."""
        folder = profiles_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=2)
        return path

    @classmethod
    def load(cls, name: str) -> Profile:
        """Read a saved profile; `CommandError` if there is none."""
        path = profiles_dir() / f"{name}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                server=data["server"],
                client_id=data["client_id"],
                key_path=data["key_path"],
                officer_id=data.get("officer_id"),
                officer_name=data.get("officer_name"),
            )
        except FileNotFoundError:
            raise CommandError(f"no profile {name!r}: run `exchange login` first") from None
        except (ValueError, KeyError) as exc:
            raise CommandError(f"profile {path} is damaged: {exc}") from exc

    def client(self) -> ExchangeClient:
        """A client that logs in with this profile's key when it first needs a token."""
        try:
            signer = Signer.from_pem(Path(self.key_path).read_bytes())
        except OSError as exc:
            raise CommandError(f"cannot read key {self.key_path}: {exc.strerror}") from exc
        except ExchangeError as exc:
            raise CommandError(f"{self.key_path}: {exc.message}") from exc
        return ExchangeClient(
            base_url=self.server, client_id=self.client_id, signer=signer, act=self.act
        )
