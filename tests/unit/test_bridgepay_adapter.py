"""The BridgePay adapter against BridgeComm's SOAP protocol, faked by URL with respx: the refund it
sends (base64 XML in a SOAP envelope), how every answer maps to ours, hostile answers, the Reporting
API look-up, and where each mapped answer takes the refund."""

from __future__ import annotations

import asyncio
import base64
import re
from datetime import datetime, timedelta, timezone
from xml.etree.ElementTree import Element, SubElement, tostring

import defusedxml.ElementTree as SafeET
import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from adapters.base import (
    OutcomeUnknownError,
    ProcessorError,
    ProcessorProtocolError,
    RefundRequest,
    RefundResult,
    TransientProcessorError,
    WebhookVerificationError,
)
from adapters.bridgepay import BridgePayAdapter
from gateway.domain.refunds import Outcome, Stage, Status
from gateway.ledger import decide
from gateway.settings import BridgePayProcessor

BASE_URL = "https://bridgepay.test"
PROCESS_URL = f"{BASE_URL}/PaymentService/RequestHandler.svc"
REPORTING_URL = f"{BASE_URL}/Bridgepay.Reporting.API/ReportingAPI.svc"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PROCESS_NS = "http://bridgepaynetsecuretx.com/requesthandler"
PROCESS_ACTION = "http://bridgepaynetsecuretx.com/requesthandler/IRequestHandler/ProcessRequest"
REPORTING_NS = "http://tempuri.org/"
REPORTING_ACTION = "http://tempuri.org/IReportingAPI/PublicGetTransactionsByFilter"

USERNAME, PASSWORD = "bp_api_user", "bp-Secret-Pa55"
MERCHANT_CODE, MERCHANT_ACCOUNT_CODE = "320000", "320001"
REFUND_ID = "rf_01HZXK4Q7M"
SALE_ID = "117154783"  # the original sale's GatewayTransID
NEW_ID = "117154791"  # the GatewayTransID BridgePay gives the refund


def make_config(**overrides) -> BridgePayProcessor:
    values = dict(id="bridgepay", kind="bridgepay", base_url=BASE_URL, username=USERNAME,
                  password=SecretStr(PASSWORD), merchant_code=MERCHANT_CODE,
                  merchant_account_code=MERCHANT_ACCOUNT_CODE, timeout_seconds=2)
    values.update(overrides)
    return BridgePayProcessor(**values)


def make_request(**overrides) -> RefundRequest:
    values = dict(refund_id=REFUND_ID, idempotency_key=f"{REFUND_ID}:refund", psp_reference=SALE_ID, amount=1050,
                  currency="USD", invoice_id="INV-2024-0042")
    values.update(overrides)
    return RefundRequest(**values)


# --- BridgeComm's answers, built the way the gateway renders them ---------------------------------

def response_xml(code: str = "00000", gateway_message: str | None = "A08 - Partial Refund Posted", *,
                 root: str = "VoidRefund", description: str = "Successful Request",
                 trans_id: str | None = NEW_ID, response_type: str = "refund", remaining: str = "8950",
                 with_message: bool = True) -> bytes:
    """A decoded 012 answer: <VoidRefund> (or <ErrorResponse>) with a <responseMessage>."""
    doc = Element(root)
    for tag, text in (("TransactionID", REFUND_ID), ("RequestType", "012"), ("ResponseCode", code),
                      ("ResponseDescription", description)):
        SubElement(doc, tag).text = text
    if with_message:
        message = SubElement(doc, "responseMessage")
        fields = {"GatewayTransID": trans_id, "GatewayResult": code, "GatewayMessage": gateway_message,
                  "TransactionCode": REFUND_ID, "RemainingAmount": remaining, "ResponseType": response_type,
                  "ReferenceNumber": SALE_ID}
        for tag, text in fields.items():
            if text is not None:
                SubElement(message, tag).text = text
    return b'<?xml version="1.0" encoding="utf-8"?>' + tostring(doc)


def soap(body_xml: str, *, prolog: str = "") -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>{prolog}<s:Envelope xmlns:s="{SOAP_NS}"><s:Body>{body_xml}'
            "</s:Body></s:Envelope>").encode()


def process_answer(inner: bytes) -> bytes:
    """ProcessRequestResponse/ProcessRequestResult holding `inner`, base64-encoded."""
    result = base64.b64encode(inner).decode()
    return soap(f'<ProcessRequestResponse xmlns="{PROCESS_NS}"><ProcessRequestResult>{result}'
                "</ProcessRequestResult></ProcessRequestResponse>")


def refund_answer(*args, **kwargs) -> httpx.Response:
    return httpx.Response(200, content=process_answer(response_xml(*args, **kwargs)),
                          headers={"Content-Type": "text/xml; charset=utf-8"})


def soap_fault(message: str = "Internal Server Error", code: str = "s:Server") -> bytes:
    return soap(f"<s:Fault><faultcode>{code}</faultcode><faultstring>{message}</faultstring></s:Fault>")


def row(transaction_id: str = NEW_ID, *, invoice: str = REFUND_ID, type: str = "Refund", code: str = "00000",
        remaining: str = "8950") -> dict[str, str]:
    return {"TransactionId": transaction_id, "TransactionType": type, "InvoiceNumber": invoice,
            "ReferenceNumber": SALE_ID, "RequestedAmount": "1050", "AuthorizedAmount": "1050",
            "RemainingAmount": remaining, "ResponseCode": code, "TransactionStatus": "Open",
            "SettlementStatus": "Unsettled"}


