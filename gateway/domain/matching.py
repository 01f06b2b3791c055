"""Which original payment a refund command refers to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True, slots=True)
class Candidate:
    id: str
    invoice_id: str
    psp_reference: str
    processor_id: str
    currency: str
    refundable: int


class NoTransaction(Exception):
    pass


class Ambiguous(Exception):
    def __init__(self, candidates: Sequence[Candidate]):
        super().__init__("the invoice has several refundable transactions")
        self.candidates = list(candidates)


class NothingRefundable(Exception):
    def __init__(self, candidates: Sequence[Candidate]):
        super().__init__("the invoice's transactions are fully refunded")
        self.candidates = list(candidates)


def match(candidates: Sequence[Candidate], *, by_pointer: bool) -> Candidate:
    """Pick the transaction a refund command means.

    `candidates` are the transactions found by the command's pointer (transaction id or
    processor reference, `by_pointer=True`) or, without one, every transaction of the invoice.
    A pointer must name exactly one; an invoice must have exactly one refundable transaction.
    """
    if not candidates:
        raise NoTransaction()
    if by_pointer:
        if len(candidates) > 1:
            raise Ambiguous(candidates)
        return candidates[0]
    refundable = [c for c in candidates if c.refundable > 0]
    if not refundable:
        if len(candidates) == 1:
            return candidates[0]  # the balance check reports what is left
        raise NothingRefundable(candidates)
    if len(refundable) > 1:
        raise Ambiguous(refundable)
    return refundable[0]
