"""The refund state machine: statuses, stages, allowed transitions and their effect on the balance."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Status(StrEnum):
    PENDING = "pending"  # accepted, not final
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the processor declined (or a succeeded refund was reversed)
    REQUIRES_ATTENTION = "requires_attention"  # retries spent or outcome unknown
    REFUNDED_OFFLINE = "refunded_offline"  # paid back outside the processor (the billing core or an operator)
    CANCELED = "canceled"


class Stage(StrEnum):
    """Where a non-final refund is; each needs a different recovery."""

    NOT_SENT = "not_sent"  # safe to send
    SENDING = "sending"  # a call is in flight under a lease
    OUTCOME_UNKNOWN = "outcome_unknown"  # may have reached the processor: look up before resending
    PENDING_AT_PROCESSOR = "pending_at_processor"  # the processor accepted it, final answer later
    DONE = "done"  # nothing more to do with the processor
    AWAITING_APPROVAL = "awaiting_approval"  # over its approval threshold: nothing sent until a second person says so


class Outcome(StrEnum):
    """What one processor answer (or lookup) says about a refund."""

    SUCCEEDED = "succeeded"
    PENDING = "pending"
    DECLINED = "declined"
    CANCELED = "canceled"
    NEEDS_ATTENTION = "needs_attention"  # an answer we cannot map: never treated as success


class NextAction(StrEnum):
    """What the billing core can do about a failed or stuck refund (each processor maps its codes)."""

    RETRY = "retry"  # a new attempt may succeed: processor down, merchant balance short, rate limited
    REFUND_OFFLINE = "refund_offline"  # the card cannot take it: closed or expired card, payment too old, voided
    CONTACT_SUPPORT = "contact_support"  # the processor disagrees, a duplicate, an answer nobody can read
    NONE = "none"  # nothing to do: the refund is on its way or done


class Bucket(StrEnum):
    """Where a refund's amount counts on its transaction."""

    RESERVED = "reserved"
    REFUNDED = "refunded"
    RELEASED = "released"


BUCKET = {
    Status.PENDING: Bucket.RESERVED,
    Status.REQUIRES_ATTENTION: Bucket.RESERVED,  # money may have moved: keep it reserved
    Status.SUCCEEDED: Bucket.REFUNDED,
    Status.REFUNDED_OFFLINE: Bucket.REFUNDED,
    Status.FAILED: Bucket.RELEASED,
    Status.CANCELED: Bucket.RELEASED,
}

# Allowed status changes. A same-status move (pending -> pending) is a stage change.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset(
        {Status.PENDING, Status.SUCCEEDED, Status.FAILED, Status.REQUIRES_ATTENTION, Status.CANCELED,
         Status.REFUNDED_OFFLINE}  # an operator settles a refund stuck pending outside the processor
    ),
    Status.REQUIRES_ATTENTION: frozenset(
        {Status.PENDING, Status.SUCCEEDED, Status.FAILED, Status.CANCELED, Status.REFUNDED_OFFLINE,
         Status.REQUIRES_ATTENTION}
    ),
    # A processor can fail a refund after reporting success (a reversal); a look-up can find it
    # carried out twice (reopened for attention, DUPLICATE).
    Status.SUCCEEDED: frozenset({Status.FAILED, Status.REQUIRES_ATTENTION}),
    # Final, but an operator's settlement reopens when the processor contradicts it (CONTRADICTED_BY);
    # a declined refund paid back outside the processor is recorded so (only a person says that).
    Status.FAILED: frozenset({Status.REQUIRES_ATTENTION, Status.REFUNDED_OFFLINE}),
    Status.CANCELED: frozenset({Status.REQUIRES_ATTENTION}),
    Status.REFUNDED_OFFLINE: frozenset({Status.REQUIRES_ATTENTION}),
}

FINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELED, Status.REFUNDED_OFFLINE})


class InvalidTransition(Exception):
    def __init__(self, current: Status, target: Status):
        super().__init__(f"a {current} refund cannot become {target}")
        self.current, self.target = current, target


