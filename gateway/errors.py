"""One exception family for the whole service; the error middleware turns it into problem+json."""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    status = 400
    code = "bad_request"
    title = "Bad request"

    def __init__(self, detail: str, *, code: str | None = None, headers: dict[str, str] | None = None,
                 **extra: Any):
        super().__init__(detail)
        self.detail = detail
        if code:
            self.code = code
        self.headers = headers or {}
        self.extra = extra

    def problem(self) -> dict[str, Any]:
        # A relative URI (RFC 9457 3.1.1): this gateway serves it, as the code's entry on /docs.
        return {"type": f"/problems/{self.code}", "title": self.title,
                "status": self.status, "code": self.code, "detail": self.detail, **self.extra}


class InvalidRequest(GatewayError):
    status, code, title = 422, "validation_error", "Invalid request"


class Refused(InvalidRequest):
    """A valid request that the stored state turns down (nothing left to refund, another currency).
    A verdict, not a typo: kept under its Idempotency-Key like any answer to a request that ran, so
    a retried command can never turn into a refund after the billing core was told no."""


class MalformedRequest(GatewayError):
    status, code, title = 400, "malformed_request", "Malformed request"


class Unauthorized(GatewayError):
    status, code, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str = "a valid API key is required (Authorization: Bearer <key> or X-API-Key)", *,
                 challenge: str = 'Bearer realm="psp-gateway"'):
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(GatewayError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(GatewayError):
    status, code, title = 404, "not_found", "Not found"


class Conflict(GatewayError):
    status, code, title = 409, "conflict", "Conflict"


class RequestTimeout(GatewayError):
    status, code, title = 408, "request_timeout", "Request timeout"


class PayloadTooLarge(GatewayError):
    status, code, title = 413, "payload_too_large", "Payload too large"


class UnsupportedMediaType(GatewayError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class TooManyRequests(GatewayError):
    status, code, title = 429, "rate_limited", "Too many requests"


class ServiceUnavailable(GatewayError):
    status, code, title = 503, "service_unavailable", "Service unavailable"


class InternalError(GatewayError):
    status, code, title = 500, "internal_error", "Internal error"
