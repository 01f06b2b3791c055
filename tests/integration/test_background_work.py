"""Background work on real Postgres: durable retries and the janitor, re-checks of refunds pending
at their processor, the stuck list, and retries of webhook events that failed to apply."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import pytest

from adapters.base import (
    OutcomeUnknownError,
    ProcessorProtocolError,
    RefundResult,
    RefundSnapshot,
    TransientProcessorError,
    WebhookEvent,
)
from adapters.mock import MockAdapter
from gateway import services, webhooks, worker
from gateway.db import store
from gateway.domain.refunds import Outcome
from gateway.execution import RefundExecutor
from gateway.models import RefundCreate, TransactionCreate
from tests.conftest import make_settings

LEASE = 60.0


class LookupsFail(MockAdapter):
    """A processor whose look-ups always fail: down, refusing our credentials, or answering garbage."""

    def __init__(self, id: str, error: Exception, **kwargs):
        super().__init__(id, **kwargs)
        self.error = error

    async def lookup_refund(self, request, psp_refund_id):
        raise self.error


class LookupBug(MockAdapter):
    """A processor adapter with a bug that fires when one refund is looked up."""

    def __init__(self, id: str, broken_refund_id: str, **kwargs):
        super().__init__(id, **kwargs)
        self.broken_refund_id = broken_refund_id

    async def lookup_refund(self, request, psp_refund_id):
        if request.refund_id == self.broken_refund_id:
            raise RuntimeError("adapter bug")
        return await super().lookup_refund(request, psp_refund_id)


async def new_refund(pool, amount: int, *, processor: str = "mock", total: int = 10_000):
    n = uuid.uuid4().hex[:10]
    async with pool.acquire() as conn:
        tx, _ = await services.register_transaction(conn, TransactionCreate(
            processor=processor, psp_reference=f"ch_{n}", invoice_id=f"inv_{n}", amount=total, currency="EUR"))
        made = await services.create_refund(
            conn, RefundCreate(invoice_id=f"inv_{n}", amount=amount, currency="EUR"), lease_seconds=LEASE)
    assert made.created
    return made.refund, made.transactions[made.refund["transaction_id"]]


async def sent(pool, executor: RefundExecutor, amount: int, **kwargs):
    """A refund made and sent as POST /v1/refunds does; returns it as it then is, and its payment."""
    refund, tx = await new_refund(pool, amount, **kwargs)
    return await executor.send(refund, tx), tx


async def make_due(pool, refund_id: str, *, created_hours_ago: int | None = None) -> None:
    """Due now; with `created_hours_ago`, made (and last touched) that long ago."""
    async with pool.acquire() as conn:
        await conn.execute("UPDATE refunds SET next_attempt_at = now() WHERE id = $1", refund_id)
        if created_hours_ago:
            await conn.execute("UPDATE refunds SET created_at = now() - make_interval(hours => $2), "
                               "updated_at = now() - make_interval(hours => $2) WHERE id = $1",
                               refund_id, created_hours_ago)


async def refund_row(pool, refund_id: str):
    async with pool.acquire() as conn:
        return await store.get_refund(conn, refund_id)


async def calls(pool, refund_id: str) -> list[tuple[str, str]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT call, outcome FROM refund_attempts WHERE refund_id = $1 ORDER BY id",
                                refund_id)
    return [(r["call"], r["outcome"]) for r in rows]


async def outbox(pool, refund_id: str) -> list[tuple[int, str]]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT version, type FROM outbox_events WHERE refund_id = $1 ORDER BY version",
                                refund_id)
    return [(r["version"], r["type"]) for r in rows]


# --- durable retries ---------------------------------------------------------------------------

@pytest.mark.parametrize("error", [
    OutcomeUnknownError("processor 503 on the look-up", code="503"),
    TransientProcessorError("processor unreachable", code="connect"),
    ProcessorProtocolError("processor rejected our credentials (401)", code="authentication_error"),
], ids=["5xx", "down", "401"])
async def test_lookups_that_keep_failing_spend_the_durable_budget_then_need_attention_without_callback_spam(
        pool, database_url, error):
    budget = 7
    settings = make_settings(database_url, retry_max_attempts=2, durable_retry_max_attempts=budget,
                             durable_retry_initial_seconds=10, durable_retry_max_seconds=100_000)
    executor = RefundExecutor(pool, {"mock": LookupsFail("mock", error)}, settings)
    refund, _ = await sent(pool, executor, 6002)  # the answer is lost; every look-up fails
    assert (refund["status"], refund["stage"], refund["version"]) == ("pending", "outcome_unknown", 2)

    delays, rounds = [], 0
    while refund["status"] == "pending":
        rounds += 1
        assert rounds <= budget, "the durable budget never ran out"
        await make_due(pool, refund["id"])
        assert await worker.recover_due(pool, executor, LEASE) == 1
        refund = await refund_row(pool, refund["id"])
        if refund["status"] == "pending":
            assert (refund["stage"], refund["version"]) == ("outcome_unknown", 2)  # no news, no new version
            delays.append((refund["next_attempt_at"] - datetime.now(timezone.utc)).total_seconds())

    assert (refund["status"], refund["stage"], refund["failure_code"]) == (
        "requires_attention", "outcome_unknown", "outcome_unknown")
    made = await calls(pool, refund["id"])
    assert refund["failure_message"].startswith(f"retries spent after {len(made)} processor calls")
    assert budget <= len(made) < budget + settings.retry_max_attempts
    assert made[0] == ("refund", "error") and all(call == "lookup" for call, _ in made[1:])  # never resent
    assert delays == sorted(delays) and delays[-1] > 2 * delays[0]  # the backoff grows with the calls
    assert await outbox(pool, refund["id"]) == [
        (1, "refund.created"), (2, "refund.updated"), (3, "refund.requires_attention")]


async def test_an_operator_replay_starts_a_new_budget(pool, database_url):
    from gateway import operations

    settings = make_settings(database_url, retry_max_attempts=1, durable_retry_max_attempts=2,
                             durable_retry_initial_seconds=10)
    executor = RefundExecutor(pool, {"mock": LookupsFail("mock", TransientProcessorError("down", code="connect"))},
                              settings)
    refund, _ = await sent(pool, executor, 6002)
    while refund["status"] == "pending":
        await make_due(pool, refund["id"])
        await worker.recover_due(pool, executor, LEASE)
        refund = await refund_row(pool, refund["id"])
    assert refund["status"] == "requires_attention"  # the budget is spent

    answer = await operations.replay(pool, executor, refund["id"], actor="ops", reason="processor is back",
                                     lease_seconds=LEASE, request_id=None)
    # Still down: a fresh budget means another durable try is scheduled, not straight back to attention.
    assert (answer["status"], answer["stage"]) == ("pending", "outcome_unknown")


async def test_an_unchanged_pending_recheck_bumps_no_version_and_sends_no_callback(pool, database_url):
    executor = RefundExecutor(pool, {"mock": MockAdapter("mock", pending_settle_seconds=3600)},
                              make_settings(database_url))
    refund, _ = await sent(pool, executor, 7001)
    assert (refund["stage"], refund["version"]) == ("pending_at_processor", 2)
    for _ in range(3):
        await make_due(pool, refund["id"])
        assert await worker.check_due_pending(pool, executor, LEASE) == 1
    refund = await refund_row(pool, refund["id"])
    assert (refund["stage"], refund["version"]) == ("pending_at_processor", 2)
    assert [c for c in await calls(pool, refund["id"])] == [("refund", "pending")] + [("lookup", "pending")] * 3
    assert await outbox(pool, refund["id"]) == [(1, "refund.created"), (2, "refund.updated")]


@pytest.mark.parametrize("first_sent_hours_ago, resent", [(23, True), (25, False)])
async def test_lost_answer_on_a_deduplicating_processor_without_lookup_is_resent_only_within_its_key_window(
        pool, database_url, first_sent_hours_ago, resent):
    mock = MockAdapter("mock", lookup=False)  # deduplicates on our key; 24 h window by default
    executor = RefundExecutor(pool, {"mock": mock}, make_settings(database_url, retry_max_attempts=1))
    refund, _ = await sent(pool, executor, 6001)  # executed, answer lost
    assert (refund["status"], refund["stage"]) == ("pending", "outcome_unknown")

    await make_due(pool, refund["id"], created_hours_ago=first_sent_hours_ago)
    assert await worker.recover_due(pool, executor, LEASE) == 1
    refund = await refund_row(pool, refund["id"])
    assert len(mock.executed) == 1
    if resent:
        assert refund["status"] == "succeeded"
        assert await calls(pool, refund["id"]) == [("refund", "error"), ("refund", "succeeded")]
    else:
        assert (refund["status"], refund["stage"], refund["failure_code"]) == (
            "requires_attention", "outcome_unknown", "outcome_unknown")
        assert "idempotency keys" in refund["failure_message"]
        assert await calls(pool, refund["id"]) == [("refund", "error")]


# --- the stuck list ----------------------------------------------------------------------------

async def test_a_long_open_refund_stays_stuck_after_a_recheck_and_a_janitor_round(pool, database_url):
    executor = RefundExecutor(pool, {
        "mock": MockAdapter("mock", pending_settle_seconds=3600),
        "mock2": LookupsFail("mock2", TransientProcessorError("down", code="connect"))},
        make_settings(database_url, retry_max_attempts=1, durable_retry_max_attempts=100))
    pending, _ = await sent(pool, executor, 7001)
    unknown, _ = await sent(pool, executor, 6002, processor="mock2")
    fresh, _ = await sent(pool, executor, 7001)
    assert (pending["stage"], unknown["stage"], fresh["stage"]) == (
        "pending_at_processor", "outcome_unknown", "pending_at_processor")
    for refund in (pending, unknown):
        await make_due(pool, refund["id"], created_hours_ago=48)

    assert await worker.check_due_pending(pool, executor, LEASE) == 1
    assert await worker.recover_due(pool, executor, LEASE) == 1
    async with pool.acquire() as conn:
        assert (await store.get_refund(conn, unknown["id"]))["attempts"] == 1  # a round went by
        stuck = await store.list_refunds(conn, starting_after=None, limit=10, stuck_older_than=900)
        counts = await store.stuck_counts(conn, 900)
    assert sorted(r["id"] for r in stuck) == sorted([pending["id"], unknown["id"]])
    assert counts == {"pending:pending_at_processor": 1, "pending:outcome_unknown": 1}


# --- one failure does not stop a batch; failed webhook events come back --------------------------

async def test_a_pending_check_that_fails_does_not_stop_the_rest_of_the_batch(pool, database_url):
    clock = [0.0]
    broken, _ = await new_refund(pool, 7001)
    mock = LookupBug("mock", broken["id"], pending_settle_seconds=10, clock=lambda: clock[0])
    executor = RefundExecutor(pool, {"mock": mock}, make_settings(database_url))
    async with pool.acquire() as conn:
        broken_tx = await store.get_transaction(conn, broken["transaction_id"])
    broken = await executor.send(broken, broken_tx)
    fine, _ = await sent(pool, executor, 7001)
    assert broken["stage"] == fine["stage"] == "pending_at_processor"
    async with pool.acquire() as conn:  # the broken one first in the batch
        await conn.execute("UPDATE refunds SET next_attempt_at = now() - interval '1 minute' WHERE id = $1",
                           broken["id"])
        await conn.execute("UPDATE refunds SET next_attempt_at = now() WHERE id = $1", fine["id"])
    clock[0] = 60.0  # both have settled at the processor

    assert await worker.check_due_pending(pool, executor, LEASE) == 2
    assert (await refund_row(pool, fine["id"]))["status"] == "succeeded"
    broken = await refund_row(pool, broken["id"])
    assert broken["stage"] == "pending_at_processor"
    assert broken["next_attempt_at"] > datetime.now(timezone.utc)  # checked again later


async def test_a_webhook_event_that_fails_to_apply_is_retried_with_backoff_until_it_applies(pool):
    async with pool.acquire() as conn:
        tx, _ = await services.register_transaction(conn, TransactionCreate(
            processor="mock", psp_reference="ch_held", invoice_id="inv_held", amount=10_000, currency="EUR"))
    event = WebhookEvent(event_id="evt_dashboard", type="refund.created", refunds=[RefundSnapshot(
        psp_refund_id="mre_dashboard", payment_references=[tx["psp_reference"]], amount=5_000, currency="EUR",
        outcome=Outcome.SUCCEEDED)])
    async with pool.acquire() as conn:
        await store.insert_webhook_event(conn, processor_id="mock", event_id=event.event_id, event_type=event.type,
                                         headers={}, body=b"{}", event=event.model_dump(mode="json"),
                                         match_keys=event.match_keys())
        database = await conn.fetchval("SELECT quote_ident(current_database())")
        await conn.execute(f"ALTER DATABASE {database} SET lock_timeout = '200ms'")
    await pool.expire_connections()  # every connection from now on waits for a row lock at most 200 ms

    async def row():
        async with pool.acquire() as conn:
            return await conn.fetchrow("SELECT *, extract(epoch FROM next_attempt_at - now()) AS due_in "
                                       "FROM webhook_events WHERE event_id = $1", event.event_id)

    # The payment is held by a transaction elsewhere for longer than a statement may wait: applying fails.
    async with pool.acquire() as holder:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM transactions WHERE id = $1 FOR UPDATE", tx["id"])
        backoff = []
        for attempt in (1, 2):
            assert await webhooks.process_due(pool, recheck_seconds=1) == 1
            failed = await row()
            assert (failed["status"], failed["attempts"]) == ("failed", attempt)
            assert "LockNotAvailable" in failed["last_error"]
            backoff.append(failed["due_in"])
            assert await webhooks.process_due(pool, recheck_seconds=1) == 0  # not due yet
            async with pool.acquire() as conn:
                await conn.execute("UPDATE webhook_events SET next_attempt_at = now() WHERE id = $1", failed["id"])
        await held.rollback()
    assert 1 < backoff[0] <= 2 < backoff[1] <= 4

    assert await webhooks.process_due(pool, recheck_seconds=1) == 1
    assert ((await row())["status"], (await row())["attempts"]) == ("applied", 3)
    async with pool.acquire() as conn:
        assert (await store.get_transaction(conn, tx["id"]))["refunded_amount"] == 5_000
        assert (await store.refund_by_psp_id(conn, "mock", "mre_dashboard"))["origin"] == "external"


# --- a processor success that no longer fits its payment ----------------------------------------

async def test_a_success_that_no_longer_fits_the_payment_needs_attention_and_is_never_counted(pool, database_url):
    from gateway import errors, ledger, operations

    executor = RefundExecutor(pool, {"mock": MockAdapter("mock", pending_settle_seconds=0.5)},
                              make_settings(database_url))
    first, tx = await sent(pool, executor, 7001, total=9_000)  # pending at the processor, for 0.5 s
    assert first["stage"] == "pending_at_processor"
    await operations.resolve(pool, first["id"], "failed", actor="ops", reason="no answer for days",
                             external_reference=None, request_id=None)
    async with pool.acquire() as conn:  # its amount, released, goes to another refund
        second = (await services.create_refund(conn, RefundCreate(
            invoice_id=tx["invoice_id"], amount=9_000, currency="EUR"), lease_seconds=LEASE)).refund
    assert (await executor.send(second, tx))["status"] == "succeeded"

    # The processor carried the first one out after all (a webhook says so): it needs attention.
    async with pool.acquire() as conn, conn.transaction():
        await ledger.apply(conn, first["id"], ledger.decide(RefundResult(Outcome.SUCCEEDED, "re_late")),
                           event="webhook", current_truth=True, recheck_seconds=60)
    first = await refund_row(pool, first["id"])
    assert (first["status"], first["failure_code"]) == ("requires_attention", "processor_disagrees")

    await asyncio.sleep(0.6)
    # A replay asks the processor, which says succeeded: recording that would refund 160.01 of a
    # 90.00 payment, so it stays with the operator, not in `sending` and not a 500.
    answer = await operations.replay(pool, executor, first["id"], actor="ops", reason="check",
                                     lease_seconds=LEASE, request_id=None)
    assert (answer["status"], answer["refund"]["failure_code"]) == ("requires_attention", "would_over_refund")
    async with pool.acquire() as conn:
        payment = await store.get_transaction(conn, tx["id"])
    assert payment["refunded_amount"] == 9_000  # never beyond the payment

    with pytest.raises(errors.Conflict) as refused:
        await operations.resolve(pool, first["id"], "refunded_offline", actor="ops", reason="reconciled",
                                 external_reference="BANK-1", request_id=None)
    assert refused.value.code == "would_over_refund"
    row = await operations.resolve(pool, first["id"], "failed", actor="ops", reason="customer repaid the excess",
                                   external_reference=None, request_id=None)
    assert row["status"] == "failed"
    async with pool.acquire() as conn:
        payment = await store.get_transaction(conn, tx["id"])
    assert (payment["refunded_amount"], payment["reserved_amount"]) == (9_000, 0)
