"""BridgeComm's wire shapes and their mapping to ours: the SOAP envelopes, the request XML of a
refund (RequestType 012), its answers, and the Reporting API's rows. Pure functions.

Answers are parsed with defusedxml (no DTDs, no entity expansion, no external entities), and
arrive capped in size (max_answer_bytes, read by adapters.http): a hostile or malformed answer is a
protocol error, never a crash.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from xml.etree.ElementTree import Element, SubElement, tostring

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

from adapters.base import (
    CredentialCheck,
    CredentialStatus,
    OutcomeUnknownError,
    ProcessorProtocolError,
    ProcessorRefund,
    RefundRequest,
    RefundResult,
    TransientProcessorError,
)
from gateway.domain.refunds import NextAction, Outcome

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PROCESS_NS = "http://bridgepaynetsecuretx.com/requesthandler"
PROCESS_ACTION = f"{PROCESS_NS}/IRequestHandler/ProcessRequest"
REPORTING_NS = "http://tempuri.org/"
REPORTING_ACTION = f"{REPORTING_NS}IReportingAPI/PublicGetTransactionsByFilter"
SOFTWARE_VENDOR = "psp-gateway"

SUCCEEDED_MESSAGES = {"A02", "A03", "A07", "A08"}  # credit, void, partial void, partial refund posted
PENDING_MESSAGES = {"X02"}
# Final refusals, with the raw ResponseCode kept and a normalised code beside it.
DECLINES = {
    "30032": "declined", "30026": "amount_too_large", "10042": "already_voided", "30027": "refund_limit_reached",
    "30047": "refund_not_processed", "10033": "invalid_void", "800011": "transaction_not_found",
    "10055": "invalid_reference",
}
DECLINE_MESSAGES = {"D01": "declined", "D18": "amount_too_large", "E08": "refunds_not_allowed"}
# What the billing core can do next, by ResponseCode, then GatewayMessage prefix (and our own code for
# a currency BridgePay does not refund in). A code not here needs a person: CONTACT_SUPPORT.
NEXT_ACTIONS = {
    "30032": NextAction.REFUND_OFFLINE,  # denied by the bank
    "D01": NextAction.REFUND_OFFLINE,
    "10042": NextAction.REFUND_OFFLINE,  # already voided: the payment's one void is spent
    "10033": NextAction.REFUND_OFFLINE,  # invalid void
    "currency_not_supported": NextAction.REFUND_OFFLINE,
    "30027": NextAction.RETRY,  # daily refund limit reached
    "30047": NextAction.RETRY,  # refund not processed
    "30026": NextAction.CONTACT_SUPPORT,  # more than BridgePay thinks is left
    "D18": NextAction.CONTACT_SUPPORT,
    "800011": NextAction.CONTACT_SUPPORT,  # transaction not found
    "10055": NextAction.CONTACT_SUPPORT,  # invalid reference number
    "E08": NextAction.CONTACT_SUPPORT,  # refunds not allowed on the account
    # A duplicate; refund_answer raises OutcomeUnknownError for it, so the table is for the record.
    "30036": NextAction.CONTACT_SUPPORT,
    "D09": NextAction.CONTACT_SUPPORT,
}
TRANSIENT_CODES = {"20002", "20003"}  # internal error, service unavailable: nothing was done
TRANSIENT_MESSAGES = {"E02"}  # network unavailable
# Our request was wrong (bad credentials, format): a person must look, retrying cannot help.
REQUEST_ERRORS = {"10001", "10022", "10024", "10028", "10029", "99999"}
INVALID_CREDENTIALS = "10024"
PING_REQUEST_TYPE = "099"
# The Reporting API's TransactionType of an executed refund of ours, and what we call it. Any other
# type but a sale under our invoice number is ours too, under a name we do not know: found, for a
# person to look at (reporting nothing would send the refund again).
REPORTED_REFUND_TYPES = {"refund": "refund", "credit": "refund", "void": "void"}
# An invoice number no refund of ours can have (ours are refund ids): a Reporting API query for it
# finds nothing, and only checks that the query is allowed.
CREDENTIALS_CHECK_INVOICE = "psp-gateway-credentials-check"
# The Reporting API's dates (filters and a row's SaleDateTime): xs:dateTime as .NET writes a DateTime
# of no kind, so without a zone. BridgePay documents none; we send and read them as UTC.
REPORT_DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
_REPORT_DATE = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d{1,7})?(Z|[+-]\d{2}:\d{2})?")
OUR_REFUND_ID_PREFIX = "rf_"  # the gateway's refund ids, sent as InvoiceNum


def _text(parent: Element, tag: str) -> str | None:
    child = parent.find(tag)
    return child.text.strip() if child is not None and child.text else None


def _element(parent: Element, tag: str, text: str) -> None:
    SubElement(parent, tag).text = text


def _envelope(body: Element) -> bytes:
    envelope = Element(f"{{{SOAP_NS}}}Envelope")
    SubElement(envelope, f"{{{SOAP_NS}}}Body").append(body)
    return b'<?xml version="1.0" encoding="utf-8"?>' + tostring(envelope)


def _process_request(transaction_id: str, request_type: str, message: list[tuple[str, str]], *, username: str,
                     password: str, now: datetime | None) -> bytes:
    """A ProcessRequest envelope: the requestHeader document, base64 inside requestMsg."""
    header = Element("requestHeader")
    for tag, value in (("ClientIdentifier", "SOAP"), ("TransactionID", transaction_id), ("RequestType", request_type),
                       ("RequestDateTime", (now or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S")),
                       ("User", username), ("Password", password)):
        _element(header, tag, value)
    request_message = SubElement(header, "requestMessage")
    for tag, value in message:
        _element(request_message, tag, value)
    process = Element(f"{{{PROCESS_NS}}}ProcessRequest")
    _element(process, f"{{{PROCESS_NS}}}requestMsg", base64.b64encode(tostring(header)).decode())
    return _envelope(process)


def refund_envelope(request: RefundRequest, *, username: str, password: str, merchant_code: str,
                    merchant_account_code: str, now: datetime | None = None) -> bytes:
    """The SOAP body of a refund: RequestType 012 with our refund id as TransactionID and InvoiceNum."""
    return _process_request(request.refund_id, "012", [
        ("SoftwareVendor", SOFTWARE_VENDOR), ("TransactionType", "refund"),
        ("ReferenceNumber", request.psp_reference), ("Amount", str(request.amount)),
        ("MerchantCode", merchant_code), ("MerchantAccountCode", merchant_account_code),
        ("TransactionCode", request.refund_id), ("InvoiceNum", request.refund_id)],
        username=username, password=password, now=now)


def ping_envelope(transaction_id: str, *, username: str, password: str, merchant_code: str,
                  merchant_account_code: str, now: datetime | None = None) -> bytes:
    """RequestType 099, a ping: it moves nothing, and with the merchant codes BridgePay checks them
    along with the user name and password."""
    return _process_request(transaction_id, PING_REQUEST_TYPE, [
        ("SoftwareVendor", SOFTWARE_VENDOR), ("MerchantCode", merchant_code),
        ("MerchantAccountCode", merchant_account_code)], username=username, password=password, now=now)


def _reporting_call(criteria: list[tuple[str, str]], *, username: str, password: str) -> bytes:
    """PublicGetTransactionsByFilter. The filter's fields go in alphabetical order: a WCF data
    contract reads them in that order and silently skips one out of place."""
    call = Element(f"{{{REPORTING_NS}}}PublicGetTransactionsByFilter")
    _element(call, f"{{{REPORTING_NS}}}UserName", username)
    _element(call, f"{{{REPORTING_NS}}}Password", password)
    flt = SubElement(call, f"{{{REPORTING_NS}}}filter")
    for tag, value in criteria:
        _element(flt, f"{{{REPORTING_NS}}}{tag}", value)
    return _envelope(call)


def lookup_envelope(invoice_number: str, *, username: str, password: str) -> bytes:
    """The Reporting API's PublicGetTransactionsByFilter, filtered by InvoiceNumber."""
    return _reporting_call([("InvoiceNumber", invoice_number), ("Skip", "0"), ("Take", "50")],
                           username=username, password=password)


