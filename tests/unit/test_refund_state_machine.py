"""The refund state machine: which status changes are allowed, how each moves the transaction's
balance, where each processor outcome leads, and a random walk that keeps the balance honest.

The expected tables below are written out by hand, from the business rules, rather than derived
from gateway.domain.refunds: a change to the product's table must show up here as a failure.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, rule

from gateway.domain.refunds import (
    DISAGREEMENT,
    FINAL,
    REOPENED,
    TRANSITIONS,
    BalanceDelta,
    InvalidTransition,
    Outcome,
    Stage,
    Status,
    Target,
    awaits_operator,
    balance_delta,
    check_transition,
    contradicts,
    is_reversal,
    is_stale,
    target_for,
)

P, S, F = Status.PENDING, Status.SUCCEEDED, Status.FAILED
RA, RO, C = Status.REQUIRES_ATTENTION, Status.REFUNDED_OFFLINE, Status.CANCELED

ALLOWED = {
    (P, P), (P, S), (P, F), (P, RA), (P, C), (P, RO),  # an operator may settle a stuck pending refund offline
    (RA, P), (RA, S), (RA, F), (RA, C), (RA, RO), (RA, RA),
    (S, F),  # a reversal reported after success
    (F, RO),  # a declined refund paid back outside the processor (an operator's resolution)
}
ALL_PAIRS = list(itertools.product(Status, Status))
# An operator's settlement the processor contradicts (it carried the refund out after all) reopens it.
CONTRADICTIONS = {(F, S), (C, S), (RO, S)}  # (settled as, the processor says)
REOPENS = {(F, RA), (C, RA), (RO, RA),
           (S, RA)}  # a look-up found a succeeded refund carried out twice (duplicate_at_processor)

# Where a refund's amount counts on its transaction while it has this status.
RESERVED_WHILE = {P, RA}
REFUNDED_WHILE = {S, RO}


def expected_buckets(status: Status, amount: int) -> tuple[int, int]:
    """(reserved, refunded) that one refund of `amount` contributes while in `status`."""
    return (amount if status in RESERVED_WHILE else 0, amount if status in REFUNDED_WHILE else 0)


def _id(pair):
    return f"{pair[0]}->{pair[1]}"


# --- transitions ------------------------------------------------------------------------------

@pytest.mark.parametrize("pair", sorted(ALLOWED), ids=_id)
def test_allowed_transition_passes(pair):
    current, target = pair
    assert check_transition(current, target) is None


@pytest.mark.parametrize("pair", [p for p in ALL_PAIRS if p not in ALLOWED], ids=_id)
def test_any_other_transition_raises_invalid_transition(pair):
    current, target = pair
    with pytest.raises(InvalidTransition) as info:
        check_transition(current, target)
    assert (info.value.current, info.value.target) == (current, target)
    assert str(current) in str(info.value) and str(target) in str(info.value)


def test_transition_table_covers_every_status():
    assert set(TRANSITIONS) == set(Status)


def test_final_statuses_are_succeeded_failed_canceled_and_refunded_offline():
    assert FINAL == {S, F, C, RO}


@pytest.mark.parametrize("status", [C, RO])
def test_final_status_other_than_succeeded_has_no_exit(status):
    for target in Status:
        with pytest.raises(InvalidTransition):
            check_transition(status, target)


def test_a_failed_refund_can_only_be_recorded_as_refunded_offline():
    check_transition(F, RO)
    for target in set(Status) - {RO}:
        with pytest.raises(InvalidTransition):
            check_transition(F, target)


def test_succeeded_refund_can_only_become_failed():
    assert [t for t in Status if (S, t) in ALLOWED] == [F]
    check_transition(S, F)
    for target in set(Status) - {F}:
        with pytest.raises(InvalidTransition):
            check_transition(S, target)


def test_final_refund_never_goes_back_to_pending_or_attention():
    for current in FINAL:
        for target in (P, RA):
            with pytest.raises(InvalidTransition):
                check_transition(current, target)


# --- an operator's settlement that the processor contradicts ------------------------------------

@pytest.mark.parametrize("pair", ALL_PAIRS, ids=_id)
def test_only_a_processor_success_contradicts_an_operators_settlement(pair):
    assert contradicts(*pair) is (pair in CONTRADICTIONS)


@pytest.mark.parametrize("pair", ALL_PAIRS, ids=_id)
def test_a_contradicted_settlement_reopens_only_to_requires_attention(pair):
    current, target = pair
    if pair in ALLOWED | REOPENS:
        check_transition(current, target, contradicted=True)
    else:
        with pytest.raises(InvalidTransition):
            check_transition(current, target, contradicted=True)


@pytest.mark.parametrize("pair", sorted(REOPENS), ids=_id)
def test_a_settlement_never_reopens_without_a_contradiction(pair):
    with pytest.raises(InvalidTransition):
        check_transition(*pair)


def test_reopened_refund_needs_attention_with_its_amount_reserved_again():
    assert (REOPENED.status, DISAGREEMENT) == (RA, "processor_disagrees")
    assert balance_delta(F, RA, 700) == BalanceDelta(reserved=700, refunded=0)  # released, held again
    assert balance_delta(C, RA, 700) == BalanceDelta(reserved=700, refunded=0)
    assert balance_delta(RO, RA, 700) == BalanceDelta(reserved=700, refunded=-700)  # counted once, held


@pytest.mark.parametrize("status", list(Status))
def test_only_a_reopened_refund_waits_for_an_operator(status):
    assert awaits_operator(status, "processor_disagrees") is (status is RA)
    assert awaits_operator(status, "outcome_unknown") is False
    assert awaits_operator(status, None) is False


@pytest.mark.parametrize("pair", ALL_PAIRS, ids=_id)
def test_only_succeeded_to_failed_is_a_reversal(pair):
    assert is_reversal(*pair) is (pair == (S, F))


# --- snapshot order ------------------------------------------------------------------------------

T0 = datetime(2026, 1, 5, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("snapshot_at", "applied_at", "stale"), [
    (T0 - timedelta(seconds=1), T0, True),  # older than the last one applied: skipped
    (T0, T0, False),  # the same second: left to the state machine
    (T0 + timedelta(seconds=1), T0, False),
    (None, T0, False),  # no processor time (a BridgePay event): the state machine alone
    (T0, None, False),  # nothing applied from a webhook yet
    (None, None, False),
], ids=["older", "same_second", "newer", "no_snapshot_time", "none_applied_yet", "neither"])
def test_snapshot_older_than_the_last_applied_is_stale(snapshot_at, applied_at, stale):
    assert is_stale(snapshot_at, applied_at) is stale


# --- balance ----------------------------------------------------------------------------------

def test_pending_refund_that_succeeds_moves_its_amount_from_reserved_to_refunded():
    assert balance_delta(P, S, 700) == BalanceDelta(reserved=-700, refunded=700)


def test_pending_refund_that_fails_releases_its_reservation():
    assert balance_delta(P, F, 700) == BalanceDelta(reserved=-700, refunded=0)


def test_pending_refund_that_is_canceled_releases_its_reservation():
    assert balance_delta(P, C, 700) == BalanceDelta(reserved=-700, refunded=0)


def test_succeeded_refund_that_is_reversed_restores_the_refundable_amount():
    assert balance_delta(S, F, 700) == BalanceDelta(reserved=0, refunded=-700)


def test_refund_needing_attention_keeps_its_reservation():
    assert balance_delta(P, RA, 700) == BalanceDelta(reserved=0, refunded=0)


def test_refund_settled_offline_moves_its_amount_from_reserved_to_refunded():
    assert balance_delta(RA, RO, 700) == BalanceDelta(reserved=-700, refunded=700)


def test_stage_change_within_pending_moves_nothing():
    assert balance_delta(P, P, 700) == BalanceDelta(reserved=0, refunded=0)


@pytest.mark.parametrize("pair", ALL_PAIRS, ids=_id)
def test_balance_delta_moves_the_amount_from_the_old_bucket_to_the_new_one(pair):
    current, target = pair
    before, after = expected_buckets(current, 1234), expected_buckets(target, 1234)
    delta = balance_delta(current, target, 1234)
    assert (delta.reserved, delta.refunded) == (after[0] - before[0], after[1] - before[1])


# --- outcomes ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("outcome", "target"), [
    (Outcome.SUCCEEDED, Target(S, Stage.DONE)),
    (Outcome.PENDING, Target(P, Stage.PENDING_AT_PROCESSOR)),
    (Outcome.DECLINED, Target(F, Stage.DONE)),
    (Outcome.CANCELED, Target(C, Stage.DONE)),
    (Outcome.NEEDS_ATTENTION, Target(RA, Stage.OUTCOME_UNKNOWN)),
])
def test_processor_outcome_leads_to_its_status_and_stage(outcome, target):
    assert target_for(outcome) == target


def test_unmappable_answer_never_counts_as_refunded():
    target = target_for(Outcome.NEEDS_ATTENTION)
    assert target.status not in FINAL
    assert balance_delta(P, target.status, 500).refunded == 0


@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_outcome_is_reachable_from_a_pending_refund(outcome):
    check_transition(P, target_for(outcome).status)


# --- random walk ------------------------------------------------------------------------------

class RefundLifecycle(RuleBasedStateMachine):
    """Refunds on one transaction take random status changes, allowed or not.

    Allowed ones are applied through balance_delta to the transaction's reserved and refunded
    totals; refused ones must leave everything as it was. The totals are checked against a model
    that simply sums each refund's bucket for its current status.
    """

    refunds = Bundle("refunds")

    def __init__(self):
        super().__init__()
        self.amount = 0
        self.reserved = 0
        self.refunded = 0
        self.status: dict[int, Status] = {}
        self.refund_amount: dict[int, int] = {}
        self.next_id = 0

    @rule(target=refunds, data=st.data())
    def create_refund(self, data):
        if self.amount == 0:
            self.amount = data.draw(st.integers(min_value=1, max_value=10**6), label="transaction amount")
        refundable = self.amount - self.reserved - self.refunded
        if refundable <= 0:
            # The balance check refuses the command: no refund exists.
            return multiple()
        amount = data.draw(st.integers(min_value=1, max_value=refundable), label="refund amount")
        rid, self.next_id = self.next_id, self.next_id + 1
        self.status[rid], self.refund_amount[rid] = P, amount
        self.reserved += amount  # a new refund starts pending, its amount reserved
        return rid

    @rule(rid=refunds, target_status=st.sampled_from(list(Status)))
    def change_status(self, rid, target_status):
        current = self.status[rid]
        before = (self.reserved, self.refunded)
        try:
            check_transition(current, target_status)
        except InvalidTransition:
            assert (current, target_status) not in ALLOWED, f"{current}->{target_status} should be allowed"
            assert (self.reserved, self.refunded) == before
            return
        assert (current, target_status) in ALLOWED, f"{current}->{target_status} should be refused"
        delta = balance_delta(current, target_status, self.refund_amount[rid])
        if self.reserved + self.refunded + delta.reserved + delta.refunded > self.amount:
            # Released money counted again (a failed refund recorded as refunded offline after its
            # amount went to another refund): the ledger refuses it (would_over_refund).
            assert current in (F, C) and delta.refunded > 0
            return
        self.reserved += delta.reserved
        self.refunded += delta.refunded
        self.status[rid] = target_status

    @rule(rid=refunds, outcome=st.sampled_from(list(Outcome)))
    def processor_answers(self, rid, outcome):
        target = target_for(outcome).status
        current = self.status[rid]
        if (current, target) not in ALLOWED:
            with pytest.raises(InvalidTransition):
                check_transition(current, target)
            return
        check_transition(current, target)
        delta = balance_delta(current, target, self.refund_amount[rid])
        self.reserved += delta.reserved
        self.refunded += delta.refunded
        self.status[rid] = target

    @invariant()
    def totals_are_never_negative(self):
        assert self.reserved >= 0
        assert self.refunded >= 0

    @invariant()
    def totals_never_exceed_the_transaction_amount(self):
        assert self.reserved + self.refunded <= self.amount

    @invariant()
    def totals_equal_the_sum_of_each_refunds_bucket(self):
        reserved = refunded = 0
        for rid, status in self.status.items():
            r, f = expected_buckets(status, self.refund_amount[rid])
            reserved, refunded = reserved + r, refunded + f
        assert (self.reserved, self.refunded) == (reserved, refunded)


RefundLifecycle.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_refund_lifecycle_keeps_the_balance_within_the_transaction_amount = RefundLifecycle.TestCase
