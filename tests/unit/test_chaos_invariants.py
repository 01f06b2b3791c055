"""The chaos run's invariant checks find what they are there to find (a check that cannot fail
would let a chaos run pass whatever happened)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from tests.chaos import invariants
from tests.chaos.billing import Command
from tests.chaos.invariants import ProcessorRefund

NOW = datetime.now(timezone.utc)
TX = {"id": "tx_1", "processor_id": "stripe", "psp_reference": "ch_1", "amount": 1_000, "refunded_amount": 600,
      "reserved_amount": 0}


def refund(id: str, amount: int, status: str = "succeeded", **extra) -> dict:
    return {"id": id, "transaction_id": "tx_1", "amount": amount, "status": status, "stage": "done",
            "failure_code": None, "failure_message": None, "version": 2, **extra}


def at_stripe(refund_id: str | None, amount: int, succeeded: bool = True) -> ProcessorRefund:
    return ProcessorRefund("stripe", "ch_1", refund_id, amount, succeeded)


def test_books_that_agree_pass():
    refunds = [refund("re_1", 400), refund("re_2", 200), refund("re_3", 300, "failed")]
    assert invariants.money([TX], refunds, [at_stripe("re_1", 400), at_stripe("re_2", 200),
                                            at_stripe("re_3", 300, succeeded=False)]) == []


def test_a_refund_executed_twice_at_the_processor_is_found():
    refunds = [refund("re_1", 300), refund("re_2", 300)]
    found = invariants.money([TX], refunds, [at_stripe("re_1", 300), at_stripe("re_1", 300)])
    assert found == ["refund re_1 executed 2 times at the processor"]  # the totals agree: only the count shows it


def test_a_refund_executed_twice_and_left_succeeded_is_found():
    refunds = [refund("re_1", 300)]
    found = invariants.duplicates_flagged(refunds, [at_stripe("re_1", 300), at_stripe("re_1", 300)])
    assert found == ["refund re_1 executed 2 times at the processor but is succeeded (None)"]


def test_a_refund_executed_twice_and_flagged_passes_both_checks():
    flagged = refund("re_1", 300, "requires_attention", failure_code="duplicate_at_processor")
    books = [at_stripe("re_1", 300), at_stripe("re_1", 300)]
    assert invariants.duplicates_flagged([flagged], books) == []
    assert invariants.money([{**TX, "refunded_amount": 0, "reserved_amount": 300}], [flagged], books) == []


def test_a_refund_flagged_as_a_duplicate_that_ran_once_is_found():
    flagged = refund("re_1", 300, "requires_attention", failure_code="duplicate_at_processor")
    assert invariants.duplicates_flagged([flagged], [at_stripe("re_1", 300)]) == [
        "refund re_1 is flagged duplicate_at_processor but ran 1 time(s)"]


def test_money_moved_at_the_processor_that_the_gateway_does_not_count_is_found():
    found = invariants.money([TX], [refund("re_1", 600)], [at_stripe("re_1", 600), at_stripe(None, 100)])
    assert found == ["tx_1 (stripe ch_1): processor refunded 700, gateway succeeded 600, transaction "
                     "refunded_amount 600"]


def test_an_over_refunded_transaction_is_found():
    tx = {**TX, "refunded_amount": 900, "reserved_amount": 200}
    found = invariants.money([tx], [refund("re_1", 900)], [at_stripe("re_1", 900)])
    assert any("over-refunded" in v for v in found)


def test_a_refund_left_pending_or_needing_attention_without_a_reason_is_found():
    refunds = [refund("re_1", 1, "pending", stage="outcome_unknown"), refund("re_2", 1, "requires_attention"),
               refund("re_3", 1, "requires_attention", failure_code="retries_exhausted"), refund("re_4", 1)]
    assert [v.split()[1] for v in invariants.final_states(refunds)] == ["re_1", "re_2"]


def test_a_webhook_sent_but_not_stored_or_given_up_on_is_found():
    deliveries = [{"id": "whd_1", "event_id": "evt_1", "status": "delivered", "attempts": 1},
                  {"id": "whd_2", "event_id": "evt_2", "status": "failed", "attempts": 60}]
    found = invariants.webhooks(["evt_1", "evt_2"], deliveries, [{"event_id": "evt_1"}])
    assert found == ["event evt_2 was sent but is not stored", "delivery whd_2 of evt_2 ended failed after 60 attempts"]


def test_a_state_change_the_billing_core_never_heard_of_is_found():
    refunds = [refund("re_1", 600)]
    outbox = [{"refund_id": "re_1", "version": 1, "delivered_at": NOW},
              {"refund_id": "re_1", "version": 2, "delivered_at": None}]
    found = invariants.callbacks(refunds, outbox, {"re_1": {1}}, {"re_1": (1, "pending")})
    assert found == ["callback re_1 v2 never delivered", "refund re_1: versions [2] never reached the billing core",
                     "refund re_1 is succeeded but the billing core last heard (1, 'pending')"]
    assert invariants.callbacks(refunds, [{**outbox[1], "delivered_at": NOW}, outbox[0]], {"re_1": {1, 2}},
                                {"re_1": (2, "succeeded")}) == []


def test_duplicates_answered_differently_and_two_refunds_for_one_credit_note_are_found():
    body = {"credit_note_id": "CN-1"}
    commands = [Command("tx_1", body, "k1", "partial", 201, "re_1"), Command("tx_1", body, "k1", "same_key", 201, "re_2"),
                Command("tx_1", body, "k2", "same_credit_note", 201, "re_2"),
                Command("tx_1", {"credit_note_id": "CN-2"}, "k3", "partial", None)]
    rows = {"re_1": {"id": "re_1", "status": "succeeded", "created_at": NOW},
            "re_2": {"id": "re_2", "status": "pending", "created_at": NOW + timedelta(seconds=1),
                     "previous_refund_id": None}}
    found = invariants.answers(commands, rows)
    assert "command k3 (partial) never got a final answer" in found
    assert any(v.startswith("Idempotency-Key k1 answered differently") for v in found)
    assert "credit note CN-1 has 2 refunds that are not retries: ['re_1', 're_2']" in found
    clean = [Command("tx_1", body, "k1", "partial", 201, "re_1"), Command("tx_1", body, "k1", "same_key", 201, "re_1"),
             Command("tx_1", body, "k2", "same_credit_note", 409, None, "conflict")]
    assert invariants.answers(clean, rows) == []
    # A retry of a declined refund, naming it, is the credit note's second refund by design.
    retried = {"re_1": {**rows["re_1"], "status": "failed"}, "re_2": {**rows["re_2"], "previous_refund_id": "re_1"}}
    retry = [Command("tx_1", body, "k1", "partial", 201, "re_1"),
             Command("tx_1", body, "k2", "same_credit_note", 201, "re_2")]
    assert invariants.answers(retry, retried) == []


def _load(**overrides) -> dict:
    """A run that did what it set out to do; each test takes one thing away."""
    body = {"credit_note_id": "CN-1"}
    txs = [TX, {**TX, "id": "tx_2", "processor_id": "bridgepay", "psp_reference": "bp_1"}]
    values = dict(commands=[Command("tx_1", body, f"k{n}", "partial", 201, f"re_{n}") for n in range(3)],
                  minimum_commands=2, processors=("stripe", "bridgepay"), transactions=txs,
                  refunds=[refund("re_1", 600), refund("re_2", 100, transaction_id="tx_2")],
                  faults_fired={"stripe drop": 2, "bridgepay network": 1}, faults_expected=["stripe drop",
                                                                                           "bridgepay network"],
                  webhooks_stored=4, kills=1, kills_in_flight=1)
    return {**values, **overrides}


def test_a_run_that_sent_its_load_passes_the_load_check():
    assert invariants.load_happened(**_load()) == []


def test_a_run_that_sent_nothing_fails_the_load_check_though_every_other_check_passes():
    empty = _load(commands=[], transactions=[], refunds=[], faults_fired={}, webhooks_stored=0, kills_in_flight=0)
    assert invariants.money([], [], []) == invariants.final_states([]) == invariants.answers([], {}) == []
    assert invariants.load_happened(**empty) == [
        "0 refund commands sent, fewer than the 2 expected", "no refund succeeded at stripe",
        "no refund succeeded at bridgepay", "fault 'stripe drop' never fired", "fault 'bridgepay network' never fired",
        "no webhook event was stored", "none of the 1 kills of the gateway happened with refund commands in flight"]


def test_each_missing_part_of_the_load_is_found_on_its_own():
    assert invariants.load_happened(**_load(minimum_commands=4)) == [
        "3 refund commands sent, fewer than the 4 expected"]
    failed_at_bridgepay = [refund("re_1", 600), refund("re_2", 100, "failed", transaction_id="tx_2")]
    assert invariants.load_happened(**_load(refunds=failed_at_bridgepay)) == ["no refund succeeded at bridgepay"]
    assert invariants.load_happened(**_load(faults_fired={"stripe drop": 2, "bridgepay network": 0})) == [
        "fault 'bridgepay network' never fired"]
    assert invariants.load_happened(**_load(webhooks_stored=0)) == ["no webhook event was stored"]
    assert invariants.load_happened(**_load(kills_in_flight=0)) == [
        "none of the 1 kills of the gateway happened with refund commands in flight"]


def test_a_short_run_expects_no_fault_and_a_run_without_kills_no_kill():
    assert invariants.load_happened(**_load(faults_fired={}, faults_expected=[], kills=0, kills_in_flight=0)) == []
