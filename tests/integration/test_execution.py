"""Recording processor answers on real Postgres: compare-and-set, balance moves, events, attempts."""

from __future__ import annotations

from datetime import datetime, timezone

from adapters.base import OutcomeUnknownError, RefundResult, TransientProcessorError
from adapters.mock import MockAdapter
from gateway import callbacks, services
from gateway.db import store
from gateway.domain.refunds import Outcome
from gateway.execution import Attempt, RefundExecutor, refund_request
from gateway.ledger import decide
from gateway.models import RefundCreate, RefundOut, TransactionCreate
from tests.conftest import make_settings


async def _refund(pool, amount=1_000):
    async with pool.acquire() as conn:
        tx, _ = await services.register_transaction(conn, TransactionCreate(
            processor="mock", psp_reference="ch_1", invoice_id="inv_1", amount=10_000, currency="EUR"))
        made = await services.create_refund(
            conn, RefundCreate(invoice_id="inv_1", amount=amount, currency="EUR"), lease_seconds=60)
    assert made.created
    return made.refund, made.transactions[made.refund["transaction_id"]]


async def _balance(pool, tx_id):
    async with pool.acquire() as conn:
        row = await store.get_transaction(conn, tx_id)
    return row["reserved_amount"], row["refunded_amount"]


async def test_creating_a_refund_reserves_its_amount_under_a_lease(pool):
    refund, tx = await _refund(pool)
    assert (refund["status"], refund["stage"]) == ("pending", "sending")
    assert refund["lease_expires_at"] is not None and refund["idempotency_key"] == refund["id"]
    assert await _balance(pool, tx["id"]) == (1_000, 0)


async def test_second_answer_for_the_same_state_does_not_move_money_twice(pool, database_url):
    refund, tx = await _refund(pool)
    executor = RefundExecutor(pool, {"mock": MockAdapter("mock")}, make_settings(database_url))
    ok = RefundResult(Outcome.SUCCEEDED, psp_refund_id="re_1")
    first = await executor.record(refund, ok, [], event="processor_answer")
    late = await executor.record(refund, RefundResult(Outcome.DECLINED, processor_code="x"), [], event="webhook")
    assert first["status"] == "succeeded" and late["status"] == "succeeded"
    assert await _balance(pool, tx["id"]) == (0, 1_000)
    assert first["lease_expires_at"] is None


async def test_failed_refund_releases_and_reversal_restores_the_balance(pool, database_url):
    refund, tx = await _refund(pool)
    executor = RefundExecutor(pool, {"mock": MockAdapter("mock")}, make_settings(database_url))
    done = await executor.record(refund, RefundResult(Outcome.SUCCEEDED), [], event="processor_answer")
    reversed_ = await executor.record(done, RefundResult(Outcome.DECLINED, processor_code="card_closed"), [],
                                      event="pending_checked", current_truth=True)
    assert reversed_["status"] == "failed" and reversed_["failure_code"] == "card_closed"
    assert await _balance(pool, tx["id"]) == (0, 0)


async def test_unknown_outcome_keeps_the_money_reserved(pool, database_url):
    refund, tx = await _refund(pool)
    executor = RefundExecutor(pool, {"mock": MockAdapter("mock")}, make_settings(database_url))
    row = await executor.record(refund, OutcomeUnknownError("timeout"), [], event="processor_answer")
    assert (row["status"], row["stage"]) == ("requires_attention", "outcome_unknown")
    assert await _balance(pool, tx["id"]) == (1_000, 0)


def test_retries_spent_on_an_unknown_outcome_stay_outcome_unknown_and_on_a_transient_fault_not_sent():
    assert decide(OutcomeUnknownError("503")).target.stage == "outcome_unknown"
    assert decide(TransientProcessorError("refused")).target.stage == "not_sent"
    assert decide(RuntimeError("bug")).failure_code == "internal_error"


async def test_webhook_that_beats_our_answer_stands_and_our_calls_still_count(pool, database_url):
    from gateway import ledger

    refund, tx = await _refund(pool)
    async with pool.acquire() as conn, conn.transaction():
        await ledger.apply(conn, refund["id"], decide(RefundResult(Outcome.SUCCEEDED, psp_refund_id="re_1")),
                           event="webhook:refund.created", current_truth=True, recheck_seconds=1)
    executor = RefundExecutor(pool, {"mock": MockAdapter("mock")}, make_settings(database_url))
    row = await executor.record(refund, RefundResult(Outcome.SUCCEEDED, psp_refund_id="re_1"), [],
                                event="processor_answer", refund_calls=2)
    assert (row["status"], row["attempts"]) == ("succeeded", 2)
    assert await _balance(pool, tx["id"]) == (0, 1_000)


async def _attempt_rows(pool, refund_id):
    async with pool.acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM refund_attempts WHERE refund_id = $1", refund_id)


def _calls(n=1):
    return [Attempt("refund", datetime.now(timezone.utc), 3, "succeeded") for _ in range(n)]


async def test_a_run_answer_is_recorded_by_one_statement_while_the_refund_is_as_its_claim_left_it(pool, database_url):
    refund, tx = await _refund(pool)
    executor = RefundExecutor(pool, {"mock": MockAdapter("mock")}, make_settings(database_url))
    done = await executor.record(refund, RefundResult(Outcome.SUCCEEDED, psp_refund_id="re_1"), _calls(),
                                 event="processor_answer", refund_calls=1, lease_token=refund["lease_token"])
    assert (done["status"], done["version"], done["attempts"]) == ("succeeded", 2, 1)
    assert await _balance(pool, tx["id"]) == (0, 1_000) and await _attempt_rows(pool, refund["id"]) == 1
    async with pool.acquire() as conn:
        types = [r["type"] for r in await conn.fetch(
            "SELECT type FROM outbox_events WHERE refund_id = $1 ORDER BY version", refund["id"])]
    assert types == ["refund.created", "refund.succeeded"]


