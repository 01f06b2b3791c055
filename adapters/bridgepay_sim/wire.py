"""BridgePay's wire format: SOAP 1.1 envelopes around base64 request and response XML for
RequestHandler.svc, plain SOAP for the Reporting API, and SOAP faults. Incoming XML is parsed with
defusedxml (no DTDs, no entities); outgoing XML is built with ElementTree, so every value is escaped."""

from __future__ import annotations

import base64
import binascii
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterator

import defusedxml.ElementTree as DefusedET
from defusedxml import DefusedXmlException

from adapters.bridgepay_sim.codes import UNKNOWN_ERROR, BridgePayError

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
REQUEST_HANDLER_NS = "http://bridgepaynetsecuretx.com/requesthandler"
REPORTING_NS = "http://tempuri.org/"
PROCESS_PATH = "/PaymentService/RequestHandler.svc"
REPORTING_PATH = "/Bridgepay.Reporting.API/ReportingAPI.svc"
PROCESS_ACTION = f"{REQUEST_HANDLER_NS}/IRequestHandler/ProcessRequest"
REPORTING_ACTION = "http://tempuri.org/IReportingAPI/PublicGetTransactionsByFilter"
XML_DECLARATION = b'<?xml version="1.0" encoding="utf-8"?>'


class EnvelopeError(Exception):
    """The SOAP layer cannot be read: answered with HTTP 400 and a SOAP Fault."""


# -- reading -------------------------------------------------------------------------------------

def parse_xml(data: bytes) -> ET.Element:
    try:
        return DefusedET.fromstring(data, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError) as e:
        raise EnvelopeError(f"not well-formed XML ({type(e).__name__}: {e})") from None


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def child_text(element: ET.Element, name: str) -> str | None:
    """The stripped text of the first child called `name` (any namespace); None if there is none."""
    for child in element:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return None


def children(element: ET.Element) -> dict[str, str]:
    """Leaf children by local name, stripped; the first of a repeated name wins."""
    found: dict[str, str] = {}
    for child in element:
        if len(child) == 0:
            found.setdefault(_local(child.tag), (child.text or "").strip())
    return found


def soap_operation(body: bytes, namespace: str, operation: str) -> ET.Element:
    envelope = parse_xml(body)
    if envelope.tag != f"{{{SOAP_NS}}}Envelope":
        raise EnvelopeError("the root element is not a SOAP 1.1 Envelope")
    soap_body = envelope.find(f"{{{SOAP_NS}}}Body")
    if soap_body is None:
        raise EnvelopeError("the Envelope has no Body")
    found = soap_body.find(f"{{{namespace}}}{operation}")
    if found is None:
        raise EnvelopeError(f"the Body holds no {operation} in namespace {namespace}")
    return found


@dataclass
class Call:
    """One ProcessRequest, decoded. `header` holds requestHeader's leaf children, `message` the
    leaf children of requestMessage."""

    header: dict[str, str]
    message: dict[str, str]

    @property
    def transaction_id(self) -> str:
        return self.header.get("TransactionID", self.header.get("TransactionId", ""))

    @property
    def request_type(self) -> str:
        return self.header.get("RequestType", "")


def read_process_request(body: bytes) -> Call:
    """Raises EnvelopeError (HTTP 400) for a broken envelope, BridgePayError (an ErrorResponse) for a
    requestMsg that is not base64 of a requestHeader document."""
    operation = soap_operation(body, REQUEST_HANDLER_NS, "ProcessRequest")
    encoded = child_text(operation, "requestMsg")
    if not encoded:
        raise EnvelopeError("ProcessRequest has no requestMsg")
    try:
        decoded = base64.b64decode("".join(encoded.split()), validate=True)
    except binascii.Error:
        raise BridgePayError(UNKNOWN_ERROR, "Unknown error: requestMsg is not base64") from None
    try:
        root = parse_xml(decoded)
    except EnvelopeError as e:
        raise BridgePayError(UNKNOWN_ERROR, f"Unknown error: the request message is {e}") from None
    if root.tag != "requestHeader":
        raise BridgePayError(UNKNOWN_ERROR, "Unknown error: the request message's root is not requestHeader")
    message = next((c for c in root if _local(c.tag) == "requestMessage"), None)
    return Call(header=children(root), message={} if message is None else children(message))