def reporting_answer(rows: list[dict[str, str]]) -> httpx.Response:
    transactions = "".join("<Transaction>" + "".join(f"<{k}>{v}</{k}>" for k, v in r.items()) + "</Transaction>"
                           for r in rows)
    body = soap(f'<PublicGetTransactionsByFilterResponse xmlns="{REPORTING_NS}"><PublicGetTransactionsByFilterResult>'
                f"<TotalCount>{len(rows)}</TotalCount><Transactions>{transactions}</Transactions>"
                "</PublicGetTransactionsByFilterResult></PublicGetTransactionsByFilterResponse>")
    return httpx.Response(200, content=body, headers={"Content-Type": "text/xml; charset=utf-8"})


# --- hostile documents ------------------------------------------------------------------------------

_LAUGHS = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
BILLION_LAUGHS_DTD = '<!DOCTYPE {root} [<!ENTITY lol0 "lol">' + _LAUGHS + "]>"
EXTERNAL_ENTITY_DTD = '<!DOCTYPE {root} [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'

BILLION_LAUGHS_ENVELOPE = soap(f'<ProcessRequestResponse xmlns="{PROCESS_NS}"><ProcessRequestResult>&lol9;'
                               "</ProcessRequestResult></ProcessRequestResponse>",
                               prolog=BILLION_LAUGHS_DTD.format(root="s:Envelope"))
EXTERNAL_ENTITY_ENVELOPE = soap(f'<ProcessRequestResponse xmlns="{PROCESS_NS}"><ProcessRequestResult>&xxe;'
                                "</ProcessRequestResult></ProcessRequestResponse>",
                                prolog=EXTERNAL_ENTITY_DTD.format(root="s:Envelope"))
BILLION_LAUGHS_RESULT = process_answer(
    ('<?xml version="1.0"?>' + BILLION_LAUGHS_DTD.format(root="VoidRefund") +
     "<VoidRefund><ResponseCode>00000</ResponseCode><ResponseDescription>&lol9;</ResponseDescription>"
     "</VoidRefund>").encode())
EXTERNAL_ENTITY_RESULT = process_answer(
    ('<?xml version="1.0"?>' + EXTERNAL_ENTITY_DTD.format(root="VoidRefund") +
     "<VoidRefund><ResponseCode>00000</ResponseCode><ResponseDescription>&xxe;</ResponseDescription>"
     "</VoidRefund>").encode())
DEEP = 5000
DEEP_ENVELOPE = soap("<x>" * DEEP + "</x>" * DEEP)
DEEP_RESULT = process_answer(b"<VoidRefund>" + b"<x>" * DEEP + b"</x>" * DEEP + b"</VoidRefund>")
# What an IIS-hosted service (BridgeComm is WCF) answers when its application pool is down.
IIS_503_PAGE = (b'<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN""http://www.w3.org/TR/html4/strict.dtd">\r\n'
                b"<HTML><HEAD><TITLE>Service Unavailable</TITLE>\r\n"
                b'<META HTTP-EQUIV="Content-Type" Content="text/html; charset=us-ascii"></HEAD>\r\n'
                b"<BODY><h2>Service Unavailable</h2>\r\n<hr><p>HTTP Error 503. The service is unavailable.</p>\r\n"
                b"</BODY></HTML>\r\n")
NGINX_502_PAGE = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
                  b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")

HOSTILE_BODIES = {
    "not xml": b"Service temporarily down, try later",
    "empty body": b"",
    "html cut short": b"<html><body><h1>502 Bad Gateway</h1>\x00\xff\xfe garbled <<< & >>>",
    "envelope without ProcessRequestResult": soap(f'<ProcessRequestResponse xmlns="{PROCESS_NS}"/>'),
    "empty ProcessRequestResult": soap(f'<ProcessRequestResponse xmlns="{PROCESS_NS}"><ProcessRequestResult/>'
                                       "</ProcessRequestResponse>"),
    "result not base64": soap(f'<ProcessRequestResponse xmlns="{PROCESS_NS}"><ProcessRequestResult>'
                              "this is *not* base64!</ProcessRequestResult></ProcessRequestResponse>"),
    "base64 of non-xml": process_answer(b"\x00\x01 not xml at all <<"),
    "result with another root": process_answer(b"<Auth><ResponseCode>00000</ResponseCode></Auth>"),
    "result without a ResponseCode": process_answer(b"<VoidRefund><ResponseDescription>ok</ResponseDescription>"
                                                    b"</VoidRefund>"),
    "root is not an envelope": f'<s:Enveloppe xmlns:s="{SOAP_NS}"><s:Body/></s:Enveloppe>'.encode(),
    "billion laughs in the envelope": BILLION_LAUGHS_ENVELOPE,
    "billion laughs in the decoded result": BILLION_LAUGHS_RESULT,
    "external entity in the envelope": EXTERNAL_ENTITY_ENVELOPE,
    "external entity in the decoded result": EXTERNAL_ENTITY_RESULT,
    "5000-deep envelope": DEEP_ENVELOPE,
    "5000-deep decoded result": DEEP_RESULT,
}


