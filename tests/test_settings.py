"""Settings: embedded defaults, and production refusing development keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from exchange.settings import DEV_KEY_DIR, Settings
from exchange.storage import s3


def test_defaults_need_no_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("EXCHANGE_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.env == "development"
    assert settings.storage == "local"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'exchange.db'}"


def test_production_refuses_dev_keys(tmp_path: Path):
    real = tmp_path / "issuer.pem"
    with pytest.raises(
        ValidationError, match="EXCHANGE_LEDGER_KEY_PATH points at a development key"
    ):
        Settings(
            env="production",
            issuer_key_path=real,
            ledger_key_path=DEV_KEY_DIR / "ledger.key.pem",
            trust_dir=tmp_path,
        )


def test_production_refuses_the_dev_trust_store(tmp_path: Path):
    with pytest.raises(ValidationError, match="EXCHANGE_TRUST_DIR points at development keys"):
        Settings(env="production", issuer_key_path=tmp_path / "a", ledger_key_path=tmp_path / "b")


def test_production_requires_explicit_keys(tmp_path: Path):
    with pytest.raises(ValidationError, match="EXCHANGE_ISSUER_KEY_PATH must be set in production"):
        Settings(env="production", trust_dir=tmp_path)


def test_production_refuses_default_s3_secret(tmp_path: Path):
    with pytest.raises(ValidationError, match="EXCHANGE_S3_SECRET_KEY is unset or a default value"):
        Settings(
            env="production",
            issuer_key_path=tmp_path / "a",
            ledger_key_path=tmp_path / "b",
            trust_dir=tmp_path,
            storage="s3",
            s3_secret_key="minioadmin",
        )


def test_production_with_real_keys_is_accepted(tmp_path: Path):
    s = Settings(
        env="production",
        issuer_key_path=tmp_path / "a",
        ledger_key_path=tmp_path / "b",
        trust_dir=tmp_path,
    )
    assert s.env == "production"


def test_s3_transport_defaults_fail_in_seconds_and_match_the_store():
    settings = Settings()
    assert (settings.s3_connect_timeout, settings.s3_read_timeout, settings.s3_retries) == (
        s3.DEFAULT_CONNECT_TIMEOUT,
        s3.DEFAULT_READ_TIMEOUT,
        s3.DEFAULT_RETRIES,
    )
    # The worst case of one call against a frozen store, as docs/operations.md states it.
    worst = (settings.s3_connect_timeout + settings.s3_read_timeout) * (settings.s3_retries + 1)
    assert worst == 24.0
    assert settings.health_timeout == 2.0


@pytest.mark.parametrize(
    ("name", "value"),
    [("s3_connect_timeout", 0), ("s3_read_timeout", -1), ("s3_retries", -1), ("health_timeout", 0)],
)
def test_s3_transport_settings_refuse_values_that_would_hang_or_make_no_sense(name, value):
    with pytest.raises(ValidationError, match=name):
        Settings(**{name: value})
