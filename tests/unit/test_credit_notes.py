"""The credit note's rules, pure: what a command means given its refunds, where it stands, and how
an amount spreads over an invoice's payments."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain import credit_notes
from gateway.domain.credit_notes import Create, CreditNoteConflict, CreditNoteStatus, Existing, Part, Payment
from gateway.domain.refunds import NextAction, Status

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def part(id: str, status: Status, amount: int = 1_000, *, at: int = 0, tx: str = "tx_1", offline: bool = False,
         next_action: NextAction | None = None) -> Part:
    return Part(id, tx, status, amount, offline, T0 + timedelta(seconds=at), next_action)


def test_a_credit_note_without_refunds_makes_one():
    assert credit_notes.plan([], amount=500, offline=False) == Create(500, [])


@pytest.mark.parametrize("released", [Status.FAILED, Status.CANCELED])
def test_after_a_decline_or_a_cancel_a_command_retries_it_with_any_amount(released):
    failed = part("rf_1", released, 4_001)
    assert credit_notes.plan([failed], amount=3_000, offline=False) == Create(3_000, [failed])
    assert credit_notes.plan([failed], amount=None, offline=True) == Create(None, [failed])


@pytest.mark.parametrize("held", [Status.PENDING, Status.SUCCEEDED, Status.REQUIRES_ATTENTION,
                                  Status.REFUNDED_OFFLINE])
def test_a_live_or_refunded_credit_note_answers_the_same_ask_and_refuses_another(held):
    live = part("rf_1", held, 1_000, offline=held is Status.REFUNDED_OFFLINE)
    offline = held is Status.REFUNDED_OFFLINE
    assert credit_notes.plan([live], amount=1_000, offline=offline) == Existing([live])
    assert credit_notes.plan([live], amount=None, offline=offline) == Existing([live])
    with pytest.raises(CreditNoteConflict) as conflict:
        credit_notes.plan([live], amount=999, offline=offline)
    assert conflict.value.parts == [live]
    with pytest.raises(CreditNoteConflict):  # the same amount another way is another request
        credit_notes.plan([live], amount=1_000, offline=not offline)


def test_only_the_newest_attempt_counts_a_retried_decline_is_history():
    history = [part("rf_1", Status.FAILED, at=0), part("rf_2", Status.FAILED, at=1), part("rf_3", Status.PENDING, at=2)]
    assert [p.id for p in credit_notes.current(history)] == ["rf_3"]
    assert credit_notes.status(history) is CreditNoteStatus.REFUND_PENDING
    assert credit_notes.amounts(history) == credit_notes.Amounts(refunded=0, pending=1_000, open=0)


def test_a_credit_note_over_two_payments_retries_only_the_failed_part():
    ok = part("rf_a", Status.SUCCEEDED, 6_000, tx="tx_a")
    failed = part("rf_b", Status.FAILED, 4_000, tx="tx_b", next_action=NextAction.RETRY)
    assert credit_notes.status([ok, failed]) is CreditNoteStatus.PENDING_REFUND
    assert credit_notes.next_action([ok, failed]) is NextAction.RETRY
    assert credit_notes.plan([ok, failed], amount=10_000, offline=False) == Create(4_000, [failed])
    with pytest.raises(CreditNoteConflict):  # no more than the succeeded part: nothing left to retry
        credit_notes.plan([ok, failed], amount=6_000, offline=False)


@pytest.mark.parametrize(("statuses", "expected"), [
    ([Status.SUCCEEDED], CreditNoteStatus.REFUNDED),
    ([Status.REFUNDED_OFFLINE], CreditNoteStatus.REFUNDED_OFFLINE),
    ([Status.SUCCEEDED, Status.REFUNDED_OFFLINE], CreditNoteStatus.REFUNDED),
    ([Status.SUCCEEDED, Status.CANCELED], CreditNoteStatus.PARTIALLY_REFUNDED),
    ([Status.CANCELED], CreditNoteStatus.CANCELED),
    ([Status.FAILED], CreditNoteStatus.PENDING_REFUND),
    ([Status.FAILED, Status.PENDING], CreditNoteStatus.REFUND_PENDING),
    ([Status.PENDING, Status.REQUIRES_ATTENTION], CreditNoteStatus.REQUIRES_ATTENTION),
])
def test_the_credit_notes_status_follows_its_current_refunds(statuses, expected):
    parts = [part(f"rf_{i}", s, tx=f"tx_{i}") for i, s in enumerate(statuses)]  # made together
    assert credit_notes.status(parts) is expected


def test_allocation_takes_the_newest_payments_first_each_up_to_what_is_left():
    payments = [Payment("tx_new", 5_000), Payment("tx_mid", 0), Payment("tx_old", 4_000)]
    assert credit_notes.allocate(7_000, payments) == [("tx_new", 5_000), ("tx_old", 2_000)]
    assert credit_notes.allocate(None, payments) == [("tx_new", 5_000), ("tx_old", 4_000)]
    with pytest.raises(credit_notes.NotEnough) as short:
        credit_notes.allocate(9_001, payments)
    assert short.value.refundable == 9_000


@given(st.lists(st.integers(min_value=-10, max_value=10_000), min_size=1, max_size=6),
       st.one_of(st.none(), st.integers(min_value=1, max_value=70_000)))
def test_an_allocation_covers_the_amount_exactly_and_never_exceeds_a_payment(refundable, amount):
    payments = [Payment(f"tx_{i}", r) for i, r in enumerate(refundable)]
    available = sum(r for r in refundable if r > 0)
    try:
        shares = credit_notes.allocate(amount, payments)
    except credit_notes.NotEnough:
        assert available == 0 or (amount is not None and amount > available)
        return
    left = dict((p.id, p.refundable) for p in payments)
    assert sum(a for _, a in shares) == (available if amount is None else amount)
    assert all(0 < a <= left[tx] for tx, a in shares) and len({tx for tx, _ in shares}) == len(shares)
    # Newest first: a payment is used only when every newer one with something left is used up.
    used = [tx for tx, _ in shares]
    for tx, a in shares[:-1]:
        assert a == left[tx]
    assert used == [p.id for p in payments if p.refundable > 0][:len(used)]