@dataclass
class ReportQuery:
    username: str
    password: str
    invoice_number: str | None
    id: str | None
    skip: int
    take: int
    date_from: datetime | None = None  # DateRangeFrom, UTC
    date_to: datetime | None = None  # DateRangeTo, UTC


def _filter_date(criteria: dict[str, str], name: str) -> datetime | None:
    """An xs:dateTime filter value; without a zone (as .NET sends a DateTime of no kind) it is UTC."""
    text = criteria.get(name)
    if not text:
        return None
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,7})?(Z|[+-]\d{2}:\d{2})?", text):
            raise ValueError(text)
        # .NET writes up to 7 fractional digits; Python reads up to 6.
        text = re.sub(r"(\.\d{6})\d", r"\1", text).replace("Z", "+00:00")
        value = datetime.fromisoformat(text)
    except ValueError:
        raise EnvelopeError(f"filter {name} is an xs:dateTime (yyyy-MM-ddTHH:mm:ss)") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def read_reporting_request(body: bytes) -> ReportQuery:
    operation = soap_operation(body, REPORTING_NS, "PublicGetTransactionsByFilter")
    filter_element = next((c for c in operation if _local(c.tag) == "filter"), None)
    criteria = {} if filter_element is None else children(filter_element)
    try:
        skip = int(criteria.get("Skip") or 0)
        take = int(criteria.get("Take") or 50)
    except ValueError:
        raise EnvelopeError("filter Skip and Take are integers") from None
    if skip < 0 or not 1 <= take <= 1000:
        raise EnvelopeError("filter Skip is at least 0 and Take between 1 and 1000")
    return ReportQuery(username=child_text(operation, "UserName") or "",
                       password=child_text(operation, "Password") or "",
                       invoice_number=criteria.get("InvoiceNumber") or None, id=criteria.get("ID") or None,
                       skip=skip, take=take, date_from=_filter_date(criteria, "DateRangeFrom"),
                       date_to=_filter_date(criteria, "DateRangeTo"))


# -- writing -------------------------------------------------------------------------------------

@dataclass
class Reply:
    """A response XML document before encoding: `header` fields under the root in order, then
    `message` (if any) as <responseMessage>."""

    root: str  # Auth, VoidRefund, Ping or ErrorResponse
    header: dict[str, str]
    message: dict[str, str] | None = field(default=None)

    @property
    def code(self) -> str:
        return self.header["ResponseCode"]

    def xml(self) -> bytes:
        root = ET.Element(self.root)
        for name, value in self.header.items():
            ET.SubElement(root, name).text = value
        if self.message is not None:
            message = ET.SubElement(root, "responseMessage")
            for name, value in self.message.items():
                ET.SubElement(message, name).text = value
        return XML_DECLARATION + ET.tostring(root, encoding="unicode").encode()


def _envelope() -> tuple[ET.Element, ET.Element]:
    # Prefixed tag names and xmlns attributes written literally: ET.register_namespace is global and
    # would change how other code in the same process (an adapter under test) serialises.
    envelope = ET.Element("s:Envelope", {"xmlns:s": SOAP_NS})
    return envelope, ET.SubElement(envelope, "s:Body")


def _serialise(envelope: ET.Element) -> bytes:
    return ET.tostring(envelope, encoding="unicode").encode()


def process_response(inner: bytes) -> bytes:
    envelope, body = _envelope()
    response = ET.SubElement(body, "ProcessRequestResponse", {"xmlns": REQUEST_HANDLER_NS})
    ET.SubElement(response, "ProcessRequestResult").text = base64.b64encode(inner).decode()
    return _serialise(envelope)


def soap_fault(code: str, message: str) -> bytes:
    """code: "s:Client" (the caller's fault) or "s:Server"."""
    envelope, body = _envelope()
    fault = ET.SubElement(body, "s:Fault")
    ET.SubElement(fault, "faultcode").text = code
    ET.SubElement(fault, "faultstring", {"xml:lang": "en-US"}).text = message
    return _serialise(envelope)


