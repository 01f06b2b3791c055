"""Prometheus metrics: counters and histograms updated where things happen, and gauges read from
the database at scrape time, so that every replica reports the same truth (once per scrape).

With several server processes (`serve --workers N`), PROMETHEUS_MULTIPROC_DIR names a folder
they share: a scrape answered by any of them adds up the counters of all. Labels are processor
ids, statuses and error classes; never an id of a refund, a key or anything a client sent.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Iterable

import asyncpg
import structlog
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from adapters.base import ProcessorError, RefundResult
from gateway.db import store

log = structlog.get_logger(__name__)

# No `_created` series: one per counter and histogram, they double what a scrape carries for a
# start time nobody alerts on.
disable_created_metrics()
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

REFUND_TRANSITIONS = Counter(
    "psp_gateway_refund_transitions_total", "Refunds entering a status (a new refund enters pending)",
    ["processor", "status"])
PROCESSOR_CALLS = Histogram(
    "psp_gateway_processor_call_duration_seconds",
    "Processor calls by operation (refund, lookup) and outcome (succeeded, pending, declined, canceled, "
    "needs_attention, not_found, or the error class: transient, outcome_unknown, protocol, error, internal)",
    ["processor", "operation", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
PROCESSOR_RETRIES = Counter(
    "psp_gateway_processor_retries_total", "Quick retries of a processor call within one run", ["processor", "error_class"])
DURABLE_RETRIES = Counter(
    "psp_gateway_durable_retries_scheduled_total", "Refunds left pending with a due time for their next processor call",
    ["processor"])
EXECUTION_WINDOW_WAITS = Counter(
    "psp_gateway_execution_window_waits_total",
    "Look-ups that found no record while a request sent earlier could still be carried out (no resend yet)",
    ["processor"])
FENCED_ANSWERS = Counter(
    "psp_gateway_refund_answers_fenced_total",
    "Processor answers got under a claim that was taken over since: kept as attempts, moving nothing", ["processor"])
DUPLICATE_EXECUTIONS = Counter(
    "psp_gateway_duplicate_executions_total", "Refunds a look-up found carried out more than once at their processor",
    ["processor"])
RECONCILIATION_RUNS = Counter("psp_gateway_reconciliation_runs_total", "Reconciliation runs by how they ended "
                              "(finished, failed: the listing could not be had)", ["processor", "status"])
SOURCE_LIMITED = Counter(
    "psp_gateway_source_limited_total", "Requests refused (429) before sign-in, per source address limit: "
    "failed_sign_in (too many wrong or missing keys) or unauthenticated (routes without a key)", ["limit"])
SLOW_BODIES = Counter("psp_gateway_request_body_timeouts_total",
                      "Requests whose body did not arrive within request_read_seconds (408)")
WEBHOOK_EVENTS = Counter(
    "psp_gateway_webhook_events_total",
    "Processor webhooks: received (stored), duplicate, rejected, and how applying them ended "
    "(applied, ignored, unmatched, failed)", ["processor", "status"])
WEBHOOK_LAG = Histogram(
    "psp_gateway_webhook_apply_lag_seconds", "From storing a webhook event to applying it", ["processor"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400))
CALLBACK_DELIVERIES = Counter(
    "psp_gateway_callback_deliveries_total", "Tries to deliver a refund event to the billing core", ["result"])
# idle + in_use is the pool's size: sum() over the states adds up to it, counting no connection twice.
DB_POOL = Gauge("psp_gateway_db_pool_connections", "Database connections of the pool, by state (idle, in_use)",
                ["state"], multiprocess_mode="livesum")
DB_POOL_MAX = Gauge("psp_gateway_db_pool_max_connections", "The pool's largest size", multiprocess_mode="livesum")

_children: dict[tuple[object, tuple[str, ...]], Any] = {}


def child(metric: Counter | Histogram, *labels: str) -> Any:
    """`metric.labels(*labels)`, made once per label set and then a dict hit: the hot path skips
    prometheus_client's label checks and lock. Labels are processor ids and statuses, a bounded set."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


_ERROR_CLASSES = {"transient": "transient", "outcome_unknown": "outcome_unknown", "protocol_error": "protocol"}


def call_outcome(answer: RefundResult | BaseException | None) -> str:
    """The `outcome` label of one processor call: the processor's answer, or the class of its failure."""
    if isinstance(answer, RefundResult):
        return answer.outcome.value
    if answer is None:
        return "not_found"  # a lookup the processor has no record of
    if isinstance(answer, ProcessorError):
        return _ERROR_CLASSES.get(answer.error_class, "error")
    return "internal"  # an adapter bug


def observe_pool(pool: asyncpg.Pool) -> None:
    size, idle = pool.get_size(), pool.get_idle_size()
    DB_POOL.labels("idle").set(idle)
    DB_POOL.labels("in_use").set(size - idle)
    DB_POOL_MAX.set(pool.get_max_size())


async def keep_pool_observed(pool: asyncpg.Pool, interval: float = 5.0) -> None:
    """Every process writes its own pool's numbers, so that a scrape of any process adds them all up."""
    while True:
        observe_pool(pool)
        await asyncio.sleep(interval)