def listing_envelope(since: datetime, until: datetime, *, skip: int, take: int, username: str,
                     password: str) -> bytes:
    """PublicGetTransactionsByFilter over a date range (DateRangeFrom, DateRangeTo: both ends taken
    as inclusive), one page of it (Skip, Take). The Reporting API's dates carry no zone: we send UTC,
    widened to whole seconds (since down, until up); list_refunds keeps [since, until) itself."""
    date_to = until.astimezone(timezone.utc)
    if date_to.microsecond:
        date_to = date_to.replace(microsecond=0) + timedelta(seconds=1)
    return _reporting_call([("DateRangeFrom", since.astimezone(timezone.utc).strftime(REPORT_DATE_FORMAT)),
                            ("DateRangeTo", date_to.strftime(REPORT_DATE_FORMAT)),
                            ("Skip", str(skip)), ("Take", str(take))], username=username, password=password)


def parse_xml(data: bytes, what: str) -> Element:
    try:
        return fromstring(data, forbid_dtd=True)
    except (ParseError, DefusedXmlException, ValueError, LookupError) as e:  # LookupError: unknown encoding
        raise ProcessorProtocolError(f"BridgePay {what} is not safe, well-formed XML: {type(e).__name__}",
                                     code="unparseable") from None


def is_soap_envelope(data: bytes) -> bool:
    try:
        return parse_xml(data, "answer").tag == f"{{{SOAP_NS}}}Envelope"
    except ProcessorProtocolError:
        return False