# SaleDateTime: the TransactionRow's date and time (named so in BridgePay's public reporting sample),
# the row's own: a refund row's is when the refund was made. No zone, as .NET writes it; UTC here.
ROW_FIELDS = ("TransactionId", "TransactionType", "InvoiceNumber", "ReferenceNumber", "RequestedAmount",
              "AuthorizedAmount", "RemainingAmount", "ResponseCode", "TransactionStatus", "SettlementStatus",
              "SaleDateTime")


def reporting_response(total: int, rows: list[dict[str, Any]]) -> bytes:
    envelope, body = _envelope()
    response = ET.SubElement(body, "PublicGetTransactionsByFilterResponse", {"xmlns": REPORTING_NS})
    result = ET.SubElement(response, "PublicGetTransactionsByFilterResult")
    ET.SubElement(result, "TotalCount").text = str(total)
    transactions = ET.SubElement(result, "Transactions")
    for row in rows:
        transaction = ET.SubElement(transactions, "Transaction")
        for name in ROW_FIELDS:
            ET.SubElement(transaction, name).text = str(row[name])
    return _serialise(envelope)


# -- hostile and broken answers, for fault injection ---------------------------------------------

# An answer a proxy in trouble might send: HTML cut short, then binary noise; not well-formed XML.
GARBAGE = (b"<html><body><h1>502 Bad Gateway</h1>\r\n<hr><center>nginx</center>\r\n"
           b"\x00\xff\xfe garbled <<< & >>>")

_ENTITIES = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
# "Billion laughs": expanding &lol9; makes 10^9 copies of "lol" (about 3 GB) from under 1 KB.
_LAUGHS_DTD = f'<!DOCTYPE {{root}} [<!ENTITY lol0 "lol">{_ENTITIES}]>'


def billion_laughs_result(request_type: str) -> bytes:
    """A well-formed envelope whose ProcessRequestResult decodes to a billion-laughs document."""
    root = "VoidRefund" if request_type == "012" else "Auth"
    inner = (f'<?xml version="1.0" encoding="utf-8"?>{_LAUGHS_DTD.format(root=root)}<{root}>'
             f"<TransactionID>&lol9;</TransactionID><RequestType>{request_type or '012'}</RequestType>"
             f"<ResponseCode>00000</ResponseCode><ResponseDescription>&lol9;</ResponseDescription></{root}>")
    return process_response(inner.encode())


def billion_laughs_body(path: str) -> bytes:
    """The whole HTTP body is a SOAP envelope behind a DOCTYPE whose entities explode when expanded."""
    if path.startswith(REPORTING_PATH):
        inner = (f'<PublicGetTransactionsByFilterResponse xmlns="{REPORTING_NS}"><PublicGetTransactionsByFilterResult>'
                 "<TotalCount>&lol9;</TotalCount></PublicGetTransactionsByFilterResult>"
                 "</PublicGetTransactionsByFilterResponse>")
    else:
        inner = (f'<ProcessRequestResponse xmlns="{REQUEST_HANDLER_NS}"><ProcessRequestResult>&lol9;'
                 "</ProcessRequestResult></ProcessRequestResponse>")
    return (f'<?xml version="1.0" encoding="utf-8"?>{_LAUGHS_DTD.format(root="s:Envelope")}'
            f'<s:Envelope xmlns:s="{SOAP_NS}"><s:Body>{inner}</s:Body></s:Envelope>').encode()


def huge_body(size: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
    """About `size` bytes of an envelope whose ProcessRequestResult never seems to end (it does)."""
    head = (f'<s:Envelope xmlns:s="{SOAP_NS}"><s:Body><ProcessRequestResponse xmlns="{REQUEST_HANDLER_NS}">'
            "<ProcessRequestResult>").encode()
    tail = b"</ProcessRequestResult></ProcessRequestResponse></s:Body></s:Envelope>"
    yield head
    left = max(size - len(head) - len(tail), 0)
    filler = b"QUFB" * (chunk // 4)
    while left > 0:
        piece = filler[:left]
        left -= len(piece)
        yield piece
    yield tail
