"""A deterministic in-process processor for development and tests.

Like a processor's sandbox, special amounts (in minor units) trigger outcomes; every other
amount succeeds at once. The mock deduplicates on the idempotency key exactly as a real
processor does, so a resend never executes a refund twice; `executed` lists the refunds it
really carried out, for tests to check, and list_refunds lists them by date. `record_external` makes
a refund as its dashboard would: carried out without the gateway asking.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Callable, Mapping

import orjson

from adapters.base import (
    Capabilities,
    CredentialCheck,
    CredentialStatus,
    OutcomeUnknownError,
    ProcessorProtocolError,
    ProcessorRefund,
    RefundRequest,
    RefundResult,
    RefundSnapshot,
    TransientProcessorError,
    WebhookEvent,
    WebhookPayloadError,
    WebhookVerificationError,
)
from gateway.domain.refunds import NextAction, Outcome

# amount (minor units) -> what the mock does; documented in docs/processors/mock.md.
SCENARIOS: dict[int, str] = {
    4001: "declined: expired_or_canceled_card",
    4002: "declined: insufficient_funds",
    5001: "503 on the first call, then succeeds",
    5002: "503 on every call (retries run out)",
    5029: "429 with Retry-After on the first call, then succeeds",
    6001: "executes, then the answer is lost (outcome unknown); a resend with the same key or a lookup "
          "finds it succeeded",
    6002: "the answer is lost before executing, every time (outcome unknown); a lookup finds nothing",
    7001: "pending, succeeds after pending_settle_seconds",
    7002: "pending, fails after pending_settle_seconds",
    8001: "answers with a status nobody knows: needs attention",
    8002: "answers with garbage: protocol error",
}

DECLINES = {4001: "expired_or_canceled_card", 4002: "insufficient_funds"}
# What the billing core can do next, by the code the mock answers with (webhooks: the status). A code
# not here needs a person: CONTACT_SUPPORT.
NEXT_ACTIONS = {
    "expired_or_canceled_card": NextAction.REFUND_OFFLINE,
    "insufficient_funds": NextAction.RETRY,
    "declined": NextAction.REFUND_OFFLINE,  # 7002, after pending
    "mystery_status": NextAction.CONTACT_SUPPORT,  # 8001
}
MEMORY = 10_000


def _next_action(code: str | None) -> NextAction:
    return NEXT_ACTIONS.get(code or "", NextAction.CONTACT_SUPPORT)


def _forget_oldest(remembered: OrderedDict) -> None:
    while len(remembered) > MEMORY:
        remembered.popitem(last=False)


@dataclass
class _MockRefund:
    id: str
    amount: int
    psp_reference: str
    created: float  # on the mock's clock (monotonic by default: pending timing)
    final: Outcome  # where it ends up
    pending_until: float = 0.0
    code: str | None = None
    currency: str = "EUR"
    refund_id: str | None = None  # the gateway's, from the request; None for one made in the dashboard
    created_at: float = 0.0  # wall-clock unix time, for listings

    def listed(self, now: float) -> ProcessorRefund:
        return ProcessorRefund(psp_refund_id=self.id, payment_reference=self.psp_reference, amount=self.amount,
                               currency=self.currency, outcome=self.result(now).outcome,
                               created=datetime.fromtimestamp(self.created_at, timezone.utc), refund_id=self.refund_id)

    def result(self, now: float) -> RefundResult:
        if now < self.pending_until:
            return RefundResult(Outcome.PENDING, psp_refund_id=self.id, processor_code="pending")
        if self.final is Outcome.DECLINED:
            return RefundResult(Outcome.DECLINED, psp_refund_id=self.id, processor_code=self.code,
                                decline_code=self.code, message=f"refund declined: {self.code}",
                                next_action=_next_action(self.code))
        if self.final is Outcome.NEEDS_ATTENTION:
            return RefundResult(Outcome.NEEDS_ATTENTION, psp_refund_id=self.id, processor_code="mystery_status",
                                message="the processor answered with an unknown status 'mystery_status'",
                                next_action=_next_action("mystery_status"))
        return RefundResult(self.final, psp_refund_id=self.id, processor_code=self.final.value)


class MockAdapter:
    kind = "mock"

    def __init__(self, id: str, *, pending_settle_seconds: float = 2.0, latency_seconds: float = 0.0,
                 webhook_secrets: list[str] | None = None, idempotency_keys: bool = True, lookup: bool = True,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time):
        """`idempotency_keys=False` makes a processor that executes every request it gets, resends
        included (as BridgePay does): the gateway must then look a refund up before resending it,
        and with `lookup=False` as well, never resend it at all. `clock` times pending refunds;
        `wall_clock` (unix seconds) dates refunds for list_refunds."""
        self.id = id
        self.capabilities = Capabilities(partial_refunds=True, multiple_refunds=True, webhooks=True, lookup=lookup,
                                         idempotency_keys=idempotency_keys, listing=True)
        self._settle = pending_settle_seconds
        self._latency = latency_seconds
        self._secrets = [s.encode() for s in webhook_secrets or []]
        self._clock = clock
        self._wall_clock = wall_clock
        # Like a processor's sandbox, it remembers a bounded number of refunds (the newest
        # MEMORY), so that a long run does not grow the process that hosts it.
        self._by_key: OrderedDict[str, _MockRefund] = OrderedDict()
        self._calls: OrderedDict[str, int] = OrderedDict()
        self._seq = itertools.count(1)
        self.executed: deque[_MockRefund] = deque(maxlen=MEMORY)  # refunds really carried out, in order
        self._again: dict[str, list[str]] = {}  # key -> ids of executions beyond the first
        self._failures: dict[int, int] = {}

    def fail_next(self, *, amount: int, times: int) -> None:
        """Answer the next `times` refunds of `amount` with a 503 (for tests of retries that outlast a request)."""
        self._failures[amount] = times

    async def refund(self, request: RefundRequest) -> RefundResult:
        if self._latency:
            await asyncio.sleep(self._latency)
        if self._failures.get(request.amount):
            self._failures[request.amount] -= 1
            raise TransientProcessorError("mock: 503 service unavailable (injected)", code="503")
        key = request.idempotency_key
        calls = self._calls[key] = self._calls.get(key, 0) + 1
        _forget_oldest(self._calls)
        existing = self._by_key.get(key) if self.capabilities.idempotency_keys else None
        if existing is not None:  # a resend: answer as the first time, never execute again
            return existing.result(self._clock())
        amount = request.amount
        if amount == 5002 or (amount == 5001 and calls == 1):
            raise TransientProcessorError("mock: 503 service unavailable", code="503")
        if amount == 5029 and calls == 1:
            raise TransientProcessorError("mock: 429 too many requests", code="429", retry_after=0.05)
        if amount == 6002:
            raise OutcomeUnknownError("mock: timed out before the refund was executed")
        if amount == 8002:
            raise ProcessorProtocolError("mock: answer is not valid JSON", code="unparseable")
        refund = self._execute(request)
        if amount == 6001:
            raise OutcomeUnknownError("mock: refund executed, answer lost")
        return refund.result(self._clock())

    def _execute(self, request: RefundRequest) -> _MockRefund:
        now = self._clock()
        amount = request.amount
        final, code, pending_until = Outcome.SUCCEEDED, None, 0.0
        if amount in DECLINES:
            final, code = Outcome.DECLINED, DECLINES[amount]
        elif amount in (7001, 7002):
            pending_until = now + self._settle
            if amount == 7002:
                final, code = Outcome.DECLINED, "declined"
        elif amount == 8001:
            final = Outcome.NEEDS_ATTENTION
        refund = _MockRefund(id=f"mre_{next(self._seq):08d}", amount=amount, psp_reference=request.psp_reference,
                             created=now, final=final, pending_until=pending_until, code=code,
                             currency=request.currency.upper(), refund_id=request.refund_id,
                             created_at=self._wall_clock())
        if request.idempotency_key in self._by_key:  # without idempotency keys: a second execution
            self._again.setdefault(request.idempotency_key, []).append(refund.id)
        else:
            self._by_key[request.idempotency_key] = refund
            _forget_oldest(self._by_key)
        self.executed.append(refund)
        return refund

    async def lookup_refund(self, request: RefundRequest, psp_refund_id: str | None) -> RefundResult | None:
        refund = self._by_key.get(request.idempotency_key)
        if refund is None:
            return None
        return replace(refund.result(self._clock()),
                       duplicate_psp_refund_ids=tuple(self._again.get(request.idempotency_key, ())))

    async def list_refunds(self, since: datetime, until: datetime) -> list[ProcessorRefund]:
        """The refunds it carried out (the newest MEMORY, as `executed` keeps them), dashboard ones
        included, made in [since, until), oldest first."""
        if since.tzinfo is None or until.tzinfo is None:
            raise ValueError("since and until need a time zone")
        now = self._clock()
        listed = [r.listed(now) for r in self.executed]
        return sorted((r for r in listed if since <= r.created < until), key=lambda r: r.created)

    def record_external(self, psp_reference: str, amount: int, currency: str, *,
                        created: datetime | None = None) -> ProcessorRefund:
        """A refund made in the processor's dashboard, not asked for by the gateway (for tests): carried
        out and succeeded at once, listed by list_refunds with no refund id of ours, counted in
        `executed`. `created` (aware) backdates it; default: now. Returns it as the listing shows it."""
        if created is not None and created.tzinfo is None:
            raise ValueError("created needs a time zone")
        refund = _MockRefund(id=f"mre_{next(self._seq):08d}", amount=amount, psp_reference=psp_reference,
                             created=self._clock(), final=Outcome.SUCCEEDED, currency=currency.upper(),
                             created_at=created.timestamp() if created is not None else self._wall_clock())
        self.executed.append(refund)
        return refund.listed(self._clock())

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        """Mock webhooks: `{"id", "type", "refund": {"id", "refund_id", "payment", "amount", "currency",
        "status"}}`, signed as hex HMAC-SHA256 of the body in `Mock-Signature`."""
        signature = headers.get("Mock-Signature")
        if not self._secrets or not signature or not isinstance(signature, str):
            raise WebhookVerificationError("bad or missing Mock-Signature")
        # As bytes: compare_digest raises TypeError for a str with non-ASCII characters in it.
        given = signature.encode("utf-8", "replace")
        if not any([hmac.compare_digest(hmac.new(s, body, hashlib.sha256).hexdigest().encode(), given)
                    for s in self._secrets]):
            raise WebhookVerificationError("bad or missing Mock-Signature")
        return self.parse_webhook_body(body)

    def parse_webhook_body(self, body: bytes) -> WebhookEvent:
        payload = None
        try:
            payload = orjson.loads(body)
            refund = payload["refund"]
            outcome = Outcome(refund["status"])
            snapshot = RefundSnapshot(
                psp_refund_id=refund["id"], refund_id=refund.get("refund_id"),
                payment_references=[refund["payment"]], amount=refund["amount"], currency=refund["currency"],
                outcome=outcome, processor_code=refund["status"],
                next_action=_next_action(refund["status"])
                if outcome in (Outcome.DECLINED, Outcome.NEEDS_ATTENTION) else None)
            return WebhookEvent(event_id=str(payload["id"]), type=str(payload["type"]), refunds=[snapshot])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            known = payload if isinstance(payload, dict) else {}
            event_id, event_type = known.get("id"), known.get("type")
            raise WebhookPayloadError(f"malformed mock webhook: {e}",
                                      event_id=event_id if isinstance(event_id, str) else None,
                                      event_type=event_type if isinstance(event_type, str) else None) from None

    async def check_credentials(self) -> CredentialCheck:
        return CredentialCheck(CredentialStatus.NOT_CHECKED, "in-process mock: no credentials to try")

    async def aclose(self) -> None:
        return None
