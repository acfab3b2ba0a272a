"""The signing key: made and kept for the embedded default, required otherwise."""

from __future__ import annotations

import pytest

from app import config
from app.config import ConfigError, Settings


def test_postgres_without_strong_key_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("", "short"):
        s = Settings(
            _env_file=None, database_url="postgresql://postgres@127.0.0.1/x", secret_key=key
        )
        with pytest.raises(ConfigError):
            s.signing_key  # noqa: B018


def test_embedded_default_makes_and_keeps_a_key(
    tmp_path: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(config, "DEFAULT_DATA_DIR", tmp_path)
    first = Settings(_env_file=None, database_url="", secret_key="").signing_key
    second = Settings(_env_file=None, database_url="", secret_key="").signing_key
    assert first == second and len(first) >= 32
    assert "SECRET_KEY is not set" in caplog.text
    assert Settings(_env_file=None, database_url="").effective_database_url.startswith(
        f"sqlite+aiosqlite:///{tmp_path}"
    )


def test_database_url_forms() -> None:
    assert config.normalise_database_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert config.normalise_database_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert config.normalise_database_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
