"""Builds one adapter per configured processor account."""

from __future__ import annotations

from adapters.base import ProcessorAdapter
from adapters.mock import MockAdapter
from adapters.stripe import StripeAdapter
from gateway.settings import ConfigError, ProcessorConfig


AVAILABLE_KINDS = frozenset({"mock", "stripe"})


def check_supported(config: ProcessorConfig) -> None:
    if config.kind not in AVAILABLE_KINDS:
        raise ConfigError(f"processors.{config.id}.kind: the {config.kind!r} adapter is not available in this version")


def build_adapter(config: ProcessorConfig) -> ProcessorAdapter:
    check_supported(config)
    if config.kind == "mock":
        return MockAdapter(config.id, pending_settle_seconds=config.pending_settle_seconds,
                           latency_seconds=config.latency_seconds, idempotency_keys=config.idempotency_keys,
                           lookup=config.lookup,
                           webhook_secrets=[s.get_secret_value() for s in config.webhook_secrets])
    if config.kind == "stripe":
        return StripeAdapter(config)
    raise AssertionError(config.kind)
