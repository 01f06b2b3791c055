"""Reconciliation, pure: the gateway's refunds held against a processor's listing of a period, refund
by refund. Each disagreement is a finding with both sides' facts; nothing here moves money."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Sequence

from adapters.base import ProcessorRefund
from gateway.domain.refunds import Outcome, Status


class Kind(StrEnum):
    MISSING_IN_GATEWAY = "missing_in_gateway"  # the processor made a refund the gateway never recorded
    MISSING_AT_PROCESSOR = "missing_at_processor"  # the gateway counts a refund the processor does not have
    DUPLICATE_AT_PROCESSOR = "duplicate_at_processor"  # one of our refunds carried out more than once
    AMOUNT_MISMATCH = "amount_mismatch"
    STATUS_MISMATCH = "status_mismatch"


@dataclass(frozen=True, slots=True)
class OurRefund:
    id: str
    transaction_id: str
    payment_reference: str
    psp_refund_id: str | None
    duplicate_psp_refund_ids: tuple[str, ...]
    status: Status
    amount: int
    currency: str
    created_at: datetime
    offline: bool = False


@dataclass(frozen=True, slots=True)
class Finding:
    kind: Kind
    key: str  # what it is about, so that a later run finding the same thing adds nothing
    refund_id: str | None
    transaction_id: str | None
    psp_refund_id: str | None
    gateway: dict[str, Any] | None
    processor: dict[str, Any] | None
    listed: ProcessorRefund | None = field(default=None, compare=False)  # for one missing in the gateway


# The processor's final word against ours: a disagreement on where the money is.
_THEIRS = {Outcome.SUCCEEDED: Status.SUCCEEDED, Outcome.DECLINED: Status.FAILED, Outcome.CANCELED: Status.CANCELED}
_MONEY_OUT = frozenset({Status.SUCCEEDED, Status.REFUNDED_OFFLINE})


def ours_facts(r: OurRefund) -> dict[str, Any]:
    return {"refund_id": r.id, "transaction_id": r.transaction_id, "payment_reference": r.payment_reference,
            "psp_refund_id": r.psp_refund_id, "status": r.status.value, "amount": r.amount, "currency": r.currency,
            "created_at": r.created_at.isoformat()}


def theirs_facts(p: ProcessorRefund) -> dict[str, Any]:
    return {"psp_refund_id": p.psp_refund_id, "payment_reference": p.payment_reference,
            "status": p.outcome.value, "amount": p.amount, "currency": p.currency, "created": p.created.isoformat(),
            "refund_id": p.refund_id, "kind": p.kind}


def compare(listed: Sequence[ProcessorRefund], ours: Sequence[OurRefund], *, since: datetime,
            until: datetime) -> list[Finding]:
    """Findings for [since, until). `listed` may reach beyond the period (clocks and creation times
    differ between the two books): a refund of ours made in the period is looked for in all of it,
    and only the processor's refunds made in the period count as missing in the gateway."""
    by_psp_id = {r.psp_refund_id: r for r in ours if r.psp_refund_id}
    known_duplicates = {d for r in ours for d in r.duplicate_psp_refund_ids}
    by_id = {r.id: r for r in ours}
    findings: list[Finding] = []
    executions: dict[str, list[ProcessorRefund]] = defaultdict(list)
    for p in listed:
        mine = by_psp_id.get(p.psp_refund_id)
        if mine is None and p.psp_refund_id in known_duplicates:
            continue  # a second execution the gateway already flagged
        if mine is None and p.refund_id in by_id:
            mine = by_id[p.refund_id]
            if mine.psp_refund_id is not None:  # our id on another of its refunds: carried out twice
                executions[mine.id].append(p)
                continue
        if mine is None:
            if since <= p.created < until:
                findings.append(Finding(Kind.MISSING_IN_GATEWAY, p.psp_refund_id, None, None, p.psp_refund_id,
                                        None, theirs_facts(p), listed=p))
            continue
        executions[mine.id].append(p)
        if p.amount != mine.amount:
            findings.append(Finding(Kind.AMOUNT_MISMATCH, mine.id, mine.id, mine.transaction_id, p.psp_refund_id,
                                    ours_facts(mine), theirs_facts(p)))
        theirs = _THEIRS.get(p.outcome)
        if theirs is not None and _disagree(mine.status, theirs):
            findings.append(Finding(Kind.STATUS_MISMATCH, mine.id, mine.id, mine.transaction_id, p.psp_refund_id,
                                    ours_facts(mine), theirs_facts(p)))
    for refund_id, runs in executions.items():
        mine = by_id[refund_id]
        carried_out = [p for p in runs if p.outcome is Outcome.SUCCEEDED]
        if len(carried_out) > 1:
            findings.append(Finding(Kind.DUPLICATE_AT_PROCESSOR, mine.id, mine.id, mine.transaction_id,
                                    mine.psp_refund_id, ours_facts(mine),
                                    {"executions": [theirs_facts(p) for p in carried_out]}))
        elif (mine.status is Status.SUCCEEDED and mine.psp_refund_id is not None and since <= mine.created_at < until
              and mine.psp_refund_id not in {p.psp_refund_id for p in runs}):
            # The processor knows our refund under another id, and nothing under the gateway's.
            findings.append(Finding(Kind.MISSING_AT_PROCESSOR, mine.id, mine.id, mine.transaction_id,
                                    mine.psp_refund_id, ours_facts(mine),
                                    {"executions": [theirs_facts(p) for p in runs]}))
    for r in ours:
        if (r.status is Status.SUCCEEDED and not r.offline and since <= r.created_at < until
                and r.id not in executions):
            findings.append(Finding(Kind.MISSING_AT_PROCESSOR, r.id, r.id, r.transaction_id, r.psp_refund_id,
                                    ours_facts(r), None))
    return findings


def _disagree(ours: Status, theirs: Status) -> bool:
    """Final against final, on whether money went out; a refund still pending here is only behind."""
    if ours in (Status.PENDING, Status.REQUIRES_ATTENTION):
        return False
    return (ours in _MONEY_OUT) != (theirs in _MONEY_OUT) or (ours is Status.REFUNDED_OFFLINE
                                                             and theirs is Status.SUCCEEDED)
