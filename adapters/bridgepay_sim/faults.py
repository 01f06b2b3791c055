"""Fault injection, switched at run time through POST /_sim/faults, for tests and chaos runs.

Every fault is a rule, as in the Stripe-like simulator: it matches requests by path prefix (and, for
RequestHandler.svc, by RequestType), then fires with `probability` (default 1), at most `count` times
(default unlimited). Decisions come from one seeded random generator, so a seeded run fails the same
requests every time.

Kinds, and whether the request is executed:
- latency: `ms` on every matching request, plus `spike_ms` when the rule fires.
- internal_error: ResponseCode 20002 in an ErrorResponse; not executed.
- unavailable: ResponseCode 20003 in an ErrorResponse; not executed.
- network: a VoidRefund (Auth, Ping for other types) with 20003 and "E02 - Network Unavailable"; not executed.
- drop: the connection is closed without an answer; not executed.
- garbage: HTTP 200 with a body that is not XML (`payload` "body"), or an envelope whose
  ProcessRequestResult decodes to something that is not XML ("result"); executed only if `execute`.
- hostile: a "billion laughs" DOCTYPE as the whole body (`payload` "billion_laughs") or inside the
  decoded ProcessRequestResult ("billion_laughs_result"), or a body of `huge_bytes` ("huge");
  executed only if `execute`.
- unknown_code: a successful 012 is executed and answered with "Z99 - Something New" as its
  GatewayMessage (ResponseCode 00000); declined or refused requests pass through untouched.
- execute_then_timeout: executed, then the answer is held `hold_seconds` (then sent).
- execute_then_drop: executed, then the connection is closed without an answer.
- delay_execution: the request is carried out `delay_ms` after it was received, whether or not the
  client still waits for it (a request queued on the processor's side); then answered, if anyone listens.
- execute_after_disconnect: the request waits until the client gives up and closes its connection (at
  most `hold_seconds`), and is carried out `delay_ms` after that: an execution nobody hears of.
On the Reporting API, internal_error answers a SOAP Fault with HTTP 500, unavailable and network one
with HTTP 503, and unknown_code does nothing.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, fields
from typing import Any

from adapters.bridgepay_sim.wire import PROCESS_PATH
from adapters.simkit import ChanceRule

KINDS = ("latency", "internal_error", "unavailable", "network", "drop", "garbage", "hostile", "unknown_code",
         "execute_then_timeout", "execute_then_drop", "delay_execution", "execute_after_disconnect")
PAYLOADS = {"garbage": ("body", "result"), "hostile": ("billion_laughs", "billion_laughs_result", "huge")}


@dataclass(frozen=True)
class Spot:
    """What a rule matches on: the HTTP path and, for ProcessRequest, the decoded RequestType."""

    path: str
    request_type: str | None = None


@dataclass
class Rule(ChanceRule):
    path: str = PROCESS_PATH  # prefix; the Reporting API is /Bridgepay.Reporting.API/
    request_type: str | None = None  # e.g. "012"; None matches every request on the path
    # Kind-specific settings; each kind reads only its own.
    ms: float = 0.0  # latency: added to every matching request
    spike_ms: float = 0.0  # latency: added when the rule fires
    hold_seconds: float = 30.0  # execute_then_timeout: how long the answer is held back (then sent)
    delay_ms: float = 0.0  # delay_execution, execute_after_disconnect: how long until the request is carried out
    payload: str | None = None  # garbage: body|result; hostile: billion_laughs|billion_laughs_result|huge
    huge_bytes: int = 32 * 1024 * 1024  # hostile "huge": the body's size
    execute: bool = False  # garbage, hostile: run the request before answering badly

    def __post_init__(self) -> None:
        # Control bodies are JSON from anywhere: a bad value is refused now, not in the middle of a request.
        super().__post_init__()
        self.ms, self.spike_ms, self.delay_ms = float(self.ms), float(self.spike_ms), float(self.delay_ms)
        self.hold_seconds, self.huge_bytes = float(self.hold_seconds), int(self.huge_bytes)
        self.path = str(self.path)
        self.request_type = None if self.request_type is None else str(self.request_type)
        if not isinstance(self.execute, bool):
            raise TypeError("execute is true or false")

    def matches(self, spot: Spot) -> bool:
        return spot.path.startswith(self.path) and self.request_type in (None, spot.request_type)



class Faults:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.rules: dict[str, Rule] = {}
        self.fired_counts: Counter[str] = Counter()

    def configure(self, body: dict[str, Any]) -> None:
        """Sets the kinds present in `body` (null switches one off); others stay as they are.
        Raises ValueError or TypeError on unknown kinds or settings."""
        unknown = set(body) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {list(KINDS)}")
        rules = {}
        for kind, spec in body.items():
            if spec is None:
                continue
            if not isinstance(spec, dict):
                raise TypeError(f"{kind}: a rule is a JSON object or null")
            rule = Rule(**spec)
            allowed = PAYLOADS.get(kind, (None,))
            if rule.payload is None:
                rule.payload = allowed[0]
            if rule.payload not in allowed:
                raise ValueError(f"{kind}: payload is one of {list(allowed)}")
            rules[kind] = rule
        for kind in body:
            self.rules.pop(kind, None)
        self.rules.update(rules)

    def clear(self) -> None:
        self.rules.clear()

    def fired(self, kind: str, spot: Spot) -> Rule | None:
        rule = self.rules.get(kind)
        if rule is not None and rule.matches(spot) and rule.fires(self.rng):
            self.fired_counts[kind] += 1
            return rule
        return None

    def latency_ms(self, spot: Spot) -> float:
        rule = self.rules.get("latency")
        if rule is None or not rule.matches(spot):
            return 0.0
        return rule.ms + (rule.spike_ms if self.fired("latency", spot) else 0.0)

    def describe(self) -> dict[str, Any]:
        defaults = {f.name: f.default for f in fields(Rule)}
        always = ("probability", "count", "path", "request_type")
        return {kind: {k: v for k, v in asdict(rule).items() if k in always or v != defaults[k]}
                for kind, rule in self.rules.items()}
