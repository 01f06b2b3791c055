"""The BridgePay-like adapter's client: httpx to the account's base URL, with credentials in
every request body (as BridgeComm wants), timeouts, connection limits and a cap on answer size.
It logs nothing of what it sends: every body carries the password."""

from __future__ import annotations

import asyncio
import uuid
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
    WebhookPayloadError,
    WebhookVerificationError,
)
from adapters.bridgepay import transformers
from adapters.http import read_answer
from gateway.domain.refunds import Outcome
from gateway.settings import BridgePayProcessor

PROCESS_PATH = "/PaymentService/RequestHandler.svc"
REPORTING_PATH = "/Bridgepay.Reporting.API/ReportingAPI.svc"
# A listing reads every row of the period (sales too: the filter has no transaction type) in pages
# small enough for max_answer_bytes, and gives up rather than read without end.
LISTING_TAKE = 200
LISTING_PAGES = 1000


class BridgePayAdapter:
    kind = "bridgepay"
    # No idempotency key and no webhooks: every outcome is in the synchronous answer, and a lost
    # answer is found again through the Reporting API by our refund id (sent as InvoiceNum).
    capabilities = Capabilities(partial_refunds=True, multiple_refunds=True, webhooks=False, lookup=True,
                                idempotency_keys=False, voids_while_unsettled=True, listing=True,
                                currencies=frozenset({"USD"}))

    def __init__(self, config: BridgePayProcessor, *, transport: httpx.AsyncBaseTransport | None = None):
        self.id = config.id
        self._config = config
        self._reporting_url = (config.reporting_base_url or config.base_url).rstrip("/") + REPORTING_PATH
        self._client = httpx.AsyncClient(
            base_url=config.base_url,
            timeout=httpx.Timeout(config.timeout_seconds, connect=min(5.0, config.timeout_seconds)),
            limits=httpx.Limits(max_connections=config.max_connections,
                                max_keepalive_connections=config.max_connections),
            transport=transport,
        )

    async def _post(self, url: str, body: bytes, action: str, *, sends_money: bool,
                    request_id: str | None = None) -> bytes:
        headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{action}"'}
        if request_id:
            headers["X-Request-ID"] = request_id
        try:
            # httpx's timeouts are per read: the deadline is the whole call's (a trickling answer).
            async with asyncio.timeout(self._config.timeout_seconds):
                answer = await read_answer(self._client, "POST", url, max_bytes=self._config.max_answer_bytes,
                                           processor="BridgePay", content=body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as e:
            raise TransientProcessorError(f"BridgePay unreachable: {type(e).__name__}", code="connect") from None
        except (httpx.TimeoutException, TimeoutError, httpx.RemoteProtocolError, httpx.ReadError,
                httpx.WriteError) as e:
            if not sends_money:
                raise TransientProcessorError(f"no answer from BridgePay: {type(e).__name__}",
                                              code="no_answer") from None
            raise OutcomeUnknownError(f"no answer from BridgePay: {type(e).__name__}", code="no_answer") from None
        status, data = answer.status_code, answer.content
        if status >= 500 and not (status == 500 and transformers.is_soap_envelope(data)):
            # A proxy's or server's error page (SOAP faults alone come as a 500 envelope): the
            # refund may or may not have been carried out; a read can simply be asked again.
            error = OutcomeUnknownError if sends_money else TransientProcessorError
            raise error(f"BridgePay HTTP {status}", code=str(status))
        if status not in (200, 500):
            raise ProcessorProtocolError(f"BridgePay HTTP {status}", code=str(status))
        return data

    async def refund(self, request: RefundRequest) -> RefundResult:
        if request.currency not in self.capabilities.currencies:
            return RefundResult(Outcome.DECLINED, processor_code="currency", decline_code="currency_not_supported",
                                message=f"BridgePay refunds only in {', '.join(self.capabilities.currencies)}",
                                next_action=transformers.next_action("currency_not_supported"))
        c = self._config
        body = transformers.refund_envelope(request, username=c.username, password=c.password.get_secret_value(),
                                            merchant_code=c.merchant_code,
                                            merchant_account_code=c.merchant_account_code)
        answer = await self._post(PROCESS_PATH, body, transformers.PROCESS_ACTION, sends_money=True,
                                  request_id=request.request_id)
        return transformers.refund_answer(transformers.process_result(answer))

    async def lookup_refund(self, request: RefundRequest, psp_refund_id: str | None) -> RefundResult | None:
        c = self._config
        body = transformers.lookup_envelope(request.refund_id, username=c.username,
                                            password=c.password.get_secret_value())
        answer = await self._post(self._reporting_url, body, transformers.REPORTING_ACTION, sends_money=False,
                                  request_id=request.request_id)
        return transformers.lookup_answer(answer, request.refund_id)

    async def list_refunds(self, since: datetime, until: datetime) -> list[ProcessorRefund]:
        if since.tzinfo is None or until.tzinfo is None:
            raise ValueError("since and until need a time zone")
        c = self._config
        listed: dict[str, ProcessorRefund] = {}
        skip = 0
        for _ in range(LISTING_PAGES):
            body = transformers.listing_envelope(since, until, skip=skip, take=LISTING_TAKE, username=c.username,
                                                 password=c.password.get_secret_value())
            answer = await self._post(self._reporting_url, body, transformers.REPORTING_ACTION, sends_money=False)
            total, rows = transformers.reporting_rows(answer)
            for row in rows:
                refund = transformers.listed_refund(row)
                if refund is not None and since <= refund.created < until:
                    # Offset pages can shift under new rows and show one twice: kept once.
                    listed.setdefault(refund.psp_refund_id, refund)
            skip += len(rows)
            # TotalCount says when it is all read (a server may answer fewer rows than Take asks for);
            # without it, an empty page does.
            if (total is None and not rows) or (total is not None and skip >= total):
                break
            if not rows:
                raise ProcessorProtocolError(f"BridgePay reports {total} rows in the period but answered none "
                                             f"after {skip}", code="unparseable")
        else:
            raise ProcessorProtocolError(f"more than {LISTING_PAGES} pages of transactions in the period: split it",
                                         code="listing_too_long")
        return sorted(listed.values(), key=lambda r: r.created)  # stable: one second's rows in BridgePay's order

    async def check_credentials(self) -> CredentialCheck:
        """A ping (user, password and merchant codes), then a Reporting API query that finds nothing
        (its user and password, at reporting_base_url): lookups need it to resolve lost answers."""
        c = self._config
        credentials = dict(username=c.username, password=c.password.get_secret_value())
        ping = transformers.ping_envelope(f"check-{uuid.uuid4().hex[:16]}", merchant_code=c.merchant_code,
                                          merchant_account_code=c.merchant_account_code, **credentials)
        query = transformers.lookup_envelope(transformers.CREDENTIALS_CHECK_INVOICE, **credentials)
        try:
            answer = await self._post(PROCESS_PATH, ping, transformers.PROCESS_ACTION, sends_money=False)
            check = transformers.ping_answer(transformers.process_result(answer))
            if check.status is not CredentialStatus.OK:
                return check
            answer = await self._post(self._reporting_url, query, transformers.REPORTING_ACTION, sends_money=False)
            reporting = transformers.reporting_credentials_answer(answer)
        except ProcessorProtocolError as e:
            return CredentialCheck(CredentialStatus.UNEXPECTED, str(e))
        except ProcessorError as e:
            return CredentialCheck(CredentialStatus.UNREACHABLE, str(e))
        if reporting.status is not CredentialStatus.OK:
            return reporting
        return CredentialCheck(CredentialStatus.OK, f"{check.detail}; {reporting.detail}")

    def parse_webhook(self, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
        raise WebhookVerificationError("BridgePay sends no webhooks")

    def parse_webhook_body(self, body: bytes) -> WebhookEvent:
        raise WebhookPayloadError("BridgePay sends no webhooks")

    async def aclose(self) -> None:
        await self._client.aclose()
