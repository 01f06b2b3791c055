"""The Stripe-like adapter's client: httpx with the account's base URL, secret key, timeouts,
connection limits and a cap on answer size. It logs nothing of what it sends: bodies carry
references, headers the key."""

from __future__ import annotations

import asyncio
import math
from datetime import datetime
from typing import Mapping

import httpx

from adapters.base import (
    Capabilities,
    CredentialCheck,
    CredentialStatus,
    OutcomeUnknownError,
    ProcessorError,
    ProcessorProtocolError,
    ProcessorRefund,
    RefundRequest,
    RefundResult,
    TransientProcessorError,
    WebhookEvent,
)
from adapters.http import Answer, read_answer
from adapters.stripe import transformers
from gateway.settings import StripeProcessor

API_VERSION = "2024-06-20"
LOOKUP_PAGES = 10  # at 100 refunds a page: more than any one charge has
LISTING_PAGES = 1000  # at 100 refunds a page: a period with more is split, not read without end


class StripeAdapter:
    kind = "stripe"
    capabilities = Capabilities(partial_refunds=True, multiple_refunds=True, webhooks=True, lookup=True,
                                idempotency_keys=True, cancel=True, listing=True)

    def __init__(self, config: StripeProcessor, *, transport: httpx.AsyncBaseTransport | None = None):
        self.id = config.id
        self._timeout = config.timeout_seconds
        self._max_answer_bytes = config.max_answer_bytes
        self._secrets = [s.get_secret_value().encode() for s in config.webhook_secrets]
        self._client = httpx.AsyncClient(
            base_url=config.base_url,
            headers={"Authorization": f"Bearer {config.api_key.get_secret_value()}", "Stripe-Version": API_VERSION},
            timeout=httpx.Timeout(config.timeout_seconds, connect=min(5.0, config.timeout_seconds)),
            limits=httpx.Limits(max_connections=config.max_connections,
                                max_keepalive_connections=config.max_connections),
            transport=transport,
        )

    async def _send(self, method: str, url: str, *, request_id: str | None = None,
                    headers: dict[str, str] | None = None, **kwargs) -> Answer:
        headers = dict(headers or {})
        if request_id:
            headers["X-Request-ID"] = request_id
        try:
            # httpx's timeouts are per read: the deadline is the whole call's (a trickling answer).
            async with asyncio.timeout(self._timeout):
                return await read_answer(self._client, method, url, max_bytes=self._max_answer_bytes,
                                         processor="Stripe", headers=headers, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
            raise TransientProcessorError(f"Stripe unreachable: {type(e).__name__}", code="connect") from None
        except (httpx.TimeoutException, TimeoutError, httpx.RemoteProtocolError, httpx.ReadError,
                httpx.WriteError) as e:
            if method == "GET":  # a read moves nothing: simply ask again
                raise TransientProcessorError(f"no answer from Stripe: {type(e).__name__}", code="no_answer") from None
            # The request may have been carried out; Stripe answers a resend with the same
            # Idempotency-Key with the first outcome.
            raise OutcomeUnknownError(f"no answer from Stripe: {type(e).__name__}", code="no_answer") from None

    async def refund(self, request: RefundRequest) -> RefundResult:
        response = await self._send("POST", "/v1/refunds", data=transformers.refund_form(request),
                                    headers={"Idempotency-Key": request.idempotency_key},
                                    request_id=request.request_id)
        return transformers.refund_answer(response.status_code, response.headers, response.content)

    async def lookup_refund(self, request: RefundRequest, psp_refund_id: str | None) -> RefundResult | None:
        if psp_refund_id:
            response = await self._send("GET", f"/v1/refunds/{psp_refund_id}", request_id=request.request_id)
            if response.status_code == 404:
                return None
            return transformers.refund_answer(response.status_code, response.headers, response.content)
        field = "payment_intent" if request.psp_reference.startswith("pi_") else "charge"
        params = {field: request.psp_reference, "limit": "100"}
        for _ in range(LOOKUP_PAGES):
            response = await self._send("GET", "/v1/refunds", params=params, request_id=request.request_id)
            if response.status_code == 404:
                return None  # Stripe does not know the payment, so it has no refund of ours either
            if response.status_code != 200:
                transformers.refund_answer(response.status_code, response.headers, response.content)
                raise ProcessorProtocolError(f"Stripe answered {response.status_code} to a refund listing")
            refunds, has_more = transformers.refund_page(response.content)
            for refund in refunds:
                if (refund.get("metadata") or {}).get("refund_id") == request.refund_id:
                    return transformers.refund_result(refund)
            if not has_more or not refunds:
                return None
            params["starting_after"] = refunds[-1]["id"]
        raise ProcessorProtocolError("too many refunds on one payment to search", code="lookup_exhausted")

    async def list_refunds(self, since: datetime, until: datetime) -> list[ProcessorRefund]:
        if since.tzinfo is None or until.tzinfo is None:
            raise ValueError("since and until need a time zone")
        # Stripe's `created` is whole seconds: t >= since is t >= ceil(since), and t < until is t < ceil(until).
        params = {"created[gte]": str(math.ceil(since.timestamp())), "created[lt]": str(math.ceil(until.timestamp())),
                  "limit": "100"}
        newest_first: list[ProcessorRefund] = []
        for _ in range(LISTING_PAGES):
            response = await self._send("GET", "/v1/refunds", params=params)
            if response.status_code != 200:
                transformers.read_fault(response.status_code, response.headers, response.content, "a refund listing")
            refunds, has_more = transformers.refund_page(response.content)
            newest_first.extend(transformers.listed_refund(r) for r in refunds)
            if not has_more:
                break
            if not refunds:  # more to come, and no cursor to ask for it with
                raise ProcessorProtocolError("Stripe's refund listing has more but an empty page", code="unparseable")
            params["starting_after"] = refunds[-1]["id"]
        else:
            raise ProcessorProtocolError(f"more than {LISTING_PAGES} pages of refunds in the period: split it",
                                         code="listing_too_long")
        # Stripe lists newest first; the filter is Stripe's, kept here too in case a server ignores it.
        listed = [r for r in reversed(newest_first) if since <= r.created < until]
        return sorted(listed, key=lambda r: r.created)  # stable: one second's refunds stay in Stripe's order

    async def cancel_refund(self, request: RefundRequest, psp_refund_id: str) -> RefundResult:
        # A key of its own, so that a resend after a lost answer replays "canceled" instead of
        # meeting Stripe's refusal to cancel a refund that is already canceled.
        response = await self._send("POST", f"/v1/refunds/{psp_refund_id}/cancel",
                                    headers={"Idempotency-Key": f"{request.idempotency_key}:cancel"},
                                    request_id=request.request_id)
        return transformers.cancel_answer(response.status_code, response.headers, response.content)

    async def check_credentials(self) -> CredentialCheck:
        # The cheapest authenticated read that needs what refunds need: one refund, listed.
        try:
            response = await self._send("GET", "/v1/refunds", params={"limit": "1"})
        except ProcessorProtocolError as e:  # an answer, but not one a Stripe API gives (too large)
            return CredentialCheck(CredentialStatus.UNEXPECTED, str(e))
        except ProcessorError as e:
            return CredentialCheck(CredentialStatus.UNREACHABLE, str(e))
        return transformers.credentials_answer(response.status_code, response.content)

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        transformers.verify_signature(headers.get("Stripe-Signature"), body, self._secrets)
        return transformers.parse_event(body)

    def parse_webhook_body(self, body: bytes) -> WebhookEvent:
        return transformers.parse_event(body)

    async def aclose(self) -> None:
        await self._client.aclose()
