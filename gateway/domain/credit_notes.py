"""The credit note, the billing core's unit: what a refund command for one means given the refunds
it already has, where it stands, and how one amount spreads over an invoice's payments."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Sequence

from gateway.domain.refunds import NextAction, Status

RELEASED = frozenset({Status.FAILED, Status.CANCELED})  # its amount is free again
LIVE = frozenset({Status.PENDING, Status.REQUIRES_ATTENTION})
REFUNDED = frozenset({Status.SUCCEEDED, Status.REFUNDED_OFFLINE})


class CreditNoteStatus(StrEnum):
    REFUND_PENDING = "refund_pending"  # an attempt is running
    PENDING_REFUND = "pending_refund"  # the last attempt failed: retry, or refund outside the processor
    REFUNDED = "refunded"
    REFUNDED_OFFLINE = "refunded_offline"
    PARTIALLY_REFUNDED = "partially_refunded"  # some of it refunded, the rest canceled
    REQUIRES_ATTENTION = "requires_attention"
    CANCELED = "canceled"  # every attempt canceled before it reached the processor


@dataclass(frozen=True, slots=True)
class Part:
    """One refund of a credit note, as far as the credit note is concerned."""

    id: str
    transaction_id: str
    status: Status
    amount: int
    offline: bool
    created_at: datetime
    next_action: NextAction | None = None


def current(parts: Sequence[Part]) -> list[Part]:
    """The refunds that say where the credit note stands: all of them but the failed or canceled
    ones that a later refund (a retry) took over. Refunds made together (one per payment) share
    their creation time, so none of them takes another over."""
    newest = max((p.created_at for p in parts), default=None)
    return [p for p in parts if p.status not in RELEASED or p.created_at == newest]


@dataclass(frozen=True, slots=True)
class Existing:
    """The command asks again for what the credit note already has: answer with it."""

    parts: list[Part]


@dataclass(frozen=True, slots=True)
class Create:
    """Make new refunds for `amount` (None: everything refundable), following `previous` (the
    released refunds they retry, newest first)."""

    amount: int | None
    previous: list[Part]


class CreditNoteConflict(Exception):
    """The command asks for something else than the credit note's live refunds already do."""

    def __init__(self, detail: str, parts: Sequence[Part]):
        super().__init__(detail)
        self.parts = list(parts)


def plan(parts: Sequence[Part], *, amount: int | None, offline: bool) -> Existing | Create:
    """What a command for a credit note means, given the refunds it has (on the payment the command
    names, or on the whole invoice). With none, or only failed or canceled ones, it makes new ones
    (a retry); asking again for the live amount the same way answers with the live refunds;
    anything else is a conflict, never a silent answer with other refunds."""
    now = current(parts)
    released = sorted((p for p in now if p.status in RELEASED), key=lambda p: p.created_at, reverse=True)
    held = [p for p in now if p.status not in RELEASED]
    if not held:
        return Create(amount, released)
    total = sum(p.amount for p in held)
    same_way = all(p.offline == offline for p in held)
    if not released and same_way and (amount is None or amount == total):
        return Existing(held)
    if released and (amount is None or amount > total):
        # The rest of a credit note spread over several payments, one of which failed.
        return Create(None if amount is None else amount - total, released)
    what = ", ".join(f"{p.id} ({p.status}, {p.amount})" for p in held)
    asked = "everything refundable" if amount is None else str(amount)
    how = " outside the processor" if offline else ""
    raise CreditNoteConflict(f"the credit note already has {what}: it cannot also be refunded {asked}{how}", held)


def status(parts: Sequence[Part]) -> CreditNoteStatus:
    now = current(parts)
    statuses = {p.status for p in now}
    if Status.REQUIRES_ATTENTION in statuses:
        return CreditNoteStatus.REQUIRES_ATTENTION
    if Status.PENDING in statuses:
        return CreditNoteStatus.REFUND_PENDING
    if Status.FAILED in statuses:
        return CreditNoteStatus.PENDING_REFUND
    if statuses <= {Status.CANCELED}:
        return CreditNoteStatus.CANCELED
    if Status.CANCELED in statuses:
        return CreditNoteStatus.PARTIALLY_REFUNDED
    return CreditNoteStatus.REFUNDED_OFFLINE if statuses == {Status.REFUNDED_OFFLINE} else CreditNoteStatus.REFUNDED


def next_action(parts: Sequence[Part]) -> NextAction:
    """The next action of the refund that holds the credit note up: one needing attention, else
    the newest failed one."""
    now = sorted(current(parts), key=lambda p: p.created_at, reverse=True)
    for wanted in (Status.REQUIRES_ATTENTION, Status.FAILED):
        for p in now:
            if p.status is wanted:
                return p.next_action or NextAction.CONTACT_SUPPORT
    return NextAction.NONE


@dataclass(frozen=True, slots=True)
class Amounts:
    refunded: int  # succeeded, or refunded outside the processor
    pending: int  # on its way, or waiting for a person
    open: int  # failed: still owed to the customer, to retry or refund outside the processor


def amounts(parts: Sequence[Part]) -> Amounts:
    now = current(parts)
    return Amounts(refunded=sum(p.amount for p in now if p.status in REFUNDED),
                   pending=sum(p.amount for p in now if p.status in LIVE),
                   open=sum(p.amount for p in now if p.status is Status.FAILED))


@dataclass(frozen=True, slots=True)
class Payment:
    id: str
    refundable: int


class NotEnough(Exception):
    def __init__(self, refundable: int):
        super().__init__(f"the invoice's payments have {refundable} left to refund")
        self.refundable = refundable


def allocate(amount: int | None, payments: Sequence[Payment]) -> list[tuple[str, int]]:
    """Spread `amount` (None: everything refundable) over `payments`, given newest first: each takes
    up to its refundable amount, in that order. Raises NotEnough when they cannot cover it."""
    available = sum(p.refundable for p in payments if p.refundable > 0)
    wanted = available if amount is None else amount
    if wanted <= 0 or wanted > available:
        raise NotEnough(available)
    shares = []
    for p in payments:
        if wanted == 0:
            break
        share = min(wanted, p.refundable)
        if share > 0:
            shares.append((p.id, share))
            wanted -= share
    return shares
