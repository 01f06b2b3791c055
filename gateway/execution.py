"""Running a refund at its processor: call with no database connection held, then record the
outcome in a second transaction with a compare-and-set on the refund's state."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Awaitable, Mapping

import asyncpg
import structlog

from adapters.base import (
    OutcomeUnknownError,
    ProcessorAdapter,
    ProcessorError,
    RefundRequest,
    RefundResult,
    TransientProcessorError,
)
from gateway import ledger, metrics
from gateway.db import store
from gateway.domain.refunds import Outcome, Status, Target
from gateway.ids import new_id
from gateway.retry import processor_retrying, release
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.tracing import Tracing

log = structlog.get_logger(__name__)

# Added to a processor's execution window before "no record" is trusted: the gateway's and the
# database's clocks, and the processor's, are not one clock.
WINDOW_MARGIN_SECONDS = 1.0
# How many look-ups a refund gets while its execution window runs, at most (then one after it).
WINDOW_LOOKUPS = 4
# A look-up for a second execution that failed is tried again after this long.
VERIFY_RETRY_SECONDS = 30.0
# Defaults for a processor the settings do not describe (an adapter built by hand, in tests).
_DEFAULT_TIMEOUT_SECONDS, _DEFAULT_WINDOW_SECONDS = 10.0, 300.0


class ExecutionWindowOpen(OutcomeUnknownError):
    """A look-up found no record, but a request sent earlier may still be carried out: the
    processor cannot deduplicate a resend, so the refund waits until `until` and is looked up again."""

    def __init__(self, until: datetime):
        super().__init__(f"no record at the processor yet, and a request sent earlier may still be carried out "
                         f"until {until.isoformat(timespec='seconds')}: looked up again then, resent only if "
                         "still not there", code="execution_window")
        self.until = until


@dataclass(frozen=True, slots=True)
class Attempt:
    call: str  # refund | lookup
    started_at: datetime
    latency_ms: int
    outcome: str
    error_class: str | None = None
    processor_code: str | None = None
    message: str | None = None


def _attempt(call: str, started_at: datetime, t0: float, answer: RefundResult | BaseException | str) -> Attempt:
    latency_ms = int((time.perf_counter() - t0) * 1000)
    if isinstance(answer, str):  # a lookup that found nothing
        return Attempt(call, started_at, latency_ms, answer)
    if isinstance(answer, RefundResult):
        return Attempt(call, started_at, latency_ms, answer.outcome.value, None, answer.processor_code,
                       ledger.said(answer.message))
    return Attempt(call, started_at, latency_ms, "error", getattr(answer, "error_class", "internal"),
                   getattr(answer, "code", None), ledger.said(str(answer)))


def _last_sent(attempts: list[Attempt]) -> datetime | None:
    """When the newest refund call of a run started (sent at the latest then)."""
    return max((a.started_at for a in attempts if a.call == "refund"), default=None)


@dataclass(frozen=True, slots=True)
class RunReport:
    """What one run did: the refund as it now is, whether the processor was asked first, what it
    knew, and whether the refund was (re)sent."""

    refund: asyncpg.Record
    looked_up: bool
    found: str | None
    resent: bool


def _key_forgotten(refund: Mapping, adapter: ProcessorAdapter) -> bool:
    """Whether the processor may have forgotten the refund's idempotency key: the refund was
    created (no later than its first send) longer ago than the processor keeps keys."""
    age = (datetime.now(timezone.utc) - refund["created_at"]).total_seconds()
    return age > adapter.capabilities.idempotency_key_window_seconds


def refund_request(refund: Mapping, transaction: Mapping, request_id: str | None = None) -> RefundRequest:
    return RefundRequest(
        refund_id=refund["id"], idempotency_key=refund["idempotency_key"], psp_reference=transaction["psp_reference"],
        amount=refund["amount"], currency=refund["currency"], invoice_id=refund["invoice_id"],
        credit_note_id=refund["credit_note_id"], reason=refund["reason"],
        settled=transaction["settled_at"] is not None, metadata=refund["metadata"], request_id=request_id)


class RefundExecutor:
    """Sends refunds and records what came back. Work continues after an HTTP answer, in tasks
    the executor tracks so that shutdown can wait for them."""

    def __init__(self, pool: asyncpg.Pool, adapters: Mapping[str, ProcessorAdapter], settings: Settings,
                 tracing: "Tracing | None" = None):
        self._pool, self._adapters, self._settings = pool, adapters, settings
        self._tracing = tracing
        self._tasks: set[asyncio.Task] = set()

    def adapter(self, processor_id: str) -> ProcessorAdapter:
        return self._adapters[processor_id]

    def start(self, refund: Mapping, transaction: Mapping, request_id: str | None = None) -> asyncio.Task:
        task = asyncio.create_task(self.send(refund, transaction, request_id))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(t, refund["id"]))
        return task

    def _finished(self, task: asyncio.Task, refund_id: str) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Typically the database went away while recording: the refund keeps its lease
            # (stage `sending`) and is visible as such until it is resolved.
            log.error("refund_recording_failed", refund_id=refund_id, error=type(task.exception()).__name__)

    async def send(self, refund: Mapping, transaction: Mapping, request_id: str | None = None, *,
                   resolve_first: bool = False) -> asyncpg.Record:
        """Carry a refund that is `sending` (leased to us) to its next state.

        `resolve_first`: an earlier call may have been carried out (a lease that expired, an
        unknown outcome): ask the processor before any resend.
        """
        return (await self.run(refund, transaction, request_id, resolve_first=resolve_first)).refund

    async def run(self, refund: Mapping, transaction: Mapping, request_id: str | None = None, *,
                  resolve_first: bool = False, event: str = "processor_answer") -> "RunReport":
        adapter = self._adapters[refund["processor_id"]]
        request_id = request_id or new_id("req")  # background work without a request of its own
        request = refund_request(refund, transaction, request_id)
        attempts: list[Attempt] = []
        s = self._settings
        deduplicates, can_look_up = adapter.capabilities.idempotency_keys, adapter.capabilities.lookup
        retrying = processor_retrying(max_attempts=s.retry_max_attempts, max_seconds=s.retry_max_seconds,
                                      initial_backoff=s.retry_initial_backoff_seconds,
                                      max_backoff=s.retry_max_backoff_seconds,
                                      safe_to_resend=deduplicates or can_look_up, processor=adapter.id)
        answer: RefundResult | BaseException | None = None
        # An earlier call may have been carried out and nobody has said so yet.
        unresolved = resolve_first
        looked_up: RefundResult | None | str = "not asked"
        if unresolved and not can_look_up and not deduplicates:
            answer = OutcomeUnknownError("an earlier call may have been carried out, and this processor can "
                                         "neither look refunds up nor deduplicate a resend", code="unresolvable")
        elif unresolved and not can_look_up and _key_forgotten(refund, adapter):
            hours = adapter.capabilities.idempotency_key_window_seconds / 3600
            answer = OutcomeUnknownError(
                f"an earlier call may have been carried out, this processor cannot look refunds up, and the "
                f"refund was made more than {hours:g} h ago, longer than the processor keeps "
                "idempotency keys: a resend could refund twice", code="idempotency_key_expired")
        try:
            async for attempt in retrying:
                if answer is not None:
                    break
                with attempt:
                    if unresolved and can_look_up:
                        # Ask before any resend: the first call may have been carried out.
                        looked_up = await self._call(adapter.id, request, "lookup",
                                                     adapter.lookup_refund(request, refund["psp_refund_id"]), attempts)
                        if looked_up is not None:
                            unresolved = False
                            answer = looked_up
                            break
                        # "No record" is "not yet" while a request sent earlier may still land.
                        until = self._resend_after(refund, adapter, attempts)
                        if until is not None and datetime.now(timezone.utc) < until:
                            metrics.child(metrics.EXECUTION_WINDOW_WAITS, adapter.id).inc()
                            answer = ExecutionWindowOpen(until)
                            break
                        unresolved = False
                    try:
                        answer = await self._call(adapter.id, request, "refund", adapter.refund(request), attempts)
                    except OutcomeUnknownError:
                        unresolved = True
                        raise
        except ProcessorError as e:
            answer = e
        except Exception as e:  # an adapter bug must still leave the refund somewhere visible
            log.exception("adapter_error", refund_id=refund["id"], processor=refund["processor_id"])
            attempts.append(Attempt("refund", datetime.now(timezone.utc), 0, "error", "internal", None,
                                    type(e).__name__))
            answer = e
        finally:
            release(retrying)
        if isinstance(answer, ProcessorError) and unresolved and not isinstance(answer, OutcomeUnknownError):
            # The last failure came after an unknown outcome nobody resolved: that is what the refund is.
            answer = OutcomeUnknownError(f"unresolved after: {answer}", code=answer.code)
        calls = sum(1 for a in attempts if a.call == "refund")
        # The durable budget counts every processor call, look-ups included: a processor whose
        # look-ups keep failing must not keep a refund going round for ever.
        total_calls = len(attempts)
        retryable = self._retryable(answer, adapter)
        if retryable:
            async with self._pool.acquire() as conn:
                total_calls += await store.processor_calls(conn, refund["id"])
        decision = self._decision(answer, retryable, total_calls, adapter)
        sent_at = _last_sent(attempts)
        row = await self.record(refund, answer, attempts, event=event, request_id=request_id, refund_calls=calls,
                                decision=decision, current_truth=answer is looked_up,
                                lease_token=refund["lease_token"], sent_at=sent_at,
                                verify_at=self._verify_at(refund, adapter, sent_at, calls, resolve_first,
                                                          found=isinstance(looked_up, RefundResult)))
        return RunReport(row, looked_up=looked_up != "not asked",
                         found=looked_up.outcome.value if isinstance(looked_up, RefundResult) else None,
                         resent=calls > 0)

    def _timeout(self, processor_id: str) -> float:
        config = self._settings.processor(processor_id)
        return config.timeout_seconds if config is not None else _DEFAULT_TIMEOUT_SECONDS

    def _window(self, adapter: ProcessorAdapter) -> float:
        config = self._settings.processor(adapter.id)
        return config.execution_window_seconds if config is not None else _DEFAULT_WINDOW_SECONDS

    def _resend_after(self, refund: Mapping, adapter: ProcessorAdapter, attempts: list[Attempt]) -> datetime | None:
        """For a processor that cannot deduplicate a resend: the time after which no refund request
        sent so far can still be carried out (the newest send, here or before, plus the processor's
        execution window). None: nothing to wait for."""
        if adapter.capabilities.idempotency_keys:
            return None
        sent = [t for t in (refund["last_sent_at"], _last_sent(attempts)) if t is not None]
        if not sent:
            return None
        return max(sent) + timedelta(seconds=self._window(adapter) + WINDOW_MARGIN_SECONDS)

    def _verify_at(self, refund: Mapping, adapter: ProcessorAdapter, sent_at: datetime | None, calls: int,
                   maybe_sent_before: bool, found: bool = False) -> datetime | None:
        """A refund sent again to a processor that cannot deduplicate is looked up once more after
        the execution window, for a second execution (a window set too short, a clock that lied).

        A run that only looked up, and `found`, a refund an earlier run may have sent (`maybe_sent_before`:
        a lease that ran out, whose holder's answer was never recorded) counts from the refund's last
        possible send (its `last_sent_at`, which a claim of an expired lease moves to the lease's
        end): that run may have sent it twice, and nothing recorded it."""
        caps = adapter.capabilities
        if maybe_sent_before and sent_at is None and found:
            sent_at = refund["last_sent_at"]
        if caps.idempotency_keys or not caps.lookup or sent_at is None:
            return None
        if not (calls > 1 or maybe_sent_before or refund["attempts"] > 0):
            return None
        return sent_at + timedelta(seconds=self._window(adapter) + WINDOW_MARGIN_SECONDS)

    @staticmethod
    def _retryable(answer: RefundResult | BaseException, adapter: ProcessorAdapter) -> bool:
        """A fault that may still clear, and that a later round can act on without risk."""
        return isinstance(answer, TransientProcessorError) or (
            isinstance(answer, OutcomeUnknownError) and answer.code not in ("unresolvable", "idempotency_key_expired")
            and (adapter.capabilities.lookup or adapter.capabilities.idempotency_keys))

    def _decision(self, answer: RefundResult | BaseException, retryable: bool, total_calls: int,
                  adapter: ProcessorAdapter) -> ledger.Decision:
        """Where the answer takes the refund; a fault that may still clear becomes a durable retry
        (a due time on the row, not a sleeping coroutine) until the retry budget is spent:
        `total_calls` processor calls (refunds and look-ups) made for it so far."""
        decision = ledger.decide(answer)
        s = self._settings
        if not retryable:
            return decision
        if total_calls >= s.durable_retry_max_attempts:
            return replace(decision, failure_message=ledger.said(
                f"retries spent after {total_calls} processor calls: {decision.failure_message}"))
        metrics.child(metrics.DURABLE_RETRIES, adapter.id).inc()
        if isinstance(answer, ExecutionWindowOpen):
            # Looked up a few times while the window runs (a late execution is found soon after it
            # lands), and once when it has passed; each look-up spends the budget like any call.
            remaining = max(0.0, (answer.until - datetime.now(timezone.utc)).total_seconds())
            pace = max(s.durable_retry_initial_seconds,
                       (self._window(adapter) + WINDOW_MARGIN_SECONDS) / WINDOW_LOOKUPS)
            return ledger.Decision(Target(Status.PENDING, decision.target.stage), failure_code=None,
                                   failure_message=decision.failure_message, retry_in=min(remaining, pace))
        rounds = max(0, total_calls - s.retry_max_attempts)
        delay = min(s.durable_retry_max_seconds, s.durable_retry_initial_seconds * 2 ** min(rounds, 16))
        delay *= random.uniform(0.8, 1.2)  # jitter: a processor's outage must not end in a stampede
        return ledger.Decision(Target(Status.PENDING, decision.target.stage), failure_code=None,
                               failure_message=f"will retry: {decision.failure_message}", retry_in=delay)

    async def _call(self, processor_id: str, request: RefundRequest, kind: str, call: Awaitable[RefundResult | None],
                    attempts: list[Attempt]) -> RefundResult | None:
        """Await one processor call, recording it as an attempt row."""
        started_at, t0 = datetime.now(timezone.utc), time.perf_counter()
        try:
            result = await self._observed(processor_id, request, kind, call)
        except ProcessorError as e:
            attempts.append(_attempt(kind, started_at, t0, e))
            raise
        attempts.append(_attempt(kind, started_at, t0, result if result is not None else "not_found"))
        return result

    async def _observed(self, processor_id: str, request: RefundRequest, kind: str,
                        call: Awaitable[RefundResult | None]) -> RefundResult | None:
        """Await one processor call, timed into the metrics and, with tracing on, inside a client span."""
        span_cm = (self._tracing.processor_call(processor_id, kind, request.refund_id, request.request_id)
                   if self._tracing is not None else contextlib.nullcontext())
        with span_cm as span:
            t0 = time.perf_counter()
            answer: RefundResult | Exception | None
            deadline = self._timeout(processor_id)
            try:
                # The whole call, not each read: a processor trickling bytes cannot hold a lease.
                async with asyncio.timeout(deadline):
                    answer = await call
            except TimeoutError:
                message = f"no whole answer within {deadline:g} s"
                answer = (OutcomeUnknownError(message, code="deadline") if kind == "refund"
                          else TransientProcessorError(message, code="deadline"))
            except Exception as e:  # a cancellation is not a call's outcome: it passes unobserved
                answer = e
            outcome = metrics.call_outcome(answer)
            metrics.child(metrics.PROCESSOR_CALLS, processor_id, kind, outcome).observe(time.perf_counter() - t0)
            if span is not None:
                span.outcome(outcome, failed=isinstance(answer, Exception))
            if isinstance(answer, Exception):
                raise answer
            return answer

    async def _look_up(self, adapter: ProcessorAdapter, refund: Mapping,
                       request_id: str) -> tuple[RefundResult | None | ProcessorError, Attempt]:
        """One look-up outside a run (a pending check, a duplicate check): what it found, or the
        failure, and its attempt row."""
        async with self._pool.acquire() as conn:
            transaction = await store.get_transaction(conn, refund["transaction_id"])
        request = refund_request(refund, transaction, request_id)
        started_at, t0 = datetime.now(timezone.utc), time.perf_counter()
        try:
            found = await self._observed(adapter.id, request, "lookup",
                                         adapter.lookup_refund(request, refund["psp_refund_id"]))
        except ProcessorError as e:
            return e, _attempt("lookup", started_at, t0, e)
        return found, _attempt("lookup", started_at, t0, found if found is not None else "not_found")

    async def check_pending(self, refund: Mapping, request_id: str | None = None) -> asyncpg.Record:
        """Ask the processor about a refund it reported pending."""
        adapter = self._adapters[refund["processor_id"]]
        if not adapter.capabilities.lookup:
            return refund  # only the processor's webhooks can move it
        request_id = request_id or new_id("req")
        found, attempt = await self._look_up(adapter, refund, request_id)
        if isinstance(found, ProcessorError):
            async with self._pool.acquire() as conn:
                await store.insert_attempts(conn, refund["id"], [attempt])
            log.warning("pending_check_failed", refund_id=refund["id"], error_class=found.error_class)
            return refund  # the claim already scheduled the next check
        answer = found
        if found is None:
            answer = RefundResult(Outcome.NEEDS_ATTENTION,
                                  message="the processor has no record of a refund it reported pending")
            attempt = replace(attempt, outcome=answer.outcome.value, message=answer.message)
        return await self.record(refund, answer, [attempt], event="pending_checked", request_id=request_id,
                                 current_truth=True)

    async def verify(self, refund: Mapping, request_id: str | None = None) -> asyncpg.Record:
        """Look a resent refund up for a second execution; one found reopens it for attention
        (duplicate_at_processor), with every processor id of it kept. A failed look-up is tried
        again when the claim said (VERIFY_RETRY_SECONDS)."""
        adapter = self._adapters.get(refund["processor_id"])
        if adapter is None or not adapter.capabilities.lookup:
            async with self._pool.acquire() as conn:
                await store.clear_verify(conn, refund["id"])
            return refund
        request_id = request_id or new_id("req")
        found, attempt = await self._look_up(adapter, refund, request_id)
        async with self._pool.acquire() as conn, conn.transaction():
            await store.insert_attempts(conn, refund["id"], [attempt])
            if isinstance(found, ProcessorError):
                log.warning("duplicate_check_failed", refund_id=refund["id"], error_class=found.error_class)
                return refund
            await store.clear_verify(conn, refund["id"])
            if found is None or not found.duplicate_psp_refund_ids:
                log.info("duplicate_check_clean", refund_id=refund["id"], found=found is not None)
                return refund
            row, _ = await ledger.apply(conn, refund["id"], ledger.decide(found), event="duplicate_check",
                                        current_truth=True, recheck_seconds=self._settings.pending_poll_seconds,
                                        request_id=request_id)
        return row

    async def record(self, refund: Mapping, answer: RefundResult | BaseException, attempts: list[Attempt], *,
                     event: str, request_id: str | None = None, refund_calls: int = 0,
                     current_truth: bool = False, decision: ledger.Decision | None = None,
                     lease_token: int | None = None, sent_at: datetime | None = None,
                     verify_at: datetime | None = None) -> asyncpg.Record:
        """Record a processor's answer, or the lack of one, in one database transaction; a run's
        answer under its claim's `lease_token` (see ledger.apply)."""
        expect = None if isinstance(answer, RefundResult) else (refund["status"], refund["stage"])
        decision = decision or ledger.decide(answer)
        recheck = self._settings.pending_poll_seconds
        async with self._pool.acquire() as conn:
            # Most answers move the refund from where the run's claim left it: one statement, no lock
            # held before it. Anything else (it moved meanwhile, say) goes through the refund's lock.
            row = await ledger.record_unlocked(conn, refund, decision, event=event, expect=expect,
                                               current_truth=current_truth, recheck_seconds=recheck,
                                               refund_calls=refund_calls, request_id=request_id,
                                               lease_token=lease_token, sent_at=sent_at, verify_at=verify_at,
                                               calls=attempts)
            if row is not None:
                return row
            async with conn.transaction():
                row, _ = await ledger.apply(conn, refund["id"], decision, event=event, expect=expect,
                                            current_truth=current_truth, recheck_seconds=recheck,
                                            refund_calls=refund_calls, request_id=request_id,
                                            lease_token=lease_token, sent_at=sent_at, verify_at=verify_at,
                                            calls=attempts)
        return row

    async def aclose(self, grace_seconds: float) -> None:
        """Let in-flight refunds finish; what is still running after the grace period keeps its lease."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_seconds)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
                log.warning("refunds_left_in_flight", count=len(pending))
