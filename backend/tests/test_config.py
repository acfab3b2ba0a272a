"""The signing key: made and kept for the embedded default, required otherwise."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path
from typing import Any

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


def test_generated_key_file_is_private_from_the_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "DEFAULT_DATA_DIR", tmp_path)
    old_umask = os.umask(0)  # what the process would otherwise let everyone read
    try:
        key = Settings(_env_file=None, database_url="", secret_key="").signing_key
    finally:
        os.umask(old_umask)
    key_file = tmp_path / "secret_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text() == key
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]  # no spare left behind


def _make_key_when_told(path: str, barrier: Any, keys: Any) -> None:
    barrier.wait()
    keys.put(config.read_or_create_key(Path(path)))


def test_processes_racing_to_make_the_key_share_one(tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    barrier, keys = spawn.Barrier(2), spawn.Queue()
    path = str(tmp_path / "secret_key")
    racers = [
        spawn.Process(target=_make_key_when_told, args=(path, barrier, keys)) for _ in range(2)
    ]
    for racer in racers:
        racer.start()
    made = {keys.get(timeout=60) for _ in racers}
    for racer in racers:
        racer.join(timeout=60)
    assert made == {Path(path).read_text()}
    assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret_key"]


def test_an_empty_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret_key").write_text("")
    with pytest.raises(ConfigError):
        config.read_or_create_key(tmp_path / "secret_key")


@pytest.mark.parametrize("value", ["true", "false", ""])
def test_the_old_web_push_switch_refuses_to_start(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renamed = "renamed WEB_PUSH_ALLOW_ANY_ENDPOINT"
    monkeypatch.setenv("WEB_PUSH_ALLOW_HTTP", value)
    with pytest.raises(ConfigError, match=renamed):
        Settings(_env_file=None)
    monkeypatch.delenv("WEB_PUSH_ALLOW_HTTP")

    env_file = tmp_path / ".env"
    env_file.write_text(f"WEB_PUSH_ALLOW_HTTP={value}\n")
    with pytest.raises(ConfigError, match=renamed):
        Settings(_env_file=env_file)

    env_file.write_text("WEB_PUSH_ALLOW_ANY_ENDPOINT=true\n")
    assert Settings(_env_file=env_file).web_push_allow_any_endpoint is True
