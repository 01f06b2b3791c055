"""The simulated account: charges, payment intents, refunds and events, and the rules Stripe
applies to them. Pure state, no I/O; every change appends events for the webhook deliverer."""

from __future__ import annotations

import copy
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from adapters.stripe_sim.disputes import Disputes
from adapters.stripe_sim.errors import StripeError, missing

Obj = dict[str, Any]
REFUND_REASONS = frozenset({"duplicate", "fraudulent", "requested_by_customer"})
FAILURE_REASONS = frozenset({"lost_or_stolen_card", "expired_or_canceled_card", "charge_for_pending_refund_disputed",
                             "insufficient_funds", "declined", "merchant_request", "unknown"})


@dataclass
class RefundBehaviour:
    """What a new refund does: `succeeded` at once (Stripe's usual card refund), `pending` until settled
    (by a control call, or after `settle_after_seconds` to `settle_to`), `failed` at once, or
    `requires_action` until canceled (POST /v1/refunds/{id}/cancel)."""

    status: str = "succeeded"
    settle_after_seconds: float | None = None
    settle_to: str = "succeeded"
    failure_reason: str = "expired_or_canceled_card"

    def __post_init__(self) -> None:
        if self.settle_after_seconds is not None:
            self.settle_after_seconds = float(self.settle_after_seconds)
        if self.status not in ("succeeded", "pending", "failed", "requires_action") \
                or self.settle_to not in ("succeeded", "failed"):
            raise ValueError("status is succeeded|pending|failed|requires_action and settle_to is succeeded|failed")
        if self.failure_reason not in FAILURE_REASONS:
            raise ValueError(f"failure_reason is one of {sorted(FAILURE_REASONS)}")


