"""Reconciliation's comparison, pure: a processor's listing held against the gateway's refunds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from adapters.base import ProcessorRefund
from gateway.domain.reconciliation import Kind, OurRefund, compare
from gateway.domain.refunds import Outcome, Status

SINCE = datetime(2026, 11, 1, tzinfo=timezone.utc)
UNTIL = SINCE + timedelta(days=1)
NOON = SINCE + timedelta(hours=12)


def theirs(psp_id: str, amount: int = 1_000, outcome: Outcome = Outcome.SUCCEEDED, *, at=NOON,
           refund_id: str | None = None, payment: str = "ch_1") -> ProcessorRefund:
    return ProcessorRefund(psp_id, payment, amount, "EUR", outcome, at, refund_id)


def ours(id: str, psp_id: str | None, amount: int = 1_000, status: Status = Status.SUCCEEDED, *, at=NOON,
         duplicates: tuple[str, ...] = (), offline: bool = False) -> OurRefund:
    return OurRefund(id, "tx_1", "ch_1", psp_id, duplicates, status, amount, "EUR", at, offline)


def kinds(findings) -> list[tuple[Kind, str]]:
    return sorted((f.kind, f.key) for f in findings)


def test_books_that_agree_give_no_finding():
    listed = [theirs("re_1", refund_id="rf_1"), theirs("re_2", 500, Outcome.DECLINED, refund_id="rf_2")]
    mine = [ours("rf_1", "re_1"), ours("rf_2", "re_2", 500, Status.FAILED),
            ours("rf_3", None, status=Status.REFUNDED_OFFLINE, offline=True), ours("rf_4", None, status=Status.PENDING)]
    assert compare(listed, mine, since=SINCE, until=UNTIL) == []


def test_a_refund_made_at_the_processor_alone_is_missing_in_the_gateway_only_inside_the_period():
    listed = [theirs("re_dash"), theirs("re_before", at=SINCE - timedelta(minutes=5))]
    [finding] = compare(listed, [], since=SINCE, until=UNTIL)
    assert (finding.kind, finding.key, finding.listed.psp_refund_id) == (Kind.MISSING_IN_GATEWAY, "re_dash", "re_dash")


def test_a_succeeded_refund_the_processor_does_not_have_is_missing_at_processor():
    mine = [ours("rf_1", "re_1"), ours("rf_old", "re_old", at=SINCE - timedelta(hours=2))]
    assert kinds(compare([], mine, since=SINCE, until=UNTIL)) == [(Kind.MISSING_AT_PROCESSOR, "rf_1")]


def test_a_refund_found_under_our_id_only_is_matched_not_missing():
    listed = [theirs("re_1", refund_id="rf_1")]
    assert compare(listed, [ours("rf_1", None, status=Status.PENDING)], since=SINCE, until=UNTIL) == []


def test_two_executions_of_one_refund_are_a_duplicate_unless_the_gateway_flagged_it():
    listed = [theirs("re_1", refund_id="rf_1"), theirs("re_2", refund_id="rf_1")]
    [finding] = compare(listed, [ours("rf_1", "re_1")], since=SINCE, until=UNTIL)
    assert (finding.kind, finding.refund_id, len(finding.processor["executions"])) == (
        Kind.DUPLICATE_AT_PROCESSOR, "rf_1", 2)
    flagged = ours("rf_1", "re_1", status=Status.REQUIRES_ATTENTION, duplicates=("re_2",))
    assert compare(listed, [flagged], since=SINCE, until=UNTIL) == []


def test_amounts_and_final_statuses_that_disagree_are_found():
    listed = [theirs("re_1", 900, refund_id="rf_1"), theirs("re_2", refund_id="rf_2"),
              theirs("re_3", outcome=Outcome.DECLINED, refund_id="rf_3"), theirs("re_4", refund_id="rf_4")]
    mine = [ours("rf_1", "re_1"), ours("rf_2", "re_2", status=Status.FAILED), ours("rf_3", "re_3"),
            ours("rf_4", "re_4", status=Status.REFUNDED_OFFLINE)]
    assert kinds(compare(listed, mine, since=SINCE, until=UNTIL)) == [
        (Kind.AMOUNT_MISMATCH, "rf_1"), (Kind.STATUS_MISMATCH, "rf_2"), (Kind.STATUS_MISMATCH, "rf_3"),
        (Kind.STATUS_MISMATCH, "rf_4")]


def test_a_refund_still_pending_here_is_only_behind():
    listed = [theirs("re_1", refund_id="rf_1")]
    assert compare(listed, [ours("rf_1", "re_1", status=Status.PENDING)], since=SINCE, until=UNTIL) == []


def test_our_refund_known_at_the_processor_under_another_id_only_is_missing_there():
    listed = [theirs("re_real", refund_id="rf_1")]
    [finding] = compare(listed, [ours("rf_1", "re_ghost")], since=SINCE, until=UNTIL)
    assert (finding.kind, finding.key, finding.processor["executions"][0]["psp_refund_id"]) == (
        Kind.MISSING_AT_PROCESSOR, "rf_1", "re_real")
