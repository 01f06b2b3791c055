"""Disputes (chargebacks) of the simulated account's charges, as Stripe runs card disputes: the disputed
amount is withdrawn when the dispute opens, reinstated if the merchant wins, and the charge takes no
refund while the dispute is open or after it was lost. Pure state, no I/O; events go out through `emit`."""

from __future__ import annotations

import time
from typing import Any, Callable

from adapters.stripe_sim.errors import StripeError, missing

Obj = dict[str, Any]
DISPUTE_REASONS = frozenset({"bank_cannot_process", "check_returned", "credit_not_processed", "customer_initiated",
                             "debit_not_authorized", "duplicate", "fraudulent", "general",
                             "incorrect_account_details", "insufficient_funds", "product_not_received",
                             "product_unacceptable", "subscription_canceled", "unrecognized"})
DISPUTE_FEE = 1500  # what Stripe charges per dispute, in the charge's minor unit; kept when the dispute is won
# Statuses in which Stripe refuses to refund the charge: open, the money is held for the dispute; lost,
# it has gone back to the cardholder already.
NOT_REFUNDABLE = frozenset({"needs_response", "under_review", "lost"})


class Disputes:
    def __init__(self, new_id: Callable[[str], str], emit: Callable[[str, Obj], None],
                 charge: Callable[[str], Obj]):
        self._new_id, self._emit, self._charge = new_id, emit, charge
        self.by_id: dict[str, Obj] = {}  # insertion order is creation order

    def open(self, charge_id: str, amount: Any = None, reason: Any = None) -> Obj:
        """The cardholder disputes the charge: needs_response, the amount withdrawn at once (as Stripe does
        for most card disputes); charge.dispute.created, then charge.dispute.funds_withdrawn."""
        charge = self._charge(charge_id)
        if any(d["charge"] == charge["id"] for d in self.by_id.values()):
            raise ValueError(f"charge {charge['id']} is disputed already: Stripe has one dispute per charge")
        amount = charge["amount"] if amount is None else amount
        if not isinstance(amount, int) or isinstance(amount, bool) or not 1 <= amount <= charge["amount"]:
            raise ValueError(f"amount is an integer from 1 to the charge's {charge['amount']}")
        reason = "general" if reason is None else reason
        if reason not in DISPUTE_REASONS:
            raise ValueError(f"reason is one of {sorted(DISPUTE_REASONS)}")
        now = int(time.time())
        dispute = {"id": self._new_id("dp"), "object": "dispute", "amount": amount, "balance_transactions": [],
                   "charge": charge["id"], "created": now, "currency": charge["currency"],
                   "evidence_details": {"due_by": now + 7 * 24 * 3600, "has_evidence": False, "past_due": False,
                                        "submission_count": 0},
                   "is_charge_refundable": False, "livemode": False, "metadata": {},
                   "payment_intent": charge["payment_intent"], "reason": reason, "status": "needs_response"}
        self.by_id[dispute["id"]] = dispute
        charge["disputed"] = True
        # Withdrawn before the first event goes out: every event of the dispute shows the withdrawal.
        self._move(dispute, -amount, DISPUTE_FEE, "dispute")
        self._emit("charge.dispute.created", dispute)
        self._emit("charge.dispute.funds_withdrawn", dispute)
        return dispute

    def close(self, id: str, outcome: Any) -> Obj:
        """The card network decides: won (the amount reinstated; charge.dispute.closed, then
        charge.dispute.funds_reinstated) or lost (the amount stays with the cardholder; charge.dispute.closed)."""
        if outcome not in ("won", "lost"):
            raise ValueError("outcome is won or lost")
        dispute = self.get(id)
        if dispute["status"] not in ("needs_response", "under_review"):
            raise ValueError(f"dispute {id} is {dispute['status']}, closed already")
        if outcome == "won":
            self._move(dispute, dispute["amount"], 0, "dispute_reversal")
        dispute.update(status=outcome, is_charge_refundable=outcome not in NOT_REFUNDABLE)
        self._emit("charge.dispute.closed", dispute)
        if outcome == "won":
            self._emit("charge.dispute.funds_reinstated", dispute)
        return dispute

    def get(self, id: str) -> Obj:
        if id not in self.by_id:
            raise missing("dispute", id)
        return self.by_id[id]

    def refuse_refund(self, charge: Obj) -> None:
        """Stripe's answer to a refund of a charge whose dispute is open or lost: 400 charge_disputed."""
        for dispute in self.by_id.values():
            if dispute["charge"] == charge["id"] and dispute["status"] in NOT_REFUNDABLE:
                raise StripeError(400, "invalid_request_error",
                                  f"Charge {charge['id']} has been charged back; cannot issue a refund.",
                                  code="charge_disputed")

    def _move(self, dispute: Obj, amount: int, fee: int, category: str) -> None:
        dispute["balance_transactions"].append(
            {"id": self._new_id("txn"), "object": "balance_transaction", "amount": amount,
             "created": int(time.time()), "currency": dispute["currency"], "fee": fee, "net": amount - fee,
             "reporting_category": category, "status": "available", "type": "adjustment"})