@pytest.fixture
def bridgepay() -> respx.Router:
    """BridgeComm's two services as respx routes; a request no route matches fails the test."""
    return respx.Router(assert_all_called=False)


def adapter_for(router: respx.Router, **config) -> BridgePayAdapter:
    # The routes serve as the client's transport: routing stays by URL, and no TLS context is built.
    return BridgePayAdapter(make_config(**config), transport=httpx.MockTransport(router.async_handler))


@pytest.fixture
async def adapter(bridgepay):
    adapter = adapter_for(bridgepay)
    yield adapter
    await adapter.aclose()


def sent_envelope(route: respx.Route, index: int = -1) -> Element:
    return SafeET.fromstring(route.calls[index].request.content)


def sent_refund_message(route: respx.Route) -> Element:
    """The requestHeader document the adapter sent, decoded from ProcessRequest/requestMsg."""
    envelope = sent_envelope(route)
    encoded = envelope.find(f"{{{SOAP_NS}}}Body/{{{PROCESS_NS}}}ProcessRequest/{{{PROCESS_NS}}}requestMsg")
    assert encoded is not None and encoded.text
    return SafeET.fromstring(base64.b64decode(encoded.text, validate=True))


def text(element: Element, path: str) -> str | None:
    found = element.find(path)
    return None if found is None else found.text


# --- the refund we send -------------------------------------------------------------------------------

async def test_refund_is_posted_as_soap_to_the_request_handler_with_its_action(adapter, bridgepay):
    route = bridgepay.post(PROCESS_URL).mock(return_value=refund_answer())
    await adapter.refund(make_request())
    assert route.call_count == 1
    request = route.calls.last.request
    assert (request.method, str(request.url)) == ("POST", PROCESS_URL)
    assert request.headers["Content-Type"].split(";")[0].strip() == "text/xml"
    assert request.headers["SOAPAction"].strip('"') == PROCESS_ACTION
    envelope = sent_envelope(route)
    assert envelope.tag == f"{{{SOAP_NS}}}Envelope"
    assert envelope.find(f"{{{SOAP_NS}}}Body/{{{PROCESS_NS}}}ProcessRequest") is not None


async def test_refund_request_header_identifies_the_call_and_authenticates(adapter, bridgepay):
    route = bridgepay.post(PROCESS_URL).mock(return_value=refund_answer())
    await adapter.refund(make_request(refund_id="rf_01J0HEADER"))
    header = sent_refund_message(route)
    assert header.tag == "requestHeader"
    assert text(header, "ClientIdentifier") == "SOAP"
    assert text(header, "TransactionID") == "rf_01J0HEADER"
    assert text(header, "RequestType") == "012"
    assert (text(header, "User"), text(header, "Password")) == (USERNAME, PASSWORD)


async def test_refund_request_date_time_is_now_as_yyyymmddhhmmss(adapter, bridgepay):
    route = bridgepay.post(PROCESS_URL).mock(return_value=refund_answer())
    await adapter.refund(make_request())
    sent = text(sent_refund_message(route), "RequestDateTime")
    assert sent is not None and re.fullmatch(r"[0-9]{14}", sent)
    when = datetime.strptime(sent, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    assert abs(datetime.now(timezone.utc) - when) < timedelta(days=1)  # UTC or the gateway's local time


async def test_refund_message_references_the_sale_in_cents_under_our_merchant(adapter, bridgepay):
    route = bridgepay.post(PROCESS_URL).mock(return_value=refund_answer())
    await adapter.refund(make_request(refund_id="rf_01J0MESSAGE", psp_reference="117150001", amount=1999))
    message = sent_refund_message(route).find("requestMessage")
    assert message is not None
    assert text(message, "TransactionType") == "refund"
    assert text(message, "ReferenceNumber") == "117150001"
    assert text(message, "Amount") == "1999"
    assert (text(message, "MerchantCode"), text(message, "MerchantAccountCode")) == (MERCHANT_CODE,
                                                                                     MERCHANT_ACCOUNT_CODE)
    # Our refund id twice: echoed back as TransactionCode, and searchable later as InvoiceNum.
    assert (text(message, "TransactionCode"), text(message, "InvoiceNum")) == ("rf_01J0MESSAGE", "rf_01J0MESSAGE")


async def test_markup_characters_in_values_are_escaped_and_read_back_unchanged(bridgepay):
    password = "p&ss<w>rd\"'"
    adapter = adapter_for(bridgepay, username="user&<co>", password=SecretStr(password),
                          merchant_code="M&<1>", merchant_account_code="A>&<2")
    route = bridgepay.post(PROCESS_URL).mock(return_value=refund_answer())
    try:
        await adapter.refund(make_request(refund_id="rf_<&>\"'", psp_reference="1171&<5>"))
    finally:
        await adapter.aclose()
    assert b"p&ss<w>rd" not in route.calls.last.request.content
    header = sent_refund_message(route)  # it parses: nothing broke out of its element
    message = header.find("requestMessage")
    assert (text(header, "User"), text(header, "Password")) == ("user&<co>", password)
    assert text(header, "TransactionID") == "rf_<&>\"'"
    assert text(message, "ReferenceNumber") == "1171&<5>"
    assert (text(message, "MerchantCode"), text(message, "MerchantAccountCode")) == ("M&<1>", "A>&<2")
    assert text(message, "InvoiceNum") == "rf_<&>\"'"
    assert [child.tag for child in header].count("requestMessage") == 1


@pytest.mark.parametrize("currency", ["EUR", "GBP", "CAD"])
async def test_refund_in_another_currency_than_usd_is_declined_without_calling_bridgepay(adapter, bridgepay,
                                                                                          currency):
    route = bridgepay.post(PROCESS_URL).mock(return_value=refund_answer())
    result = await adapter.refund(make_request(currency=currency))
    assert result.outcome is Outcome.DECLINED
    assert result.decline_code == "currency_not_supported"
    assert route.call_count == 0
    assert len(bridgepay.calls) == 0


# --- answers ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("gateway_message", "response_type"), [
    ("A02 - Credit Posted", "refund"),
    ("A03 - Void Posted", "void"),
    ("A07 - Partial Void Posted", "void"),
    ("A08 - Partial Refund Posted", "refund"),
], ids=["A02", "A03", "A07", "A08"])
async def test_posted_refund_or_void_succeeds_with_the_new_gateway_trans_id(adapter, bridgepay, gateway_message,
                                                                             response_type):
    bridgepay.post(PROCESS_URL).mock(return_value=refund_answer(
        "00000", gateway_message, trans_id="117159999", response_type=response_type, remaining="2500"))
    result = await adapter.refund(make_request())
    assert result.outcome is Outcome.SUCCEEDED
    assert result.psp_refund_id == "117159999"
    assert result.psp_refund_id != SALE_ID
    assert result.decline_code is None
    assert result.details == {"bridgepay_type": response_type, "remaining_amount": "2500",
                              "gateway_message": gateway_message}


