"""Optional OpenTelemetry tracing: a server span per HTTP request and a client span per processor
call, exported over OTLP/HTTP. Off unless configured; OpenTelemetry is imported only when it is
on, so the service runs without the `otel` extra.

Spans carry the route, the status code, the processor id, the operation, its outcome, the refund
id and the request id: never a header, a body, a query string or an exception's message.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import keys
from gateway.settings import ConfigError, Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def wanted(settings: Settings, environ: Mapping[str, str] = os.environ) -> bool:
    """GATEWAY_OTEL_ENABLED decides when set; unset, an OTLP endpoint in the environment switches it on."""
    if settings.otel_enabled is not None:
        return settings.otel_enabled
    return any(environ.get(name) for name in _ENDPOINTS)


def require_sdk() -> None:
    """Raises ConfigError, saying what to install, when tracing is wanted and the SDK is missing."""
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
        import opentelemetry.sdk.trace  # noqa: F401
    except ImportError:
        raise ConfigError("otel_enabled: tracing is switched on but OpenTelemetry is not installed "
                          "(pip install 'psp-gateway[otel]')") from None


class Tracing:
    def __init__(self, provider: "TracerProvider", *, owned: bool = False):
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self._provider, self._owned = provider, owned
        self._tracer = provider.get_tracer("psp-gateway")
        self._trace = trace
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_settings(cls, settings: Settings) -> "Tracing":
        """The SDK with an OTLP/HTTP exporter, configured by the standard OTEL_* variables."""
        require_sdk()
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(resource=Resource.create(
            {"service.name": os.environ.get("OTEL_SERVICE_NAME") or "psp-gateway"}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(provider, owned=True)

    def shutdown(self) -> None:
        """Flush what is left (only a provider this object made; a test's own is the test's)."""
        if self._owned:
            self._provider.shutdown()

    def _span(self, name: str, kind: Any, attributes: dict[str, Any], context: Any = None):
        return self._tracer.start_as_current_span(name, context=context, kind=kind, attributes=attributes,
                                                  record_exception=False, set_status_on_exception=False)

    def _fail(self, span: Any, description: str) -> None:
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, description))

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        attributes = {"http.request.method": request.method, "http.route": route,
                      "gateway.request_id": request.get(keys.REQUEST_ID, "")}
        with self._span(f"{request.method} {route}", self._trace.SpanKind.SERVER, attributes,
                        self._propagator.extract(request.headers)) as span:
            try:
                response = await handler(request)
            except BaseException as e:
                self._fail(span, type(e).__name__)
                raise
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                self._fail(span, str(response.status))
            return response

    @contextlib.contextmanager
    def processor_call(self, processor_id: str, operation: str, refund_id: str,
                       request_id: str | None) -> Iterator["CallSpan"]:
        """A client span around one processor call; the caller names the outcome."""
        attributes = {"gateway.processor": processor_id, "gateway.operation": operation,
                      "gateway.refund_id": refund_id, "gateway.request_id": request_id or ""}
        with self._span(f"processor {operation}", self._trace.SpanKind.CLIENT, attributes) as span:
            yield CallSpan(self, span)


class CallSpan:
    def __init__(self, tracing: Tracing, span: Any):
        self._tracing, self._span = tracing, span

    def outcome(self, outcome: str, *, failed: bool) -> None:
        self._span.set_attribute("gateway.outcome", outcome)
        if failed:
            self._tracing._fail(self._span, outcome)
