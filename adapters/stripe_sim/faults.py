"""Fault injection, switched at run time through POST /_sim/faults, for tests and chaos runs.

Every API fault is a rule: it matches requests by path prefix (and method), then fires with
`probability` (default 1), at most `count` times (default unlimited). Decisions come from one
seeded random generator, so a seeded run fails the same requests every time.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Any

from aiohttp import web

from adapters.simkit import ChanceRule


@dataclass
class Rule(ChanceRule):
    path: str = "/v1/"  # prefix, e.g. "/v1/refunds"
    method: str | None = None  # e.g. "POST"; None matches all
    # Kind-specific settings; each kind reads only its own.
    ms: float = 0.0  # latency: added to every matching request
    spike_ms: float = 0.0  # latency: added when the rule fires
    retry_after: int = 1  # rate_limit: seconds, sent as Retry-After
    hold_seconds: float = 30.0  # execute_then_timeout: how long the answer is held back (then sent)

    def __post_init__(self) -> None:
        # Control bodies are JSON from anywhere: a bad value is refused now, not in the middle of a request.
        super().__post_init__()
        self.ms, self.spike_ms = float(self.ms), float(self.spike_ms)
        self.retry_after, self.hold_seconds = int(self.retry_after), float(self.hold_seconds)
        self.path, self.method = str(self.path), self.method.upper() if self.method else None

    def matches(self, request: web.Request) -> bool:
        return request.path.startswith(self.path) and self.method in (None, request.method)



@dataclass
class WebhookFaults:
    duplicate_probability: float = 0.0  # deliver an event twice
    max_delay_ms: float = 0.0  # random delay before each delivery: events arrive out of order
    drop_probability: float = 0.0  # never deliver an event

    def __post_init__(self) -> None:
        for name in ("duplicate_probability", "max_delay_ms", "drop_probability"):
            setattr(self, name, float(getattr(self, name)))


# api_error, rate_limit and drop act before the request runs (nothing executed, nothing stored under its
# idempotency key); execute_then_* act after it ran: a 500 stored and replayed as Stripe does, an answer
# held back past the client's timeout, or a connection closed instead of the answer.
# refund_requires_action acts on POST /v1/refunds alone: the new refund starts in requires_action (as a
# non-card refund waiting for the customer), whatever the refund behaviour says; it counts against the
# charge until canceled.
KINDS = ("latency", "api_error", "rate_limit", "drop",
         "execute_then_api_error", "execute_then_timeout", "execute_then_drop", "refund_requires_action")


class Faults:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.rules: dict[str, Rule] = {}
        self.webhooks = WebhookFaults()
        self.fired_counts: Counter[str] = Counter()  # how often each kind fired, for chaos summaries

    def configure(self, body: dict[str, Any]) -> None:
        """Sets the kinds present in `body` (null switches one off); others stay as they are.
        Raises ValueError or TypeError on unknown kinds or settings."""
        unknown = set(body) - {*KINDS, "webhooks"}
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {[*KINDS, 'webhooks']}")
        rules = {kind: Rule(**spec) for kind, spec in body.items() if kind != "webhooks" and spec is not None}
        if "webhooks" in body:
            self.webhooks = WebhookFaults(**(body["webhooks"] or {}))
        for kind in set(body) - {"webhooks"}:
            self.rules.pop(kind, None)
        self.rules.update(rules)

    def clear(self) -> None:
        self.rules.clear()
        self.webhooks = WebhookFaults()

    def fired(self, kind: str, request: web.Request) -> Rule | None:
        rule = self.rules.get(kind)
        if rule is not None and rule.matches(request) and rule.fires(self.rng):
            self.fired_counts[kind] += 1
            return rule
        return None

    def latency_ms(self, request: web.Request) -> float:
        rule = self.rules.get("latency")
        if rule is None or not rule.matches(request):
            return 0.0
        return rule.ms + (rule.spike_ms if self.fired("latency", request) else 0.0)

    def describe(self) -> dict[str, Any]:
        defaults = {f.name: f.default for f in fields(Rule)}
        rules = {kind: {k: v for k, v in asdict(rule).items() if k in ("probability", "count", "path", "method")
                        or v != defaults[k]} for kind, rule in self.rules.items()}
        return {**rules, "webhooks": asdict(self.webhooks)}