async def test_pending_x02_is_pending_with_the_new_gateway_trans_id(adapter, bridgepay):
    bridgepay.post(PROCESS_URL).mock(return_value=refund_answer("00000", "X02 - Pending", trans_id="117159998"))
    result = await adapter.refund(make_request())
    assert (result.outcome, result.psp_refund_id) == (Outcome.PENDING, "117159998")


@pytest.mark.parametrize("gateway_message", ["A11 - Approved But Reversal Failed", "Z99 - Something New",
                                             "Approved", None],
                         ids=["A11", "unknown prefix", "no prefix", "no gateway message"])
async def test_success_code_with_a_message_we_do_not_know_needs_attention_never_success(adapter, bridgepay,
                                                                                        gateway_message):
    bridgepay.post(PROCESS_URL).mock(return_value=refund_answer("00000", gateway_message))
    result = await adapter.refund(make_request())
    assert result.outcome is Outcome.NEEDS_ATTENTION
    assert result.message


async def test_success_message_without_a_gateway_trans_id_needs_attention(adapter, bridgepay):
    bridgepay.post(PROCESS_URL).mock(return_value=refund_answer("00000", "A02 - Credit Posted", trans_id=None))
    assert (await adapter.refund(make_request())).outcome is Outcome.NEEDS_ATTENTION


async def test_success_code_without_a_response_message_needs_attention(adapter, bridgepay):
    bridgepay.post(PROCESS_URL).mock(return_value=refund_answer("00000", with_message=False))
    assert (await adapter.refund(make_request())).outcome is Outcome.NEEDS_ATTENTION


DECLINES = {
    "D01 denied by the bank": ("30032", "D01 - Declined", "declined"),
    "D18 bad amount": ("30026", "D18 - Bad Amount", "amount_too_large"),
    "already voided": ("10042", "D01 - Already Voided", "already_voided"),
    "E08 refunds not allowed": ("30050", "E08 - Refunds Not Allowed", "refunds_not_allowed"),
    "daily refund limit": ("30027", None, "refund_limit_reached"),
    "refund not processed": ("30047", None, "refund_not_processed"),
    "invalid reference": ("10055", None, "invalid_reference"),
    "transaction not found": ("800011", None, "transaction_not_found"),
    "invalid void request": ("10033", None, "invalid_void"),
}


@pytest.mark.parametrize(("code", "gateway_message", "decline_code"), DECLINES.values(), ids=DECLINES.keys())
async def test_refusal_is_a_decline_with_the_raw_response_code_kept(adapter, bridgepay, code, gateway_message,
                                                                    decline_code):
    bridgepay.post(PROCESS_URL).mock(return_value=refund_answer(code, gateway_message, trans_id=None,
                                                                description="Refused"))
    result = await adapter.refund(make_request())  # a value, no exception
    assert result.outcome is Outcome.DECLINED
    assert result.processor_code == code
    assert result.decline_code == decline_code
    assert code in result.message


@pytest.mark.parametrize("code", ["30055", "40001", "ABCDE"])
async def test_unknown_response_code_needs_attention_with_the_code_kept(adapter, bridgepay, code):
    bridgepay.post(PROCESS_URL).mock(return_value=refund_answer(code, None, trans_id=None))
    result = await adapter.refund(make_request())
    assert result.outcome is Outcome.NEEDS_ATTENTION
    assert result.processor_code == code


@pytest.mark.parametrize(("code", "gateway_message", "root"), [
    ("20002", None, "ErrorResponse"),
    ("20003", None, "ErrorResponse"),
    ("20003", "E02 - Network Unavailable", "VoidRefund"),
    ("20009", "E02 - Network Unavailable", "VoidRefund"),
], ids=["internal error", "service unavailable", "20003 E02 network unavailable", "E02 with another code"])
async def test_bridgepay_saying_it_did_nothing_is_transient(adapter, bridgepay, code, gateway_message, root):
    bridgepay.post(PROCESS_URL).mock(return_value=refund_answer(code, gateway_message, root=root, trans_id=None,
                                                                with_message=gateway_message is not None))
    with pytest.raises(TransientProcessorError) as info:
        await adapter.refund(make_request())
    assert info.value.code == code