@dataclass(frozen=True, slots=True)
class BalanceDelta:
    reserved: int
    refunded: int


def check_transition(current: Status, target: Status, *, contradicted: bool = False) -> None:
    """Raises InvalidTransition unless the table allows the move. A final refund reopens only when
    `contradicted`: the processor's answer contradicts an operator's settlement of it."""
    reopens = current in FINAL and target not in FINAL
    if target not in TRANSITIONS[current] or (reopens and not contradicted):
        raise InvalidTransition(current, target)


def is_reversal(current: Status, target: Status) -> bool:
    """A refund the processor reported succeeded, failed afterwards: its money came back."""
    return current is Status.SUCCEEDED and target is Status.FAILED


def is_stale(snapshot_at: datetime | None, last_applied_at: datetime | None) -> bool:
    """Whether a processor's snapshot is older than the last one applied to the refund (webhooks
    arrive out of order). Processors stamp whole seconds: a tie is left to the state machine."""
    return snapshot_at is not None and last_applied_at is not None and snapshot_at < last_applied_at


def balance_delta(current: Status, target: Status, amount: int) -> BalanceDelta:
    """How a transition moves the refund's amount between its transaction's reserved and refunded totals."""
    reserved = refunded = 0
    for bucket, sign in ((BUCKET[current], -1), (BUCKET[target], +1)):
        if bucket is Bucket.RESERVED:
            reserved += sign * amount
        elif bucket is Bucket.REFUNDED:
            refunded += sign * amount
    return BalanceDelta(reserved, refunded)


@dataclass(frozen=True, slots=True)
class Target:
    status: Status
    stage: Stage


OUTCOME_TARGET = {
    Outcome.SUCCEEDED: Target(Status.SUCCEEDED, Stage.DONE),
    Outcome.PENDING: Target(Status.PENDING, Stage.PENDING_AT_PROCESSOR),
    Outcome.DECLINED: Target(Status.FAILED, Stage.DONE),
    Outcome.CANCELED: Target(Status.CANCELED, Stage.DONE),
    Outcome.NEEDS_ATTENTION: Target(Status.REQUIRES_ATTENTION, Stage.OUTCOME_UNKNOWN),
}


def target_for(outcome: Outcome) -> Target:
    return OUTCOME_TARGET[outcome]


# An operator's settlement and the processor answers that contradict it: the processor carried
# out a refund the operator released as failed or canceled (its amount could be refunded again),
# or one the operator refunded offline (refunded twice). Such an answer is never dropped: the
# refund reopens as requires_attention (`processor_disagrees`), its amount reserved again, until
# an operator sorts it out. Anything else the processor says after a settlement changes nothing.
CONTRADICTED_BY: dict[Status, frozenset[Status]] = {
    Status.FAILED: frozenset({Status.SUCCEEDED}),
    Status.CANCELED: frozenset({Status.SUCCEEDED}),
    Status.REFUNDED_OFFLINE: frozenset({Status.SUCCEEDED}),
}
REOPENED = Target(Status.REQUIRES_ATTENTION, Stage.DONE)  # nothing is due at the processor: a person is
DISAGREEMENT = "processor_disagrees"  # the reopened refund's failure code
# A success that would take the payment's refunded total beyond its amount (money went out that
# the ledger had given to another refund): recorded as needing attention, never as refunded.
OVER_REFUND = "would_over_refund"
# The processor carried the refund out more than once (a request it executed late, after a resend):
# money went out twice. Found by a look-up; the refund reopens for attention whatever it was.
DUPLICATE = "duplicate_at_processor"


def contradicts(settled: Status, answer: Status) -> bool:
    """Whether a processor's answer contradicts an operator's settlement `settled`."""
    return answer in CONTRADICTED_BY.get(settled, frozenset())


def awaits_operator(status: Status, failure_code: str | None) -> bool:
    """A refund reopened by a disagreement moves only by an operator's hand (a replay asks the
    processor; a resolution settles it): processor answers meanwhile would hide the dispute."""
    return status is Status.REQUIRES_ATTENTION and failure_code in (DISAGREEMENT, OVER_REFUND, DUPLICATE)