def _soap_body(envelope: bytes) -> Element:
    root = parse_xml(envelope, "answer")
    body = root.find(f"{{{SOAP_NS}}}Body")
    if root.tag != f"{{{SOAP_NS}}}Envelope" or body is None or len(body) != 1:
        raise ProcessorProtocolError("BridgePay answer is not a SOAP envelope with one body", code="unparseable")
    fault = body.find(f"{{{SOAP_NS}}}Fault")
    if fault is not None:
        raise ProcessorProtocolError(f"BridgePay SOAP fault: {_text(fault, 'faultstring') or 'no faultstring'}",
                                     code="soap_fault")
    return body[0]


def process_result(envelope: bytes) -> Element:
    """The decoded response XML inside ProcessRequestResponse/ProcessRequestResult."""
    result = _soap_body(envelope).find(f"{{{PROCESS_NS}}}ProcessRequestResult")
    if result is None or not result.text:
        raise ProcessorProtocolError("BridgePay answer has no ProcessRequestResult", code="unparseable")
    try:
        inner = base64.b64decode(result.text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ProcessorProtocolError("BridgePay ProcessRequestResult is not base64", code="unparseable") from None
    return parse_xml(inner, "response message")


def next_action(code: str | None, prefix: str | None = None) -> NextAction:
    """What to do about a decline, from NEXT_ACTIONS: the ResponseCode first, then the message prefix."""
    return NEXT_ACTIONS.get(code or "") or NEXT_ACTIONS.get(prefix or "") or NextAction.CONTACT_SUPPORT


def refund_answer(response: Element) -> RefundResult:
    """Map a decoded refund answer; exhaustive: what is not known needs attention."""
    code = _text(response, "ResponseCode") or ""
    description = _text(response, "ResponseDescription") or ""
    message_el = response.find("responseMessage")
    message = _text(message_el, "GatewayMessage") if message_el is not None else None
    prefix = (message or "")[:3]
    text = f"{code} {description}".strip() + (f" ({message})" if message else "")
    if response.tag not in ("VoidRefund", "ErrorResponse") or not code:
        raise ProcessorProtocolError(f"BridgePay answered <{response.tag}> without a ResponseCode",
                                     code="unparseable")
    if code in TRANSIENT_CODES or prefix in TRANSIENT_MESSAGES:
        raise TransientProcessorError(f"BridgePay {text}", code=code)
    if code == "30036" or prefix == "D09":
        # BridgePay flags what it thinks is a duplicate: the first one may have been carried out.
        raise OutcomeUnknownError(f"BridgePay flagged a duplicate: {text}", code=code)
    if code in REQUEST_ERRORS:
        raise ProcessorProtocolError(f"BridgePay refused the request: {text}", code=code)
    if code == "00000" and message_el is not None:
        trans_id = _text(message_el, "GatewayTransID")
        details = {"bridgepay_type": _text(message_el, "ResponseType") or "",
                   "remaining_amount": _text(message_el, "RemainingAmount") or "", "gateway_message": message or ""}
        if prefix in SUCCEEDED_MESSAGES and trans_id:
            # A void (of an unsettled sale) is the one BridgePay allows it until the sale settles.
            return RefundResult(Outcome.SUCCEEDED, psp_refund_id=trans_id, processor_code=prefix, details=details,
                                voided_payment=details["bridgepay_type"] == "void")
        if prefix in PENDING_MESSAGES and trans_id:
            return RefundResult(Outcome.PENDING, psp_refund_id=trans_id, processor_code=prefix, details=details)
        return RefundResult(Outcome.NEEDS_ATTENTION, psp_refund_id=trans_id, processor_code=prefix or code,
                            message=f"BridgePay approved with an answer the gateway does not know: {text}",
                            details=details, next_action=NextAction.CONTACT_SUPPORT)
    decline = DECLINES.get(code) or DECLINE_MESSAGES.get(prefix)
    if decline:
        return RefundResult(Outcome.DECLINED, processor_code=code, decline_code=decline, message=text,
                            next_action=next_action(code, prefix))
    return RefundResult(Outcome.NEEDS_ATTENTION, processor_code=code,
                        message=f"BridgePay answered a code the gateway does not know: {text}",
                        next_action=NextAction.CONTACT_SUPPORT)


def reporting_rows(envelope: bytes) -> tuple[int | None, list[dict[str, str]]]:
    """The Reporting API's answer: (TotalCount, when it says; its rows, each a dict of the row's
    fields by name, stripped, with the empty ones left out)."""
    body = _soap_body(envelope)
    result = body.find(f"{{{REPORTING_NS}}}PublicGetTransactionsByFilterResult")
    if result is None:
        raise ProcessorProtocolError("BridgePay reporting answer has no result", code="unparseable")
    total_text = _text(result, f"{{{REPORTING_NS}}}TotalCount")
    total = int(total_text) if total_text and total_text.isascii() and total_text.isdigit() else None
    rows = result.find(f"{{{REPORTING_NS}}}Transactions")
    found = []
    for row in (rows if rows is not None else []):
        fields = {}
        for child in row:
            name = child.tag.rpartition("}")[2]
            if child.tag == f"{{{REPORTING_NS}}}{name}" and child.text and child.text.strip():
                fields.setdefault(name, child.text.strip())
        found.append(fields)
    return total, found


def lookup_answer(envelope: bytes, refund_id: str) -> RefundResult | None:
    """Find our refund (InvoiceNumber = refund id) among the Reporting API's rows."""
    found = []
    for row in reporting_rows(envelope)[1]:
        field = row.get
        reported = field("TransactionType") or ""
        if field("InvoiceNumber") != refund_id or reported.lower() == "sale" or field("ResponseCode") != "00000":
            continue
        kind = REPORTED_REFUND_TYPES.get(reported.lower())
        details = {"bridgepay_type": kind or reported, "remaining_amount": field("RemainingAmount") or ""}
        if kind is None:
            found.append(RefundResult(Outcome.NEEDS_ATTENTION, psp_refund_id=field("TransactionId"),
                                      processor_code="reporting", details=details,
                                      message=f"BridgePay reports our refund with TransactionType {reported!r}",
                                      next_action=NextAction.CONTACT_SUPPORT))
        else:
            found.append(RefundResult(Outcome.SUCCEEDED, psp_refund_id=field("TransactionId"),
                                      processor_code="reporting", details=details, voided_payment=kind == "void"))
    if len(found) > 1:
        # Our refund id went out twice and both were carried out: a person must sort out the money.
        return replace(found[0], duplicate_psp_refund_ids=tuple(r.psp_refund_id or "?" for r in found[1:]),
                       message=f"BridgePay carried out {len(found)} refunds for one refund id")
    return found[0] if found else None


def report_date(text: str | None) -> datetime:
    """A Reporting API date: no zone means UTC (a zone, if one is ever sent, is honoured); .NET's
    seventh fractional digit is dropped. ValueError for anything else."""
    match = _REPORT_DATE.fullmatch(text or "")
    if match is None:
        raise ValueError(f"{text!r} is not an xs:dateTime")
    seconds, fraction, zone = match.groups()
    value = datetime.fromisoformat(seconds + (fraction or "")[:7] + ("+00:00" if zone in (None, "Z") else zone))
    return value.astimezone(timezone.utc)


def _cents(text: str | None) -> int:
    if not text or not text.isascii() or not text.isdigit() or len(text) > 12:
        raise ValueError(f"amount {text!r} is not whole cents")
    return int(text)


def listed_refund(row: dict[str, str]) -> ProcessorRefund | None:
    """A Reporting API row as a refund in BridgePay's books: a Refund, Credit or Void that was
    carried out (ResponseCode 00000), or any row but a sale under one of our refund ids; None for the
    rest (sales, declines, other kinds of transaction). Raises ProcessorProtocolError for a refund
    row that lacks what a listing needs: the listing is then not whole."""
    reported = row.get("TransactionType") or ""
    invoice = row.get("InvoiceNumber")
    ours = invoice if invoice and invoice.startswith(OUR_REFUND_ID_PREFIX) else None
    kind = REPORTED_REFUND_TYPES.get(reported.lower())
    if row.get("ResponseCode") != "00000" or reported.lower() == "sale" or (kind is None and ours is None):
        return None
    status = (row.get("TransactionStatus") or "").lower()
    if kind is None:  # ours, under a type we do not know (as lookup_answer reports it): a person looks
        outcome = Outcome.NEEDS_ATTENTION
    elif kind == "void" and status in ("", "open", "confirmed", "voided"):
        outcome = Outcome.SUCCEEDED  # a void row's own status is Voided: the void took effect
    elif status in ("", "open", "confirmed"):
        outcome = Outcome.SUCCEEDED  # ResponseCode 00000: posted; Confirmed once its batch settled
    elif status == "voided":
        outcome = Outcome.CANCELED  # the refund itself was voided before it settled: no money went out
    else:
        outcome = Outcome.NEEDS_ATTENTION  # exhaustive: a status nobody knows is never a success
    try:
        trans_id = row["TransactionId"]
        # AuthorizedAmount, not RequestedAmount: RequestedAmount is what was asked for, AuthorizedAmount
        # what BridgePay approved and carried out (they differ on a partial approval, and a sale's falls
        # when part of it is voided). The books compare what moved.
        amount = _cents(row.get("AuthorizedAmount"))
        created = report_date(row.get("SaleDateTime"))
    except (KeyError, ValueError, OverflowError) as e:
        raise ProcessorProtocolError(f"BridgePay reported a {reported[:40]} row that cannot be read: {str(e)[:200]}",
                                     code="unparseable") from None
    # ReferenceNumber: the sale's GatewayTransID; empty for a credit that refers to no sale (a blind credit).
    return ProcessorRefund(psp_refund_id=trans_id, payment_reference=row.get("ReferenceNumber") or "", amount=amount,
                           currency="USD", outcome=outcome, created=created, refund_id=ours,
                           kind=kind or reported.lower())


def ping_answer(response: Element) -> CredentialCheck:
    """What a decoded ping answer says about the credentials and merchant codes."""
    code = _text(response, "ResponseCode") or ""
    text = f"{code} {_text(response, 'ResponseDescription') or ''}".strip()
    message_el = response.find("responseMessage")
    message = (_text(message_el, "GatewayMessage") if message_el is not None else None) or ""
    if response.tag == "Ping" and code == "00000":
        return CredentialCheck(CredentialStatus.OK, "user name, password and merchant codes accepted")
    if code == INVALID_CREDENTIALS:
        return CredentialCheck(CredentialStatus.REJECTED,
                               f"{text}: the user name, password or merchant codes were refused")
    if code in TRANSIENT_CODES or message[:3] in TRANSIENT_MESSAGES:
        return CredentialCheck(CredentialStatus.UNREACHABLE, f"BridgePay answered {text}; try again")
    return CredentialCheck(CredentialStatus.UNEXPECTED, f"BridgePay answered <{response.tag}> {text}".strip())


def reporting_credentials_answer(envelope: bytes) -> CredentialCheck:
    """What the Reporting API's answer to a query for CREDENTIALS_CHECK_INVOICE says."""
    try:
        lookup_answer(envelope, CREDENTIALS_CHECK_INVOICE)
    except ProcessorProtocolError as e:
        if e.code == "soap_fault" and "credential" in str(e).lower():
            return CredentialCheck(CredentialStatus.REJECTED, "the Reporting API refused the user name or password")
        return CredentialCheck(CredentialStatus.UNEXPECTED, f"Reporting API: {e}")
    return CredentialCheck(CredentialStatus.OK, "Reporting API query allowed")