@pytest.mark.parametrize(("code", "gateway_message"), [("30036", None), ("30036", "D09 - Duplicate"),
                                                       ("30099", "D09 - Duplicate")],
                         ids=["30036", "30036 D09", "D09"])
async def test_duplicate_flag_means_the_first_may_have_been_carried_out(adapter, bridgepay, code, gateway_message):
    bridgepay.post(PROCESS_URL).mock(return_value=refund_answer(code, gateway_message, trans_id=None))
    with pytest.raises(OutcomeUnknownError):
        await adapter.refund(make_request())


@pytest.mark.parametrize("code", ["10024", "10028", "10001", "99999", "10022", "10029"],
                         ids=["invalid credentials", "bad amount format", "missing reference", "unknown error",
                              "invalid request type", "bad date/time"])
async def test_bridgepay_refusing_our_request_is_a_protocol_error(adapter, bridgepay, code):
    bridgepay.post(PROCESS_URL).mock(return_value=refund_answer(code, None, root="ErrorResponse",
                                                                with_message=False))
    with pytest.raises(ProcessorProtocolError) as info:
        await adapter.refund(make_request())
    assert info.value.code == code


@pytest.mark.parametrize("code", ["30060", "00000"], ids=["refusal code", "success code"])
async def test_e09_processing_error_needs_attention_never_a_decline_or_a_success(adapter, bridgepay, code):
    # A processing error says nothing about whether the refund was carried out: failing it would
    # release the balance for a second refund, and it cannot be counted as done either.
    bridgepay.post(PROCESS_URL).mock(return_value=refund_answer(code, "E09 - Processing Error", trans_id=None))
    result = await adapter.refund(make_request())
    assert (result.outcome, result.processor_code) == (Outcome.NEEDS_ATTENTION, code if code != "00000" else "E09")
    assert "E09" in result.message
    decision = decide(result)
    assert (decision.target.status, decision.target.stage) == (Status.REQUIRES_ATTENTION, Stage.OUTCOME_UNKNOWN)


async def test_soap_fault_on_the_refund_is_a_protocol_error(adapter, bridgepay):
    bridgepay.post(PROCESS_URL).respond(500, content=soap_fault("The message with Action '' cannot be processed",
                                                                "s:Client"))
    with pytest.raises(ProcessorProtocolError) as info:
        await adapter.refund(make_request())
    assert info.value.code == "soap_fault"


# --- transport faults ----------------------------------------------------------------------------------

async def test_connection_refused_on_the_refund_is_transient(adapter, bridgepay):
    bridgepay.post(PROCESS_URL).mock(side_effect=httpx.ConnectError("connection refused"))
    with pytest.raises(TransientProcessorError):
        await adapter.refund(make_request())


@pytest.mark.parametrize("fault", [httpx.ReadTimeout("read timed out"),
                                   httpx.RemoteProtocolError("server disconnected without sending a response")],
                         ids=lambda e: type(e).__name__)
async def test_no_answer_after_sending_the_refund_is_an_unknown_outcome(adapter, bridgepay, fault):
    bridgepay.post(PROCESS_URL).mock(side_effect=fault)
    with pytest.raises(OutcomeUnknownError):
        await adapter.refund(make_request())


@pytest.mark.parametrize("status", [502, 503, 504])
@pytest.mark.parametrize("body", [b"Bad Gateway", b""], ids=["plain text", "empty"])
async def test_5xx_with_a_non_xml_body_on_the_refund_is_an_unknown_outcome(adapter, bridgepay, status, body):
    bridgepay.post(PROCESS_URL).respond(status, content=body)
    with pytest.raises(OutcomeUnknownError) as info:
        await adapter.refund(make_request())
    assert info.value.code == str(status)


@pytest.mark.parametrize(("status", "page"), [(502, NGINX_502_PAGE), (503, IIS_503_PAGE)], ids=["nginx", "iis"])
async def test_5xx_with_an_html_error_page_on_the_refund_is_an_unknown_outcome(adapter, bridgepay, status, page):
    bridgepay.post(PROCESS_URL).respond(status, content=page, headers={"Content-Type": "text/html"})
    with pytest.raises(OutcomeUnknownError):
        await adapter.refund(make_request())


@pytest.mark.parametrize("status", [301, 400, 401, 404])
async def test_unexpected_http_status_on_the_refund_is_a_protocol_error(adapter, bridgepay, status):
    bridgepay.post(PROCESS_URL).respond(status, content=b"<html>nope</html>")
    with pytest.raises(ProcessorProtocolError):
        await adapter.refund(make_request())


# --- hostile and malformed answers ----------------------------------------------------------------------

@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
async def test_hostile_or_malformed_answer_to_the_refund_is_a_protocol_error(adapter, bridgepay, body):
    bridgepay.post(PROCESS_URL).respond(200, content=body)
    with pytest.raises(ProcessorProtocolError) as info:
        await adapter.refund(make_request())
    assert "root:" not in str(info.value)  # nothing of /etc/passwd leaks into the message


