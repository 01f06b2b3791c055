"""The database settings a pooler in front of Postgres needs: the prepared-statement cache and
whether `serve` migrates at start, read from GATEWAY_* variables."""

from __future__ import annotations

import pytest

from gateway.settings import ConfigError, load_settings


def test_statement_cache_and_migration_at_start_are_on_by_default():
    settings = load_settings()
    assert settings.database_statement_cache_size == 100  # asyncpg's own default
    assert settings.migrate_on_start is True


def test_a_transaction_mode_pooler_setup_is_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("GATEWAY_DATABASE_STATEMENT_CACHE_SIZE", "0")
    monkeypatch.setenv("GATEWAY_MIGRATE_ON_START", "false")
    settings = load_settings()
    assert settings.database_statement_cache_size == 0
    assert settings.migrate_on_start is False


def test_a_negative_statement_cache_size_is_refused_naming_the_field(monkeypatch):
    monkeypatch.setenv("GATEWAY_DATABASE_STATEMENT_CACHE_SIZE", "-1")
    with pytest.raises(ConfigError, match="database_statement_cache_size"):
        load_settings()