class _Families:
    """Metric families computed before rendering (prometheus-client collectors are synchronous)."""

    def __init__(self, families: Iterable[Metric]):
        self._families = list(families)

    def collect(self) -> list[Metric]:
        return self._families


async def database_families(pool: asyncpg.Pool, *, stuck_after_seconds: float, outbox: bool,
                            timeout: float) -> list[Metric]:
    """Gauges read from the database now: small, index-backed queries under one short timeout.
    When they fail or run late, only `psp_gateway_database_up 0`."""
    up = GaugeMetricFamily("psp_gateway_database_up", "1 when this scrape's database queries answered in time")
    try:
        async with asyncio.timeout(timeout), pool.acquire() as conn:
            refunds = await store.open_refund_counts(conn)
            stuck = await store.stuck_counts(conn, stuck_after_seconds)
            webhooks = await store.open_webhook_counts(conn)
            backlog = await store.outbox_backlog(conn) if outbox else None
            held_back = await store.events_held_back(conn)
            findings = await store.open_finding_counts(conn)
    except Exception as e:  # down, too slow, or the pool is exhausted: /metrics still answers
        log.warning("metrics_database_unavailable", error=type(e).__name__)
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    open_refunds = GaugeMetricFamily("psp_gateway_refunds_open", "Refunds not final now (pending, requires_attention)",
                                     labels=["processor", "status", "stage"])
    for r in refunds:
        open_refunds.add_metric([r["processor_id"], r["status"], r["stage"]], r["count"])
    stuck_refunds = GaugeMetricFamily(
        "psp_gateway_refunds_stuck", "Stuck refunds by reason, as GET /admin/refunds?stuck=true counts them",
        labels=["reason"])
    for reason, count in stuck.items():
        stuck_refunds.add_metric([reason], count)
    if not stuck:  # 0, not absent: an alert on it, or a graph of it, sees nothing stuck
        stuck_refunds.add_metric(["none"], 0)
    open_webhooks = GaugeMetricFamily("psp_gateway_webhook_events_open", "Webhook events not applied now (received, "
                                      "failed, unmatched)", labels=["processor", "status"])
    oldest_webhooks = GaugeMetricFamily(
        "psp_gateway_webhook_oldest_open_seconds", "Age of the oldest webhook event not applied now, from when it was "
        "stored (received: waiting for the inbox, failed: failing since; unmatched: waiting for its payment, "
        "swept again with backoff)",
        labels=["processor", "status"])
    for r in webhooks:
        open_webhooks.add_metric([r["processor_id"], r["status"]], r["count"])
        oldest_webhooks.add_metric([r["processor_id"], r["status"]], r["oldest_seconds"])
    open_findings = GaugeMetricFamily(
        "psp_gateway_reconciliation_findings", "Open reconciliation findings (GET /admin/reconciliation/findings)",
        labels=["processor", "kind"])
    for r in findings:
        open_findings.add_metric([r["processor_id"], r["kind"]], r["count"])
    families: list[Metric] = [
        up, open_refunds, stuck_refunds, open_webhooks, oldest_webhooks, open_findings,
        GaugeMetricFamily("psp_gateway_events_held_back", "Refund events committed but not yet served by GET "
                          "/v1/events, because an older transaction is still open on the database server",
                          value=held_back["count"]),
        GaugeMetricFamily("psp_gateway_events_held_back_seconds", "Age of the oldest of those (0 when none)",
                          value=held_back["oldest_seconds"])]
    if backlog is not None:
        families.append(GaugeMetricFamily("psp_gateway_outbox_undelivered", "Refund events not yet delivered to the "
                                          "billing core", value=backlog["count"]))
        families.append(GaugeMetricFamily("psp_gateway_outbox_oldest_undelivered_seconds", "Age of the oldest "
                                          "undelivered refund event (0 when none)", value=backlog["oldest_seconds"]))
    return families


class DatabaseGauges:
    """One reading of the database gauges at a time, per process: scrapes that arrive while one is
    running share its answer, so that however many scrapers there are (/metrics may be open), the
    metrics take at most one of the pool's connections."""

    def __init__(self) -> None:
        self._running: asyncio.Future[list[Metric]] | None = None

    async def read(self, pool: asyncpg.Pool, *, stuck_after_seconds: float, outbox: bool,
                   timeout: float) -> list[Metric]:
        if self._running is None:
            self._running = asyncio.ensure_future(database_families(
                pool, stuck_after_seconds=stuck_after_seconds, outbox=outbox, timeout=timeout))
            self._running.add_done_callback(self._done)
        return await asyncio.shield(self._running)  # a scraper that goes away cancels only its own wait

    def _done(self, _: asyncio.Future) -> None:
        self._running = None


def _process_metrics() -> CollectorRegistry:
    """This process's metrics, or every server process's when they share a multiprocess folder."""
    if not os.environ.get(MULTIPROCESS_DIR):
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry


async def exposition(pool: asyncpg.Pool, gauges: DatabaseGauges, *, stuck_after_seconds: float, outbox: bool,
                     timeout: float) -> bytes:
    """The text exposition for one scrape."""
    observe_pool(pool)
    families = await gauges.read(pool, stuck_after_seconds=stuck_after_seconds, outbox=outbox, timeout=timeout)
    return generate_latest(_process_metrics()) + generate_latest(_Families(families))
