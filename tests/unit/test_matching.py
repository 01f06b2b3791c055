"""Which original payment a refund command refers to: by a pointer, or by the invoice alone."""

from __future__ import annotations

import pytest

from gateway.domain.matching import Ambiguous, Candidate, NothingRefundable, NoTransaction, match


def tx(n: int, refundable: int = 1_000, invoice_id: str = "INV-1") -> Candidate:
    return Candidate(id=f"tx_{n}", invoice_id=invoice_id, psp_reference=f"ch_{n}", processor_id="mock",
                     currency="EUR", refundable=refundable)


# --- by pointer (transaction id or processor reference) ------------------------------------------

def test_pointer_naming_one_transaction_returns_it():
    assert match([tx(1)], by_pointer=True) == tx(1)


def test_pointer_naming_a_fully_refunded_transaction_still_returns_it():
    # The balance check, not matching, reports that nothing is left.
    assert match([tx(1, refundable=0)], by_pointer=True) == tx(1, refundable=0)


def test_pointer_naming_no_transaction_raises_no_transaction():
    with pytest.raises(NoTransaction):
        match([], by_pointer=True)


def test_pointer_naming_several_transactions_is_ambiguous_and_lists_them_all():
    candidates = [tx(1), tx(2, refundable=0), tx(3)]
    with pytest.raises(Ambiguous) as info:
        match(candidates, by_pointer=True)
    assert info.value.candidates == candidates


# --- by invoice -------------------------------------------------------------------------------

def test_invoice_with_one_refundable_transaction_returns_it():
    assert match([tx(1)], by_pointer=False) == tx(1)


def test_invoice_with_one_refundable_among_fully_refunded_ones_returns_the_refundable_one():
    candidates = [tx(1, refundable=0), tx(2, refundable=250), tx(3, refundable=0)]
    assert match(candidates, by_pointer=False) == tx(2, refundable=250)


def test_invoice_with_several_refundable_transactions_is_ambiguous_listing_only_the_refundable_ones():
    candidates = [tx(1), tx(2, refundable=0), tx(3, refundable=1)]
    with pytest.raises(Ambiguous) as info:
        match(candidates, by_pointer=False)
    assert [c.id for c in info.value.candidates] == ["tx_1", "tx_3"]


def test_invoice_with_one_fully_refunded_transaction_returns_it_for_the_balance_check_to_report():
    assert match([tx(1, refundable=0)], by_pointer=False) == tx(1, refundable=0)


def test_invoice_with_several_fully_refunded_transactions_raises_nothing_refundable():
    candidates = [tx(1, refundable=0), tx(2, refundable=0)]
    with pytest.raises(NothingRefundable) as info:
        match(candidates, by_pointer=False)
    assert info.value.candidates == candidates


def test_invoice_without_transactions_raises_no_transaction():
    with pytest.raises(NoTransaction):
        match([], by_pointer=False)


def test_negative_refundable_amount_does_not_count_as_refundable():
    candidates = [tx(1, refundable=-5), tx(2, refundable=10)]
    assert match(candidates, by_pointer=False) == tx(2, refundable=10)


def test_matching_accepts_any_sequence_and_reports_candidates_as_a_list():
    with pytest.raises(Ambiguous) as info:
        match((tx(1), tx(2)), by_pointer=False)
    assert info.value.candidates == [tx(1), tx(2)]