@pytest.mark.parametrize("body", [BILLION_LAUGHS_ENVELOPE, EXTERNAL_ENTITY_ENVELOPE, DEEP_ENVELOPE, b"",
                                  b"not xml"], ids=["billion laughs", "external entity", "5000 deep", "empty",
                                                    "not xml"])
async def test_hostile_or_malformed_answer_to_the_lookup_is_a_protocol_error(adapter, bridgepay, body):
    bridgepay.post(REPORTING_URL).respond(200, content=body)
    with pytest.raises(ProcessorProtocolError):
        await adapter.lookup_refund(make_request(), None)


class EndlessBody:
    """A streamed answer of `size` bytes (no Content-Length) that counts how much was read."""

    def __init__(self, size: int = 32 * 1024 * 1024, chunk: int = 64 * 1024):
        self.size, self.chunk, self.served = size, chunk, 0

    async def __aiter__(self):
        head = (f'<s:Envelope xmlns:s="{SOAP_NS}"><s:Body><ProcessRequestResponse xmlns="{PROCESS_NS}">'
                "<ProcessRequestResult>").encode()
        self.served += len(head)
        yield head
        filler = b"QUFB" * (self.chunk // 4)
        while self.served < self.size:
            self.served += len(filler)
            yield filler


@pytest.mark.parametrize("url", [PROCESS_URL, REPORTING_URL], ids=["refund", "lookup"])
async def test_answer_over_one_mib_is_a_protocol_error_read_no_further(adapter, bridgepay, url):
    body = EndlessBody()
    bridgepay.post(url).mock(side_effect=lambda request: httpx.Response(200, content=body))
    with pytest.raises(ProcessorProtocolError) as info:
        if url == PROCESS_URL:
            await adapter.refund(make_request())
        else:
            await adapter.lookup_refund(make_request(), None)
    assert info.value.code == "too_large"
    assert body.served < 2 * 1024 * 1024


async def test_answer_padded_to_almost_one_mib_is_still_read(adapter, bridgepay):
    padded = process_answer(response_xml()).replace(b"<s:Body>", b"<s:Body>" + b" " * (1000 * 1024))
    bridgepay.post(PROCESS_URL).respond(200, content=padded)
    assert (await adapter.refund(make_request())).outcome is Outcome.SUCCEEDED


@pytest.mark.parametrize("body", [b'<?xml version="1.0" encoding="bogus"?><s:Envelope/>',
                                  process_answer(b'<?xml version="1.0" encoding="bogus"?><VoidRefund/>')],
                         ids=["envelope", "decoded result"])
async def test_answer_declaring_an_unknown_encoding_is_a_protocol_error(adapter, bridgepay, body):
    bridgepay.post(PROCESS_URL).respond(200, content=body)
    with pytest.raises(ProcessorProtocolError):
        await adapter.refund(make_request())


async def test_answer_with_a_content_encoding_its_body_does_not_have_is_a_protocol_error(adapter, bridgepay):
    # A raw stream, so that decoding happens while the adapter reads it (not when the mock is built).
    bridgepay.post(PROCESS_URL).mock(return_value=httpx.Response(
        200, headers={"Content-Encoding": "gzip"}, stream=httpx.ByteStream(b"plainly not gzip")))
    with pytest.raises(ProcessorProtocolError):
        await adapter.refund(make_request())


BODIES = st.one_of(
    st.binary(max_size=512),
    st.binary(max_size=512).map(process_answer),
    st.builds(response_xml, code=st.text(max_size=8), gateway_message=st.none() | st.text(max_size=20),
              root=st.sampled_from(["VoidRefund", "ErrorResponse", "Auth"]), trans_id=st.none() | st.text(max_size=10),
              with_message=st.booleans()).map(process_answer),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=BODIES, status=st.sampled_from([200, 500, 503]))
def test_any_answer_body_gives_a_result_or_a_processor_error_and_nothing_else(body, status):
    async def ask() -> list[RefundResult | ProcessorError | None]:
        adapter = BridgePayAdapter(make_config(), transport=httpx.MockTransport(
            lambda request: httpx.Response(status, content=body)))
        answers: list[RefundResult | ProcessorError | None] = []
        try:
            for call in (adapter.refund(make_request()), adapter.lookup_refund(make_request(), None)):
                try:
                    answers.append(await call)
                except ProcessorError as e:
                    answers.append(e)
        finally:
            await adapter.aclose()
        return answers

    refunded, found = asyncio.run(ask())
    assert isinstance(refunded, (RefundResult, ProcessorError))
    assert found is None or isinstance(found, (RefundResult, ProcessorError))


# --- look-ups ---------------------------------------------------------------------------------------------

async def test_lookup_asks_the_reporting_api_by_our_refund_id_as_invoice_number(adapter, bridgepay):
    route = bridgepay.post(REPORTING_URL).mock(return_value=reporting_answer([]))
    await adapter.lookup_refund(make_request(refund_id="rf_01J0LOOKUP"), None)
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.headers["Content-Type"].split(";")[0].strip() == "text/xml"
    assert request.headers["SOAPAction"].strip('"') == REPORTING_ACTION
    call = sent_envelope(route).find(f"{{{SOAP_NS}}}Body/{{{REPORTING_NS}}}PublicGetTransactionsByFilter")
    assert call is not None
    assert text(call, f"{{{REPORTING_NS}}}UserName") == USERNAME
    assert text(call, f"{{{REPORTING_NS}}}Password") == PASSWORD
    assert text(call, f"{{{REPORTING_NS}}}filter/{{{REPORTING_NS}}}InvoiceNumber") == "rf_01J0LOOKUP"


async def test_lookup_goes_to_the_reporting_base_url_when_one_is_configured(bridgepay):
    elsewhere = "https://reporting.bridgepay.test/Bridgepay.Reporting.API/ReportingAPI.svc"
    there = bridgepay.post(elsewhere).mock(return_value=reporting_answer([row()]))
    here = bridgepay.post(REPORTING_URL).mock(return_value=reporting_answer([]))
    adapter = adapter_for(bridgepay, reporting_base_url="https://reporting.bridgepay.test/")
    try:
        found = await adapter.lookup_refund(make_request(), None)
    finally:
        await adapter.aclose()
    assert (there.call_count, here.call_count) == (1, 0)
    assert found is not None and found.psp_refund_id == NEW_ID


@pytest.mark.parametrize(("kind", "bridgepay_type"), [("Refund", "refund"), ("Void", "void"), ("Credit", "refund"),
                                                    ("CREDIT", "refund")])
async def test_lookup_finds_our_executed_refund_void_or_credit_as_succeeded(adapter, bridgepay, kind, bridgepay_type):
    bridgepay.post(REPORTING_URL).mock(return_value=reporting_answer([
        row(SALE_ID, invoice="INV-2024-0042", type="Sale"), row("117150042", type=kind, remaining="3000")]))
    found = await adapter.lookup_refund(make_request(), None)
    assert found is not None
    assert (found.outcome, found.psp_refund_id) == (Outcome.SUCCEEDED, "117150042")
    assert found.details == {"bridgepay_type": bridgepay_type, "remaining_amount": "3000"}


@pytest.mark.parametrize("kind", ["Return", ""], ids=["a type we do not know", "no type"])
async def test_lookup_finding_our_refund_under_a_type_we_do_not_know_needs_attention_not_a_resend(adapter, bridgepay,
                                                                                              kind):
    bridgepay.post(REPORTING_URL).mock(return_value=reporting_answer([row("117150042", type=kind)]))
    found = await adapter.lookup_refund(make_request(), None)
    assert found is not None
    assert (found.outcome, found.psp_refund_id) == (Outcome.NEEDS_ATTENTION, "117150042")
    decision = decide(found)
    assert (decision.target.status, decision.target.stage) == (Status.REQUIRES_ATTENTION, Stage.OUTCOME_UNKNOWN)


LOOKUP_MISSES = {
    "no rows": [],
    "another refund id": [row(invoice="rf_someone_else")],
    "a sale under our id": [row(type="Sale")],
    "a declined refund": [row(code="30032")],
    "a refund our id is only part of": [row(invoice=f"{REFUND_ID}-2")],
}


@pytest.mark.parametrize("rows", LOOKUP_MISSES.values(), ids=LOOKUP_MISSES.keys())
async def test_lookup_without_an_executed_refund_of_ours_is_none(adapter, bridgepay, rows):
    bridgepay.post(REPORTING_URL).mock(return_value=reporting_answer(rows))
    assert await adapter.lookup_refund(make_request(), None) is None


async def test_lookup_finding_two_executed_refunds_of_ours_is_a_duplicate_needing_attention(adapter, bridgepay):
    bridgepay.post(REPORTING_URL).mock(return_value=reporting_answer([row("117150042"), row("117150043")]))
    found = await adapter.lookup_refund(make_request(), None)
    assert found is not None
    assert (found.psp_refund_id, found.duplicate_psp_refund_ids) == ("117150042", ("117150043",))
    decision = decide(found)
    assert (decision.target.status, decision.target.stage) == (Status.REQUIRES_ATTENTION, Stage.DONE)
    assert decision.failure_code == "duplicate_at_processor"
    assert decision.duplicate_ids == ("117150043",)
    assert "117150042" in decision.failure_message and "117150043" in decision.failure_message


async def test_lookup_answered_with_a_soap_fault_is_a_protocol_error(adapter, bridgepay):
    bridgepay.post(REPORTING_URL).respond(500, content=soap_fault("Invalid credentials", "s:Client"))
    with pytest.raises(ProcessorProtocolError):
        await adapter.lookup_refund(make_request(), None)


async def test_lookup_answer_without_a_result_is_a_protocol_error(adapter, bridgepay):
    bridgepay.post(REPORTING_URL).respond(200, content=soap(
        f'<PublicGetTransactionsByFilterResponse xmlns="{REPORTING_NS}"/>'))
    with pytest.raises(ProcessorProtocolError):
        await adapter.lookup_refund(make_request(), None)


@pytest.mark.parametrize("fault", [httpx.ConnectError("refused"), httpx.ReadTimeout("read timed out"),
                                   httpx.RemoteProtocolError("server disconnected")],
                         ids=lambda e: type(e).__name__)
async def test_lookup_without_an_answer_is_transient_because_it_changes_nothing(adapter, bridgepay, fault):
    bridgepay.post(REPORTING_URL).mock(side_effect=fault)
    with pytest.raises(TransientProcessorError):
        await adapter.lookup_refund(make_request(), None)


async def test_lookup_5xx_with_a_non_xml_body_is_transient(adapter, bridgepay):
    bridgepay.post(REPORTING_URL).respond(503, content=b"Service Unavailable")
    with pytest.raises(TransientProcessorError):
        await adapter.lookup_refund(make_request(), None)


# --- webhooks -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "body"), [
    ({}, b""),
    ({"Content-Type": "text/xml"}, process_answer(response_xml())),
    ({"Stripe-Signature": "t=1,v1=" + "0" * 64}, b'{"id": "evt_1", "type": "refund.updated"}'),
], ids=["empty", "a refund answer", "json with a signature"])
def test_any_webhook_is_rejected_because_bridgepay_sends_none(adapter, headers, body):
    with pytest.raises(WebhookVerificationError):
        adapter.parse_webhook(headers, body)


