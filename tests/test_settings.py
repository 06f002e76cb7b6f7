"""Settings: embedded defaults, and production refusing development keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from exchange.settings import DEV_KEY_DIR, Settings


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
