"""Reconciliation runs: a processor's refunds over a period, listed with no database connection held,
held against the gateway's (gateway.domain.reconciliation), and every disagreement stored as a
finding with both sides' facts. A run never sends anything to a processor and never moves a
refund: a refund the processor made that the gateway never heard of is recorded against its
payment as an external refund (as a dashboard refund's webhook would have), or flagged when its
payment is unknown. An operator resolves findings, with a reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

import asyncpg
import structlog

from adapters.base import ProcessorAdapter, ProcessorError, RefundSnapshot
from gateway import errors, ledger, metrics, operations, webhooks
from gateway.db import store
from gateway.domain.reconciliation import Finding, Kind, OurRefund, compare
from gateway.domain.refunds import Status
from gateway.ids import new_id
from gateway.logging import scrub_text

log = structlog.get_logger(__name__)

# The two books' clocks and creation times differ: the processor's listing is read this much
# wider than the period, so that a refund made at its edge is found on both sides.
SKEW = timedelta(hours=1)
LONGEST_PERIOD = timedelta(days=92)


@dataclass(frozen=True, slots=True)
class RunSummary:
    run_id: int
    processor_id: str
    since: datetime
    until: datetime
    status: str  # finished | failed
    processor_refunds: int
    gateway_refunds: int
    new_findings: dict[str, int]
    error: str | None
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "processor": self.processor_id, "since": self.since.isoformat(),
                "until": self.until.isoformat(), "status": self.status, "processor_refunds": self.processor_refunds,
                "gateway_refunds": self.gateway_refunds, "new_findings": self.new_findings, "error": self.error,
                "seconds": round(self.seconds, 3)}


def check_period(since: datetime, until: datetime) -> None:
    if since.tzinfo is None or until.tzinfo is None:
        raise errors.InvalidRequest("give times with a zone (UTC: a trailing Z)",
                                    errors=[{"field": "since", "message": "needs a time zone"}])
    if since >= until:
        raise errors.InvalidRequest("since must be before until", errors=[{"field": "until", "message": "not after since"}])
    if until - since > LONGEST_PERIOD:
        raise errors.InvalidRequest(f"a run covers at most {LONGEST_PERIOD.days} days: split the period",
                                    errors=[{"field": "since", "message": "period too long"}])


def _ours(row: Mapping[str, Any]) -> OurRefund:
    return OurRefund(id=row["id"], transaction_id=row["transaction_id"], payment_reference=row["payment_reference"],
                     psp_refund_id=row["psp_refund_id"],
                     duplicate_psp_refund_ids=tuple(row["duplicate_psp_refund_ids"] or ()),
                     status=Status(row["status"]), amount=row["amount"], currency=row["currency"],
                     created_at=row["created_at"], offline=row["origin"] == "offline")


async def run(pool: asyncpg.Pool, adapter: ProcessorAdapter, *, since: datetime, until: datetime,
              trigger: str = "command") -> RunSummary:
    """One run over [since, until): listed, compared, findings stored; its summary is kept."""
    check_period(since, until)
    if not adapter.capabilities.listing:
        raise errors.InvalidRequest(f"processor {adapter.id!r} cannot list its refunds",
                                    code="unknown_processor", errors=[{"field": "processor", "message": "no listing"}])
    started = datetime.now(timezone.utc)
    async with pool.acquire() as conn:
        row = await store.insert_run(conn, adapter.id, since, until, trigger)
    run_id = row["id"]
    with structlog.contextvars.bound_contextvars(reconciliation_run=run_id, processor=adapter.id):
        try:
            listed = await adapter.list_refunds(since - SKEW, until + SKEW)  # no connection held
        except ProcessorError as e:
            return await _failed(pool, adapter.id, run_id, since, until, started, f"listing failed: {e}")
        async with pool.acquire() as conn:
            rows = await store.refunds_to_reconcile(
                conn, adapter.id, [p.psp_refund_id for p in listed], [p.refund_id for p in listed if p.refund_id],
                since, until)
        findings = compare(listed, [_ours(r) for r in rows], since=since, until=until)
        counts: Counter[str] = Counter()
        for finding in findings:
            if await _store_finding(pool, adapter.id, run_id, finding):
                counts[finding.kind.value] += 1
        async with pool.acquire() as conn:
            await store.finish_run(conn, run_id, "finished", processor_refunds=len(listed), gateway_refunds=len(rows),
                                   counts=dict(counts))
    seconds = (datetime.now(timezone.utc) - started).total_seconds()
    metrics.child(metrics.RECONCILIATION_RUNS, adapter.id, "finished").inc()
    log.info("reconciliation_finished", run_id=run_id, processor=adapter.id, since=since.isoformat(),
             until=until.isoformat(), processor_refunds=len(listed), gateway_refunds=len(rows),
             new_findings=dict(counts), seconds=round(seconds, 3))
    return RunSummary(run_id, adapter.id, since, until, "finished", len(listed), len(rows), dict(counts), None,
                      seconds)


async def _failed(pool: asyncpg.Pool, processor_id: str, run_id: int, since: datetime, until: datetime,
                  started: datetime, error: str) -> RunSummary:
    error = scrub_text(error)[:500]
    async with pool.acquire() as conn:
        await store.finish_run(conn, run_id, "failed", processor_refunds=None, gateway_refunds=None, counts={},
                               error=error)
    metrics.child(metrics.RECONCILIATION_RUNS, processor_id, "failed").inc()
    log.warning("reconciliation_failed", run_id=run_id, processor=processor_id, error=error)
    seconds = (datetime.now(timezone.utc) - started).total_seconds()
    return RunSummary(run_id, processor_id, since, until, "failed", 0, 0, {}, error, seconds)


async def _store_finding(pool: asyncpg.Pool, processor_id: str, run_id: int, finding: Finding) -> bool:
    """Store a finding (and, for a refund missing in the gateway, record it); whether it is new."""
    async with pool.acquire() as conn, conn.transaction():
        action = None
        transaction_id, refund_id = finding.transaction_id, finding.refund_id
        if finding.kind is Kind.MISSING_IN_GATEWAY and finding.listed is not None:
            action, transaction_id, refund_id = await _record_external(conn, processor_id, finding)
        finding_id = await store.insert_finding(
            conn, run_id, processor_id, kind=finding.kind.value, key=finding.key, refund_id=refund_id,
            transaction_id=transaction_id, psp_refund_id=finding.psp_refund_id, gateway=finding.gateway,
            processor=finding.processor, action=action)
    if finding_id is not None:
        log.warning("reconciliation_finding", finding_id=finding_id, kind=finding.kind.value, refund_id=refund_id,
                    psp_refund_id=finding.psp_refund_id, action=action)
    return finding_id is not None


async def _record_external(conn: asyncpg.Connection, processor_id: str,
                           finding: Finding) -> tuple[str, str | None, str | None]:
    """A refund the processor made and the gateway never recorded, recorded against its payment as an
    external refund (its amount counts, and one that does not fit is flagged over-refunded), under
    the locks a webhook about it would take. Returns (action, transaction id, refund id)."""
    p = finding.listed
    snapshot = RefundSnapshot(psp_refund_id=p.psp_refund_id, refund_id=None, payment_references=[p.payment_reference],
                              amount=p.amount, currency=p.currency, outcome=p.outcome,
                              message="found by a reconciliation run")
    transaction = await webhooks.payment_after_registrations(conn, processor_id, snapshot.payment_references)
    if transaction is None:
        return "payment_unknown", None, None
    await store.lock_transaction(conn, transaction["id"])
    known = await webhooks.known_refund(conn, processor_id, snapshot)
    if known is not None:  # a webhook recorded it since the listing was read
        return "recorded_meanwhile", transaction["id"], known["id"]
    row = await ledger.record_external(conn, transaction, snapshot, event="reconciliation",
                                       request_id=new_id("req"), snapshot_at=p.created)
    return "recorded_external", transaction["id"], row["id"]


async def resolve(pool: asyncpg.Pool, finding_id: int, *, actor: str, reason: str,
                  request_id: str | None) -> asyncpg.Record:
    """An operator closes a finding, with a reason; audited like every operator action."""
    async with pool.acquire() as conn, conn.transaction():
        row = await store.resolve_finding(conn, finding_id, actor, reason)
        if row is None:
            found = await store.get_finding(conn, finding_id)
            if found is None:
                raise errors.NotFound(f"no reconciliation finding {finding_id}", code="finding_not_found")
            raise errors.Conflict(f"finding {finding_id} is resolved already", code="finding_resolved")
        await operations.audit(conn, actor=actor, action="reconciliation.resolve", target=f"finding:{finding_id}",
                               reason=reason, request={"kind": row["kind"]}, result={"status": "resolved"},
                               request_id=request_id)
    return row


async def run_due(pool: asyncpg.Pool, adapters: Mapping[str, ProcessorAdapter],
                  intervals: Mapping[str, tuple[float, float]]) -> int:
    """Scheduled runs: each processor with an interval whose run is due (claimed, so one replica runs
    it) is reconciled from where its last run ended (at most its lookback ago) to now."""
    if not intervals:
        return 0
    async with pool.acquire() as conn:
        await store.schedule_reconciliation(conn, list(intervals))
        due = [p for p, (interval, _) in intervals.items()
               if await store.claim_due_reconciliation(conn, p, interval)]
    done = 0
    for processor_id in due:
        adapter = adapters.get(processor_id)
        if adapter is None or not adapter.capabilities.listing:
            continue
        _, lookback = intervals[processor_id]
        until = datetime.now(timezone.utc)
        async with pool.acquire() as conn:
            last = await store.last_reconciled_until(conn, processor_id)
        floor = until - timedelta(seconds=lookback)
        since = max(floor, last) if last is not None else floor
        if since >= until:
            continue
        await run(pool, adapter, since=since, until=until, trigger="schedule")
        done += 1
    return done