# --- where each answer takes the refund -------------------------------------------------------------------

LEDGER_CASES = {
    "A08 partial refund": (refund_answer("00000", "A08 - Partial Refund Posted"), Status.SUCCEEDED, Stage.DONE, None),
    "A03 void": (refund_answer("00000", "A03 - Void Posted", response_type="void"), Status.SUCCEEDED, Stage.DONE,
                 None),
    "X02 pending": (refund_answer("00000", "X02 - Pending"), Status.PENDING, Stage.PENDING_AT_PROCESSOR, None),
    "A11 reversal failed": (refund_answer("00000", "A11 - Approved But Reversal Failed"), Status.REQUIRES_ATTENTION,
                            Stage.OUTCOME_UNKNOWN, "unrecognised_processor_status"),
    "unknown code": (refund_answer("40001", None, trans_id=None), Status.REQUIRES_ATTENTION, Stage.OUTCOME_UNKNOWN,
                     "unrecognised_processor_status"),
    "30032 denied": (refund_answer("30032", "D01 - Declined", trans_id=None), Status.FAILED, Stage.DONE,
                     "declined"),
    "10042 already voided": (refund_answer("10042", None, trans_id=None), Status.FAILED, Stage.DONE,
                             "already_voided"),
    "20003 unavailable": (refund_answer("20003", None, root="ErrorResponse", with_message=False),
                          Status.REQUIRES_ATTENTION, Stage.NOT_SENT, "retries_exhausted"),
    "30036 duplicate": (refund_answer("30036", "D09 - Duplicate", trans_id=None), Status.REQUIRES_ATTENTION,
                        Stage.OUTCOME_UNKNOWN, "outcome_unknown"),
    "10024 credentials": (refund_answer("10024", None, root="ErrorResponse", with_message=False),
                          Status.REQUIRES_ATTENTION, Stage.OUTCOME_UNKNOWN, "processor_protocol_error"),
    "soap fault": (httpx.Response(500, content=soap_fault()), Status.REQUIRES_ATTENTION, Stage.OUTCOME_UNKNOWN,
                   "processor_protocol_error"),
    "billion laughs": (httpx.Response(200, content=BILLION_LAUGHS_RESULT), Status.REQUIRES_ATTENTION,
                       Stage.OUTCOME_UNKNOWN, "processor_protocol_error"),
    "502 plain text": (httpx.Response(502, content=b"Bad Gateway"), Status.REQUIRES_ATTENTION,
                       Stage.OUTCOME_UNKNOWN, "outcome_unknown"),
    "connect error": (httpx.ConnectError("refused"), Status.REQUIRES_ATTENTION, Stage.NOT_SENT, "retries_exhausted"),
    "read timeout": (httpx.ReadTimeout("timed out"), Status.REQUIRES_ATTENTION, Stage.OUTCOME_UNKNOWN,
                     "outcome_unknown"),
}


