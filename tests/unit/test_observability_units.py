"""The small decisions behind metrics and tracing: what switches tracing on, how a processor call's
outcome is labelled, and what a scrape reports when the database cannot answer."""

from __future__ import annotations

import asyncio
import contextlib
import sys

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapters.base import (
    OutcomeUnknownError,
    ProcessorError,
    ProcessorProtocolError,
    RefundResult,
    TransientProcessorError,
)
from gateway import metrics, tracing
from gateway.domain.refunds import Outcome
from gateway.settings import ConfigError, Settings


@pytest.mark.parametrize(("setting", "environ", "on"), [
    (None, {}, False),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    (None, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    (None, {"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),
    (True, {}, True),
    (False, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
])
def test_tracing_is_off_unless_switched_on_or_given_an_endpoint(setting, environ, on):
    assert tracing.wanted(Settings(otel_enabled=setting), environ) is on


def test_switched_on_tracing_builds_its_exporter_and_flushes_at_the_end(monkeypatch):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gw-test")
    traces = tracing.Tracing.from_settings(Settings(otel_enabled=True))
    provider = traces._provider
    [processor] = provider._active_span_processor._span_processors
    exporter = processor._batch_processor._exporter  # SDK internals: there is no public accessor
    assert type(exporter).__name__ == "OTLPSpanExporter" and not exporter._shutdown
    assert provider.resource.attributes["service.name"] == "gw-test"
    traces.shutdown()
    assert exporter._shutdown  # flushed and closed


def test_switched_on_tracing_without_the_otel_extra_stops_the_start_naming_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)  # not installed
    with pytest.raises(ConfigError, match=r"pip install 'psp-gateway\[otel\]'"):
        tracing.Tracing.from_settings(Settings(otel_enabled=True))


@pytest.mark.parametrize(("answer", "label"), [
    (RefundResult(Outcome.SUCCEEDED), "succeeded"),
    (RefundResult(Outcome.DECLINED, decline_code="insufficient_funds"), "declined"),
    (RefundResult(Outcome.NEEDS_ATTENTION), "needs_attention"),
    (None, "not_found"),
    (TransientProcessorError("503"), "transient"),
    (OutcomeUnknownError("timeout"), "outcome_unknown"),
    (ProcessorProtocolError("garbage"), "protocol"),
    (ProcessorError("other"), "error"),
    (KeyError("adapter bug"), "internal"),
])
def test_each_processor_answer_has_one_bounded_outcome_label(answer, label):
    assert metrics.call_outcome(answer) == label


def test_a_metric_child_is_made_once_per_label_set_and_counts_in_the_scrape():
    sample = "psp_gateway_webhook_events_total"
    labels = {"processor": "child_test", "status": "applied"}

    def counted() -> float:
        return next((s.value for f in text_string_to_metric_families(generate_latest().decode())
                     for s in f.samples if s.name == sample and s.labels == labels), 0.0)

    before = counted()
    first = metrics.child(metrics.WEBHOOK_EVENTS, "child_test", "applied")
    assert metrics.child(metrics.WEBHOOK_EVENTS, "child_test", "applied") is first
    assert metrics.child(metrics.WEBHOOK_EVENTS, "child_test", "ignored") is not first
    first.inc()
    metrics.child(metrics.WEBHOOK_EVENTS, "child_test", "applied").inc()
    assert counted() == before + 2


class _DeadPool:
    """A pool whose database never answers: acquiring hangs (as a lost server's TCP connect can)."""

    def acquire(self):
        @contextlib.asynccontextmanager
        async def hang():
            await asyncio.sleep(3600)
            yield None
        return hang()


async def test_a_scrape_with_the_database_away_reports_only_database_up_zero_and_in_time():
    families = await metrics.database_families(_DeadPool(), stuck_after_seconds=900, outbox=True, timeout=0.05)
    text = generate_latest(metrics._Families(families)).decode()
    parsed = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert parsed == {"psp_gateway_database_up": 0.0}


class _SlowPool:
    """A pool that counts its connections and answers slowly: readings must not pile up on it."""

    def __init__(self):
        self.acquired = 0

    def acquire(self):
        @contextlib.asynccontextmanager
        async def slow():
            self.acquired += 1
            await asyncio.sleep(0.05)
            raise ConnectionRefusedError("no database here")
            yield None
        return slow()


async def test_concurrent_scrapes_share_one_database_reading():
    pool, gauges = _SlowPool(), metrics.DatabaseGauges()
    readings = await asyncio.gather(*(gauges.read(pool, stuck_after_seconds=900, outbox=False, timeout=1)
                                      for _ in range(20)))
    assert pool.acquired == 1 and all(r is readings[0] for r in readings)
    await gauges.read(pool, stuck_after_seconds=900, outbox=False, timeout=1)
    assert pool.acquired == 2  # a later scrape reads again: nothing is cached
