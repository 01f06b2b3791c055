"""Stripe's error answers: `{"error": {"type", "code", "message", "param"}}` with its HTTP status."""

from __future__ import annotations

from typing import Any


class StripeError(Exception):
    """An error answer. `stored` says whether an idempotency key keeps it for replay: Stripe keeps
    what an endpoint answered once it started executing, not validation failures or clashes."""

    def __init__(self, status: int, type: str, message: str, *, code: str | None = None,
                 param: str | None = None, stored: bool = True, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.type, self.message = status, type, message
        self.code, self.param, self.stored = code, param, stored
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error = {"type": self.type, "code": self.code, "message": self.message, "param": self.param}
        return {"error": {k: v for k, v in error.items() if v is not None}}


def invalid_param(message: str, param: str | None = None, code: str | None = None) -> StripeError:
    """A request that fails validation: nothing ran, so nothing is stored under its idempotency key."""
    return StripeError(400, "invalid_request_error", message, code=code, param=param, stored=False)


def missing(kind: str, id: str, param: str = "id") -> StripeError:
    return StripeError(404, "invalid_request_error", f"No such {kind}: '{id}'", code="resource_missing", param=param)