@pytest.mark.parametrize(("reply", "status", "stage", "failure_code"), LEDGER_CASES.values(), ids=LEDGER_CASES.keys())
async def test_each_bridgepay_answer_leads_the_refund_to_its_intended_status_and_stage(adapter, bridgepay, reply,
                                                                                       status, stage, failure_code):
    route = bridgepay.post(PROCESS_URL)
    if isinstance(reply, Exception):
        route.mock(side_effect=reply)
    else:
        route.mock(return_value=reply)
    try:
        outcome: RefundResult | BaseException = await adapter.refund(make_request())
    except ProcessorError as e:
        outcome = e
    decision = decide(outcome)
    assert (decision.target.status, decision.target.stage, decision.failure_code) == (status, stage, failure_code)


async def test_succeeded_answer_records_the_refunds_gateway_trans_id_and_its_details(adapter, bridgepay):
    bridgepay.post(PROCESS_URL).mock(return_value=refund_answer("00000", "A02 - Credit Posted", trans_id="117150077",
                                                                remaining="0"))
    decision = decide(await adapter.refund(make_request()))
    assert decision.psp_refund_id == "117150077"
    assert decision.details == {"bridgepay_type": "refund", "remaining_amount": "0",
                                "gateway_message": "A02 - Credit Posted"}


async def test_currency_decline_fails_the_refund_with_currency_not_supported(adapter, bridgepay):
    decision = decide(await adapter.refund(make_request(currency="EUR")))
    assert (decision.target.status, decision.target.stage) == (Status.FAILED, Stage.DONE)
    assert decision.failure_code == "currency_not_supported"
    assert len(bridgepay.calls) == 0
