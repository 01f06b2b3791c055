"""Stripe's idempotent requests: per (API key, Idempotency-Key), the first answer is stored and
replayed; other parameters under the same key are refused; a concurrent twin gets a 409."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Hashable

from adapters.stripe_sim.errors import StripeError

MAX_KEY_LENGTH = 255


@dataclass
class Stored:
    fingerprint: Hashable  # method, path and parameters of the first request
    status: int
    body: bytes
    created: float = field(default_factory=time.monotonic)


class IdempotencyStore:
    def __init__(self, ttl_seconds: float):
        self._ttl = ttl_seconds
        self._stored: dict[tuple[str, str], Stored] = {}
        self._in_flight: dict[tuple[str, str], Hashable] = {}

    def claim(self, scope: tuple[str, str], fingerprint: Hashable) -> Stored | None:
        """The stored answer to replay, or None once this request may execute (then `finish` or
        `release` it). Raises the 400 or 409 idempotency_error."""
        key = scope[1]
        if len(key) > MAX_KEY_LENGTH:
            raise StripeError(400, "invalid_request_error",
                              f"Invalid idempotency key: must be at most {MAX_KEY_LENGTH} characters.",
                              param="Idempotency-Key", stored=False)
        stored = self._stored.get(scope)
        if stored is not None and time.monotonic() - stored.created > self._ttl:
            del self._stored[scope]  # pruned: the same key now makes a new request
            stored = None
        if scope in self._in_flight:
            raise StripeError(409, "idempotency_error",
                              "There is currently another in-progress request using this Idempotent Key "
                              "(that probably means you submitted twice, and the other request is still "
                              "going through): " + key + ". Please try again later.",
                              stored=False, headers={"Stripe-Should-Retry": "true"})
        if stored is not None:
            if stored.fingerprint != fingerprint:
                raise StripeError(400, "idempotency_error",
                                  "Keys for idempotent requests can only be used with the same parameters they "
                                  f"were first used with. Try using a key other than '{key}' if you meant to "
                                  "execute a different request.", stored=False)
            return stored
        self._in_flight[scope] = fingerprint
        return None

    def finish(self, scope: tuple[str, str], status: int, body: bytes) -> None:
        self._stored[scope] = Stored(self._in_flight.pop(scope), status, body)

    def release(self, scope: tuple[str, str]) -> None:
        """The request never executed (validation failure, injected front-door fault): keep nothing."""
        self._in_flight.pop(scope, None)
