"""Builds one adapter per configured processor account."""

from __future__ import annotations

from typing import Iterable, Mapping

from adapters.base import ProcessorAdapter
from adapters.bridgepay import BridgePayAdapter
from adapters.mock import MockAdapter
from adapters.stripe import StripeAdapter
from gateway.settings import ProcessorConfig


def build_adapter(config: ProcessorConfig) -> ProcessorAdapter:
    if config.kind == "mock":
        return MockAdapter(config.id, pending_settle_seconds=config.pending_settle_seconds,
                           latency_seconds=config.latency_seconds, idempotency_keys=config.idempotency_keys,
                           lookup=config.lookup,
                           webhook_secrets=[s.get_secret_value() for s in config.webhook_secrets])
    if config.kind == "stripe":
        return StripeAdapter(config)
    if config.kind == "bridgepay":
        return BridgePayAdapter(config)
    raise AssertionError(config.kind)


def build_adapters(configs: Iterable[ProcessorConfig]) -> dict[str, ProcessorAdapter]:
    """Every configured account's adapter, by processor id; nothing connects until a call."""
    return {config.id: build_adapter(config) for config in configs}


async def close_adapters(adapters: Mapping[str, ProcessorAdapter]) -> None:
    for adapter in adapters.values():
        await adapter.aclose()
