"""The simulator's settings, built once by whoever starts it (the CLI, a test, a benchmark)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SimConfig:
    api_key: str = "sk_test_sim"
    webhook_url: str | None = None  # no URL: events are recorded, nothing is delivered
    webhook_secrets: list[str] = field(default_factory=list)  # two secrets sign twice, as during a rotation
    seed: int | None = None  # seeds fault decisions, webhook chaos and ids, for reproducible runs
    api_version: str = "2024-06-20"
    # Webhook delivery: Stripe retries for days; a simulator retries briefly so tests stay fast.
    delivery_max_attempts: int = 8
    delivery_initial_backoff_seconds: float = 0.5
    delivery_max_backoff_seconds: float = 30.0
    delivery_timeout_seconds: float = 5.0
    idempotency_ttl_seconds: float = 24 * 3600  # Stripe prunes keys after 24 h