async def test_a_callback_keeps_the_refund_as_the_billing_core_is_shown_it_and_nothing_internal(pool, database_url):
    """Both writers of a callback keep one snapshot: the statement that writes a state (a refund of no
    credit note) and ledger.publish (one of a credit note, written after the credit note's state).
    Each renders as the refund read at that version does, and neither keeps the lease or the key."""
    plain, _ = await _refund(pool, amount=100)
    async with pool.acquire() as conn:
        noted = (await services.create_refund(conn, RefundCreate(invoice_id="inv_1", credit_note_id="cn_1", amount=200,
                                                                 currency="EUR"), lease_seconds=60)).refund
    executor = RefundExecutor(pool, {"mock": MockAdapter("mock")}, make_settings(database_url))
    for refund in (plain, noted):
        done = await executor.record(refund, RefundResult(Outcome.SUCCEEDED, psp_refund_id=f"re_{refund['id']}"),
                                     _calls(), event="processor_answer", refund_calls=1,
                                     lease_token=refund["lease_token"])
        async with pool.acquire() as conn:
            events = await conn.fetch("SELECT * FROM outbox_events WHERE refund_id = $1 ORDER BY version", refund["id"])
        assert [set(e["payload"]["refund"]) for e in events] == [set(store.REFUND_SNAPSHOT_COLUMNS)] * 2
        assert {"lease_token", "idempotency_key"}.isdisjoint(store.REFUND_SNAPSHOT_COLUMNS)
        assert callbacks.event_body(events[-1])["data"] == RefundOut.from_row(done).model_dump(mode="json")
        assert events[0]["payload"]["refund"]["status"] == "pending"


async def test_a_run_answer_for_a_refund_moved_meanwhile_goes_through_the_lock(pool, database_url):
    """A webhook recorded the refund succeeded while the run's call was out: the run's late decline
    finds another version, is applied under the lock as an answer (which cannot undo a success),
    and its call is still recorded, once."""
    refund, tx = await _refund(pool)
    executor = RefundExecutor(pool, {"mock": MockAdapter("mock")}, make_settings(database_url))
    await executor.record(refund, RefundResult(Outcome.SUCCEEDED, psp_refund_id="re_1"), [], event="webhook",
                          current_truth=True)
    late = await executor.record(refund, RefundResult(Outcome.DECLINED, processor_code="x"), _calls(),
                                 event="processor_answer", refund_calls=1, lease_token=refund["lease_token"])
    assert (late["status"], late["attempts"]) == ("succeeded", 1)
    assert await _balance(pool, tx["id"]) == (0, 1_000) and await _attempt_rows(pool, refund["id"]) == 1


async def test_a_run_answer_that_would_over_refund_goes_through_the_lock_and_is_flagged(pool, database_url):
    """A dispute lost meanwhile charged back most of the payment: the success no longer fits, so the
    one statement writes nothing and `apply` flags it (would_over_refund), the money kept reserved."""
    refund, tx = await _refund(pool)
    async with pool.acquire() as conn:
        await store.charge_back(conn, tx["id"], 9_500)
    executor = RefundExecutor(pool, {"mock": MockAdapter("mock")}, make_settings(database_url))
    flagged = await executor.record(refund, RefundResult(Outcome.SUCCEEDED, psp_refund_id="re_1"), _calls(),
                                    event="processor_answer", refund_calls=1, lease_token=refund["lease_token"])
    assert (flagged["status"], flagged["failure_code"]) == ("requires_attention", "would_over_refund")
    assert await _balance(pool, tx["id"]) == (1_000, 0) and await _attempt_rows(pool, refund["id"]) == 1


async def test_a_taken_over_refund_found_by_its_look_up_is_checked_again_for_a_second_execution(pool, database_url):
    """The holder of an expired lease may have sent the refund twice, to a processor that cannot
    deduplicate, and died before recording it. The run that takes it over finds it by a look-up
    and sends nothing; the duplicate check is still due, counted from the lease's end."""
    settings = make_settings(database_url)
    adapter = MockAdapter("mock2", idempotency_keys=False)
    async with pool.acquire() as conn:
        tx, _ = await services.register_transaction(conn, TransactionCreate(
            processor="mock2", psp_reference="ch_2", invoice_id="inv_2", amount=10_000, currency="EUR"))
        made = await services.create_refund(
            conn, RefundCreate(invoice_id="inv_2", amount=1_000, currency="EUR"), lease_seconds=60)
    refund = made.refund
    await adapter.refund(refund_request(refund, tx))  # carried out; its answer never recorded
    async with pool.acquire() as conn:
        await conn.execute("UPDATE refunds SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
                           refund["id"])
        [claimed] = await store.claim_recovery(conn, 10, 60)
    assert claimed["last_sent_at"] is not None  # the expired lease's end: the latest it can have been sent
    executor = RefundExecutor(pool, {"mock2": adapter}, settings)
    report = await executor.run(claimed, tx, resolve_first=True)
    assert report.looked_up and not report.resent and report.refund["status"] == "succeeded"
    assert report.refund["verify_at"] is not None and report.refund["verify_at"] > claimed["last_sent_at"]