class World:
    def __init__(self, new_id: Callable[[str], str], api_version: str, on_event: Callable[[Obj], None]):
        self._new_id, self._api_version, self._on_event = new_id, api_version, on_event
        self.charges: dict[str, Obj] = {}
        self.payment_intents: dict[str, Obj] = {}
        self.refunds: dict[str, Obj] = {}  # insertion order is creation order
        self.events: dict[str, Obj] = {}
        self.disputes = Disputes(new_id, self._emit, self.charge)
        # Refund objects created per charge: the count tests use to prove nothing ran twice.
        self.refund_executions: Counter[str] = Counter()

    # -- payments -------------------------------------------------------------------------------

    def create_charge(self, amount: int, currency: str, metadata: dict[str, str], description: str | None,
                      payment_intent: str | None = None) -> Obj:
        charge = {"id": self._new_id("ch"), "object": "charge", "amount": amount, "amount_captured": amount,
                  "amount_refunded": 0, "captured": True, "created": _now(), "currency": currency,
                  "description": description, "disputed": False, "livemode": False, "metadata": metadata,
                  "paid": True, "payment_intent": payment_intent, "refunded": False, "status": "succeeded"}
        self.charges[charge["id"]] = charge
        self._emit("charge.succeeded", self.charge_view(charge))
        return charge

    def create_payment_intent(self, amount: int, currency: str, metadata: dict[str, str],
                              description: str | None) -> Obj:
        # No customers or payment methods here: every intent is confirmed and captured at once.
        intent = {"id": self._new_id("pi"), "object": "payment_intent", "amount": amount, "amount_received": amount,
                  "capture_method": "automatic", "created": _now(), "currency": currency,
                  "description": description, "latest_charge": None, "livemode": False, "metadata": metadata,
                  "status": "succeeded"}
        self.payment_intents[intent["id"]] = intent
        # Stripe copies the intent's metadata onto its charge.
        charge = self.create_charge(amount, currency, dict(metadata), description, intent["id"])
        intent["latest_charge"] = charge["id"]
        self._emit("payment_intent.succeeded", intent)
        return intent

    def charge(self, id: str, param: str = "id") -> Obj:
        if id not in self.charges:
            raise missing("charge", id, param)
        return self.charges[id]

    def payment_intent(self, id: str, param: str = "id") -> Obj:
        if id not in self.payment_intents:
            raise missing("payment_intent", id, param)
        return self.payment_intents[id]

    def charge_view(self, charge: Obj) -> Obj:
        refunds = self.list_refunds(charge=charge["id"], limit=100)
        url = f"/v1/charges/{charge['id']}/refunds"
        return {**charge, "refunds": {**refunds, "url": url, "total_count": len(refunds["data"])}}

    # -- refunds --------------------------------------------------------------------------------

    def create_refund(self, *, charge_id: str | None, payment_intent_id: str | None, amount: int | None,
                      reason: str | None, metadata: dict[str, str], behaviour: RefundBehaviour) -> Obj:
        if payment_intent_id is not None:
            charge = self.charge(self.payment_intent(payment_intent_id, "payment_intent")["latest_charge"])
        else:
            charge = self.charge(charge_id or "", "charge")
        self.disputes.refuse_refund(charge)
        left = charge["amount"] - charge["amount_refunded"]
        if left <= 0:
            raise StripeError(400, "invalid_request_error", f"Charge {charge['id']} has already been refunded.",
                              code="charge_already_refunded")
        if amount is None:
            amount = left
        elif amount > left:
            raise StripeError(400, "invalid_request_error",
                              f"Refund amount ({_money(amount, charge)}) is greater than unrefunded amount "
                              f"on charge ({_money(left, charge)})", code="amount_too_large", param="amount")
        failed = behaviour.status == "failed"
        refund = {"id": self._new_id("re"), "object": "refund", "amount": amount, "balance_transaction": None,
                  "charge": charge["id"], "created": _now(), "currency": charge["currency"],
                  "failure_reason": behaviour.failure_reason if failed else None, "metadata": metadata,
                  "payment_intent": charge["payment_intent"], "pending_reason": None, "reason": reason,
                  "receipt_number": None, "status": behaviour.status}
        if refund["status"] == "pending":
            refund["pending_reason"] = "processing"
        self.refunds[refund["id"]] = refund
        self.refund_executions[charge["id"]] += 1
        self._emit("refund.created", refund)
        if failed:
            self._emit("refund.failed", refund)
        else:
            # Pending (and requires_action) refunds count against the charge at once, as at Stripe.
            self._set_refunded(charge, charge["amount_refunded"] + amount)
            self._emit("charge.refunded", self.charge_view(charge))
        return refund

    def refund(self, id: str) -> Obj:
        if id not in self.refunds:
            raise missing("refund", id)
        return self.refunds[id]

    def settle(self, id: str, to: str, failure_reason: str = "expired_or_canceled_card") -> Obj:
        """A pending refund reaches its final status."""
        refund = self.refund(id)
        if refund["status"] != "pending":
            raise ValueError(f"refund {id} is {refund['status']}, not pending")
        if to == "failed":
            return self.fail(id, failure_reason)
        self._update(refund, status="succeeded", pending_reason=None)
        return refund

    def fail(self, id: str, failure_reason: str = "expired_or_canceled_card") -> Obj:
        """A pending or even succeeded refund fails (Stripe does this, e.g. for a closed card): the
        amount becomes refundable again."""
        if failure_reason not in FAILURE_REASONS:
            raise ValueError(f"failure_reason is one of {sorted(FAILURE_REASONS)}")
        refund = self.refund(id)
        if refund["status"] not in ("pending", "succeeded"):
            raise ValueError(f"refund {id} is {refund['status']}, it cannot fail")
        charge = self.charges[refund["charge"]]
        self._set_refunded(charge, charge["amount_refunded"] - refund["amount"])
        self._update(refund, status="failed", failure_reason=failure_reason, pending_reason=None, failed=True)
        return refund

    def require_action(self, id: str) -> Obj:
        """A pending refund waits for the customer (Stripe: a non-card refund that needs their
        details); its amount stays counted against the charge until it is canceled."""
        refund = self.refund(id)
        if refund["status"] != "pending":
            raise ValueError(f"refund {id} is {refund['status']}, not pending")
        self._update(refund, status="requires_action", pending_reason=None)
        return refund

    def cancel(self, id: str) -> Obj:
        """POST /v1/refunds/{id}/cancel: only a requires_action refund; the amount becomes refundable again."""
        refund = self.refund(id)
        if refund["status"] != "requires_action":
            raise StripeError(400, "invalid_request_error", f"Refund {id} has a status of {refund['status']}. Only "
                              "refunds with a status of requires_action can be canceled.")
        charge = self.charges[refund["charge"]]
        self._set_refunded(charge, charge["amount_refunded"] - refund["amount"])
        # Stripe's canceled refund carries failure_reason merchant_request.
        self._update(refund, status="canceled", failure_reason="merchant_request")
        return refund

    def list_refunds(self, *, charge: str | None = None, payment_intent: str | None = None, limit: int = 10,
                     starting_after: str | None = None, created: dict[str, int] | None = None) -> Obj:
        """Newest first by `created` (one second's refunds newest first too), as Stripe lists them.
        `created`: bounds keyed gt, gte, lt, lte, or eq for one exact time."""
        in_period = _created_filter(created or {})
        newest_first = [r for r in reversed(self.refunds.values())
                        if (charge is None or r["charge"] == charge)
                        and (payment_intent is None or r["payment_intent"] == payment_intent)
                        and in_period(r["created"])]
        newest_first.sort(key=lambda r: r["created"], reverse=True)  # stable: ties stay newest first
        if starting_after is not None:
            ids = [r["id"] for r in newest_first]
            newest_first = newest_first[ids.index(starting_after) + 1:] if starting_after in ids else []
        return {"object": "list", "data": newest_first[:limit], "has_more": len(newest_first) > limit,
                "url": "/v1/refunds"}

    def event(self, id: str) -> Obj:
        if id not in self.events:
            raise missing("event", id)
        return self.events[id]

    # -- internals ------------------------------------------------------------------------------

    def _set_refunded(self, charge: Obj, amount_refunded: int) -> None:
        charge["amount_refunded"] = amount_refunded
        charge["refunded"] = amount_refunded >= charge["amount"]

    def _update(self, refund: Obj, *, failed: bool = False, **changes: Any) -> None:
        previous = {k: refund[k] for k, v in changes.items() if refund[k] != v}
        refund.update(changes)
        if failed:
            self._emit("refund.failed", refund)
        self._emit("refund.updated", refund, previous)
        self._emit("charge.refund.updated", refund, previous)

    def _emit(self, type: str, obj: Obj, previous: Obj | None = None) -> None:
        # A snapshot: later changes must not leak into an event already queued or delivered.
        data: Obj = {"object": copy.deepcopy(obj)}
        if previous is not None:
            data["previous_attributes"] = previous
        event = {"id": self._new_id("evt"), "object": "event", "api_version": self._api_version,
                 "created": _now(), "data": data, "livemode": False, "pending_webhooks": 1,
                 "request": {"id": None, "idempotency_key": None}, "type": type}
        self.events[event["id"]] = event
        self._on_event(event)

    def snapshot(self) -> Obj:
        """Everything tests check, for GET /_sim/state."""
        return {
            "charges": [{**self.charge_view(c), "refund_executions": self.refund_executions[c["id"]]}
                        for c in self.charges.values()],
            "payment_intents": list(self.payment_intents.values()),
            "refund_executions": dict(self.refund_executions),
            "disputes": list(self.disputes.by_id.values()),
            "events": [{"id": e["id"], "type": e["type"], "object": e["data"]["object"]["id"]}
                       for e in self.events.values()],
        }


def _now() -> int:
    return int(time.time())


def _created_filter(bounds: dict[str, int]) -> Callable[[int], bool]:
    checks = {"gt": lambda t, b: t > b, "gte": lambda t, b: t >= b, "lt": lambda t, b: t < b,
              "lte": lambda t, b: t <= b, "eq": lambda t, b: t == b}
    return lambda created: all(checks[name](created, bound) for name, bound in bounds.items())


def _money(amount: int, charge: Obj) -> str:
    return f"{amount / 100:.2f} {charge['currency'].upper()}"
