"""The simulated merchant account: sales, the voids and refunds against them, the open batch, and
the rules BridgePay applies to a 012 void/refund. Pure state, no I/O."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from adapters.bridgepay_sim.codes import ALREADY_VOIDED, DENIED, INVALID_AMOUNT, SUCCESS

Row = dict[str, Any]
# The Reporting API's dates: xs:dateTime as .NET writes a DateTime without a kind, so with no zone.
# The simulator's clock is UTC, and its dates are whole seconds (what a row can say).
REPORT_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


@dataclass
class Reversal:
    """A void (of an unsettled sale) or a refund (of a settled one) that took effect."""

    gateway_trans_id: str
    kind: str  # "void" | "refund"
    amount: int
    reference_number: str  # the sale's GatewayTransID
    invoice_num: str
    transaction_code: str
    transaction_id: str  # the caller's TransactionID
    remaining_after: int  # RemainingAmount answered with it
    gateway_message: str
    settled: bool = False
    created: datetime = field(default_factory=_utc_now)  # when it took effect (UTC, whole seconds)
    portal: bool = False  # made in the merchant's portal, not by a 012 request


@dataclass
class Sale:
    gateway_trans_id: str
    amount: int
    invoice_num: str
    transaction_id: str
    authorization_code: str
    card_last4: str  # never more of the card
    settled: bool = False
    reversals: list[Reversal] = field(default_factory=list)
    created: datetime = field(default_factory=_utc_now)  # when the card was charged (UTC, whole seconds)

    @property
    def void(self) -> Reversal | None:
        return next((r for r in self.reversals if r.kind == "void"), None)

    @property
    def voided(self) -> int:
        return sum(r.amount for r in self.reversals if r.kind == "void")

    @property
    def refunded(self) -> int:
        return sum(r.amount for r in self.reversals if r.kind == "refund")

    @property
    def remaining(self) -> int:
        # A void reverses the authorisation: nothing more is refundable while the batch is open, and
        # after settlement only what was neither voided nor refunded.
        if not self.settled:
            return 0 if self.void is not None else self.amount
        return self.amount - self.voided - self.refunded

    @property
    def status(self) -> str:
        if self.voided >= self.amount:
            return "Voided"
        return "Confirmed" if self.settled else "Open"


@dataclass
class Outcome:
    """What a 012 did: `reversal` is set only when it took effect."""

    code: str
    gateway_message: str
    response_type: str  # "void" | "refund"
    remaining: int
    reversal: Reversal | None = None


class World:
    def __init__(self, new_gateway_id: Callable[[], str]):
        self._new_id = new_gateway_id
        # When a sale, void or refund is made: UTC, whole seconds. Tests may swap it to make rows at
        # other times (a period's edges); it is only ever read when something is made.
        self.clock: Callable[[], datetime] = _utc_now
        self.sales: dict[str, Sale] = {}
        self.reversals: dict[str, Reversal] = {}
        self._order: list[str] = []  # every GatewayTransID, in creation order (the reporting order)
        # Per sale: voids/refunds that took effect (the count tests use to prove nothing ran twice),
        # and every 012 that reached processing, declines included.
        self.refund_executions: Counter[str] = Counter()
        self.refund_attempts: Counter[str] = Counter()

    def create_sale(self, amount: int, *, invoice_num: str, transaction_id: str, authorization_code: str,
                    card_last4: str, settled: bool = False) -> Sale:
        sale = Sale(self._new_id(), amount, invoice_num, transaction_id, authorization_code, card_last4, settled,
                    created=self.clock())
        self.sales[sale.gateway_trans_id] = sale
        self._order.append(sale.gateway_trans_id)
        return sale

    def reverse(self, sale: Sale, amount: int, *, invoice_num: str, transaction_code: str, transaction_id: str,
                sandbox_amounts: bool, portal: bool = False) -> Outcome:
        """One 012 against `sale` (or the same made in the merchant's portal): a void while its batch
        is open, a refund once settled."""
        self.refund_attempts[sale.gateway_trans_id] += 1
        kind = "refund" if sale.settled else "void"
        if kind == "void" and sale.void is not None:
            return Outcome(ALREADY_VOIDED, "D01 - Already Voided", kind, sale.remaining)
        if amount > sale.remaining:
            return Outcome(INVALID_AMOUNT, "D18 - Bad Amount", kind, sale.remaining)
        if sandbox_amounts and not 500 <= amount < 7000:
            return Outcome(DENIED, "D01 - Declined", kind, sale.remaining)
        if kind == "void":
            message = "A03 - Void Posted" if amount == sale.amount else "A07 - Partial Void Posted"
        else:
            message = "A02 - Credit Posted" if amount == sale.remaining else "A08 - Partial Refund Posted"
        reversal = Reversal(self._new_id(), kind, amount, sale.gateway_trans_id, invoice_num, transaction_code,
                            transaction_id, 0, message, created=self.clock(), portal=portal)
        sale.reversals.append(reversal)
        reversal.remaining_after = sale.remaining
        self.reversals[reversal.gateway_trans_id] = reversal
        self._order.append(reversal.gateway_trans_id)
        self.refund_executions[sale.gateway_trans_id] += 1
        return Outcome(SUCCESS, message, kind, sale.remaining, reversal)

    def settle(self, ids: list[str] | None = None) -> list[str]:
        """Closes the batch: settles the given sales and refunds, or everything still open. A void
        settles with its sale. Returns the GatewayTransIDs that changed."""
        if ids is None:
            ids = [i for i in self._order if i in self.sales or self.reversals[i].kind == "refund"]
        unknown = [i for i in ids if i not in self.sales and i not in self.reversals]
        if unknown:
            raise ValueError(f"no such transactions: {unknown}")
        changed = []
        for id in ids:
            reversal = self.reversals.get(id)
            if reversal is not None and reversal.kind == "void":
                id = reversal.reference_number
            targets: list[Sale | Reversal] = [self.sales[id]] if id in self.sales else [self.reversals[id]]
            if id in self.sales:
                targets += [r for r in self.sales[id].reversals if r.kind == "void"]
            for target in targets:
                if not target.settled:
                    target.settled = True
                    changed.append(target.gateway_trans_id)
        return changed

    # -- reporting --------------------------------------------------------------------------------

    def search(self, *, invoice_number: str | None, id: str | None, date_from: datetime | None = None,
               date_to: datetime | None = None) -> list[Row]:
        """Rows in creation order (so Skip/Take pages stay put while new rows arrive), filtered by
        InvoiceNumber, ID and a date range (both ends inclusive, as BridgePay's GTE/LTE filters)."""
        rows = []
        for trans_id in self._order:
            made = self.sales[trans_id].created if trans_id in self.sales else self.reversals[trans_id].created
            if (date_from is not None and made < date_from) or (date_to is not None and made > date_to):
                continue
            row = self.row(trans_id)
            if (invoice_number is None or row["InvoiceNumber"] == invoice_number) and (id is None or trans_id == id):
                rows.append(row)
        return rows

    def row(self, trans_id: str) -> Row:
        """One Reporting API row. A void or refund reports the RemainingAmount it was answered with, and
        every row its own date and time as SaleDateTime (for a void or refund: when it was made)."""
        if trans_id in self.sales:
            sale = self.sales[trans_id]
            return {"TransactionId": trans_id, "TransactionType": "Sale", "InvoiceNumber": sale.invoice_num,
                    "ReferenceNumber": "", "RequestedAmount": sale.amount,
                    "AuthorizedAmount": sale.amount - sale.voided, "RemainingAmount": sale.remaining,
                    "ResponseCode": SUCCESS, "TransactionStatus": sale.status,
                    "SettlementStatus": "Settled" if sale.settled else "Unsettled",
                    "SaleDateTime": sale.created.strftime(REPORT_DATE_FORMAT)}
        r = self.reversals[trans_id]
        status = "Voided" if r.kind == "void" else "Confirmed" if r.settled else "Open"
        return {"TransactionId": trans_id, "TransactionType": r.kind.capitalize(), "InvoiceNumber": r.invoice_num,
                "ReferenceNumber": r.reference_number, "RequestedAmount": r.amount, "AuthorizedAmount": r.amount,
                "RemainingAmount": r.remaining_after, "ResponseCode": SUCCESS, "TransactionStatus": status,
                "SettlementStatus": "Settled" if r.settled else "Unsettled",
                "SaleDateTime": r.created.strftime(REPORT_DATE_FORMAT)}

    def snapshot(self) -> dict[str, Any]:
        """Everything tests check, for GET /_sim/state."""
        return {
            "sales": [self.sale_view(s) for s in self.sales.values()],
            "refund_executions": dict(self.refund_executions),
            "refund_attempts": dict(self.refund_attempts),
        }

    def sale_view(self, sale: Sale) -> dict[str, Any]:
        return {"gateway_trans_id": sale.gateway_trans_id, "amount": sale.amount, "invoice_num": sale.invoice_num,
                "transaction_id": sale.transaction_id, "authorization_code": sale.authorization_code,
                "card_last4": sale.card_last4, "settled": sale.settled, "status": sale.status,
                "voided": sale.voided, "refunded": sale.refunded, "remaining": sale.remaining,
                "refund_executions": self.refund_executions[sale.gateway_trans_id],
                "refund_attempts": self.refund_attempts[sale.gateway_trans_id],
                "refunds": [{"gateway_trans_id": r.gateway_trans_id, "kind": r.kind, "amount": r.amount,
                             "invoice_num": r.invoice_num, "transaction_code": r.transaction_code,
                             "transaction_id": r.transaction_id, "remaining_after": r.remaining_after,
                             "gateway_message": r.gateway_message, "settled": r.settled}
                            for r in sale.reversals]}
