"""The BridgePay simulator speaks BridgeComm's wire format (SOAP around base64 XML, the Reporting
API's lookup), applies BridgePay's void/refund rules without any idempotency, and injects the
faults chaos runs need. The helpers below build requests the way an adapter must."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sys
import time
import xml.etree.ElementTree as ET
from typing import Any, AsyncIterator

import defusedxml
import defusedxml.ElementTree as DefusedET
import httpx
import pytest

from adapters.bridgepay_sim import SimConfig, running_simulator
from adapters.bridgepay_sim.testing import RunningSimulator

USER, PASSWORD, MERCHANT, ACCOUNT = "bp_user", "bp-secret-pw-42", "M100", "A200"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
RH_NS = "http://bridgepaynetsecuretx.com/requesthandler"
TEMPURI = "http://tempuri.org/"
PROCESS = "/PaymentService/RequestHandler.svc"
REPORTING = "/Bridgepay.Reporting.API/ReportingAPI.svc"
PROCESS_ACTION = "http://bridgepaynetsecuretx.com/requesthandler/IRequestHandler/ProcessRequest"
REPORTING_ACTION = "http://tempuri.org/IReportingAPI/PublicGetTransactionsByFilter"
CARD = "4111111111111111"


# -- speaking the wire format ----------------------------------------------------------------------

def request_xml(request_type: str, message: dict[str, str], *, transaction_id: str = "tx-1", user: str = USER,
                password: str = PASSWORD, id_tag: str = "TransactionID",
                when: str = "20250102030405") -> bytes:
    root = ET.Element("requestHeader")
    for name, value in (("ClientIdentifier", "SOAP"), (id_tag, transaction_id), ("RequestType", request_type),
                        ("RequestDateTime", when), ("User", user), ("Password", password)):
        ET.SubElement(root, name).text = value
    body = ET.SubElement(root, "requestMessage")
    for name, value in message.items():
        ET.SubElement(body, name).text = value
    return ET.tostring(root, encoding="unicode").encode()


def envelope(inner: bytes) -> bytes:
    encoded = base64.b64encode(inner).decode()
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<soap:Envelope xmlns:soap="{SOAP_NS}"><soap:Body>\n'
            f'<ProcessRequest xmlns="{RH_NS}"><requestMsg>{encoded}</requestMsg></ProcessRequest>\n'
            "</soap:Body></soap:Envelope>").encode()


def decode(response: httpx.Response) -> ET.Element:
    """The response document inside ProcessRequestResult."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/xml")
    result = DefusedET.fromstring(response.content).find(
        f"{{{SOAP_NS}}}Body/{{{RH_NS}}}ProcessRequestResponse/{{{RH_NS}}}ProcessRequestResult")
    assert result is not None, response.text
    return DefusedET.fromstring(base64.b64decode(result.text or ""), forbid_dtd=True)


def flat(document: ET.Element) -> dict[str, Any]:
    """Header fields plus `root` and, if present, `message` (responseMessage's fields)."""
    found: dict[str, Any] = {"root": document.tag}
    for child in document:
        if child.tag == "responseMessage":
            found["message"] = {c.tag: c.text or "" for c in child}
        else:
            found[child.tag] = child.text or ""
    return found


async def post_process(client: httpx.AsyncClient, body: bytes, **kwargs: Any) -> httpx.Response:
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": PROCESS_ACTION}
    return await client.post(PROCESS, content=body, headers=headers, **kwargs)


async def call(client: httpx.AsyncClient, request_type: str, message: dict[str, str], **kwargs: Any) -> dict:
    return flat(decode(await post_process(client, envelope(request_xml(request_type, message, **kwargs)))))


def sale_message(amount: int, invoice: str = "INV-1") -> dict[str, str]:
    return {"TransactionType": "sale", "Amount": str(amount), "MerchantCode": MERCHANT,
            "MerchantAccountCode": ACCOUNT, "InvoiceNum": invoice, "PaymentAccountNumber": CARD,
            "ExpirationDate": "1229"}


def refund_message(reference: str, amount: int | str, invoice: str = "rf_1", code: str = "tc-1",
                   kind: str = "refund") -> dict[str, str]:
    return {"TransactionType": kind, "ReferenceNumber": reference, "Amount": str(amount), "MerchantCode": MERCHANT,
            "MerchantAccountCode": ACCOUNT, "SoftwareVendor": "psp-gateway", "TransactionCode": code,
            "InvoiceNum": invoice}


async def sale(client: httpx.AsyncClient, amount: int, invoice: str = "INV-1") -> str:
    answer = await call(client, "004", sale_message(amount, invoice))
    assert answer["ResponseCode"] == "00000", answer
    return answer["message"]["GatewayTransID"]


async def refund(client: httpx.AsyncClient, reference: str, amount: int | str, **kwargs: Any) -> dict:
    """kwargs: refund_message's (invoice, code, kind) and request_xml's (user, password, ...)."""
    fields = {k: kwargs.pop(k) for k in ("invoice", "code", "kind") if k in kwargs}
    return await call(client, "012", refund_message(reference, amount, **fields), **kwargs)


def reporting_envelope(invoice: str = "", id: str = "", user: str = USER, password: str = PASSWORD) -> bytes:
    return (f'<soap:Envelope xmlns:soap="{SOAP_NS}"><soap:Body><PublicGetTransactionsByFilter xmlns="{TEMPURI}">'
            f"<UserName>{user}</UserName><Password>{password}</Password><filter><InvoiceNumber>{invoice}"
            f"</InvoiceNumber><ID>{id}</ID><Skip>0</Skip><Take>50</Take></filter></PublicGetTransactionsByFilter>"
            "</soap:Body></soap:Envelope>").encode()


async def lookup(client: httpx.AsyncClient, **kwargs: str) -> tuple[int, list[dict[str, str]]]:
    return await reporting(client, reporting_envelope(**kwargs))


async def reporting(client: httpx.AsyncClient, envelope: bytes) -> tuple[int, list[dict[str, str]]]:
    """A Reporting API query answered 200: (TotalCount, the rows by field)."""
    response = await client.post(REPORTING, content=envelope,
                                 headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": REPORTING_ACTION})
    assert response.status_code == 200, response.text
    result = DefusedET.fromstring(response.content).find(
        f"{{{SOAP_NS}}}Body/{{{TEMPURI}}}PublicGetTransactionsByFilterResponse/"
        f"{{{TEMPURI}}}PublicGetTransactionsByFilterResult")
    assert result is not None
    rows = [{c.tag.rpartition("}")[2]: c.text or "" for c in row}
            for row in result.find(f"{{{TEMPURI}}}Transactions") or []]
    return int(result.findtext(f"{{{TEMPURI}}}TotalCount") or -1), rows


async def control(client: httpx.AsyncClient, path: str, body: dict | None = None) -> dict:
    response = await client.post(f"/_sim/{path}", json=body or {})
    assert response.status_code == 200, response.text
    return response.json()


async def state(client: httpx.AsyncClient) -> dict:
    return (await client.get("/_sim/state")).json()


def sale_state(snapshot: dict, gateway_trans_id: str) -> dict:
    (found,) = [s for s in snapshot["sales"] if s["gateway_trans_id"] == gateway_trans_id]
    return found


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    config = SimConfig(username=USER, password=PASSWORD, merchant_code=MERCHANT, merchant_account_code=ACCOUNT,
                       seed=7)
    async with running_simulator(config) as running:
        yield running


@pytest.fixture
async def client(sim: RunningSimulator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=5) as c:
        yield c


# -- sales, voids and refunds ----------------------------------------------------------------------

async def test_sale_is_approved_in_the_open_batch_and_only_the_last_four_digits_are_kept(client):
    answer = await call(client, "004", sale_message(5000, "INV-7"), transaction_id="sale-1")

    assert {k: answer[k] for k in ("root", "TransactionID", "RequestType", "ResponseCode", "ResponseDescription")} == \
        {"root": "Auth", "TransactionID": "sale-1", "RequestType": "004", "ResponseCode": "00000",
         "ResponseDescription": "Successful Request"}
    message = answer["message"]
    assert list(message) == ["GatewayTransID", "GatewayResult", "GatewayMessage", "AuthorizationCode", "Amount",
                             "InvoiceNum"]
    assert message["GatewayTransID"].isdigit() and len(message["AuthorizationCode"]) == 6
    assert (message["GatewayResult"], message["GatewayMessage"], message["Amount"], message["InvoiceNum"]) == \
        ("00000", "A01 - Approved", "5000", "INV-7")
    snapshot = await state(client)
    stored = sale_state(snapshot, message["GatewayTransID"])
    assert (stored["amount"], stored["settled"], stored["remaining"], stored["card_last4"]) == \
        (5000, False, 5000, "1111")
    assert CARD not in str(snapshot)


async def test_full_void_of_an_unsettled_sale_posts_A03_and_leaves_nothing_refundable(client):
    original = await sale(client, 5000)

    answer = await refund(client, original, 5000, invoice="rf_full", code="tx-9")

    assert (answer["root"], answer["RequestType"], answer["ResponseCode"]) == ("VoidRefund", "012", "00000")
    message = answer["message"]
    assert list(message) == ["GatewayTransID", "GatewayResult", "GatewayMessage", "TransactionCode",
                             "RemainingAmount", "ResponseType", "ReferenceNumber"]
    assert message["GatewayTransID"].isdigit() and message["GatewayTransID"] != original
    assert {k: v for k, v in message.items() if k != "GatewayTransID"} == {
        "GatewayResult": "00000", "GatewayMessage": "A03 - Void Posted", "TransactionCode": "tx-9",
        "RemainingAmount": "0", "ResponseType": "void", "ReferenceNumber": original}
    stored = sale_state(await state(client), original)
    assert (stored["status"], stored["remaining"], stored["refund_executions"]) == ("Voided", 0, 1)
    assert stored["refunds"][0] | {"gateway_trans_id": None} == {
        "gateway_trans_id": None, "kind": "void", "amount": 5000, "invoice_num": "rf_full", "transaction_code": "tx-9",
        "transaction_id": "tx-1", "remaining_after": 0, "gateway_message": "A03 - Void Posted", "settled": False}


async def test_partial_void_posts_A07_and_a_second_void_is_refused_with_10042(client):
    original = await sale(client, 5000)

    first = await refund(client, original, 1500, kind="void")
    second = await refund(client, original, 100)

    assert (first["ResponseCode"], first["message"]["GatewayMessage"]) == ("00000", "A07 - Partial Void Posted")
    assert (first["message"]["RemainingAmount"], first["message"]["ResponseType"]) == ("0", "void")
    assert (second["root"], second["ResponseCode"], second["ResponseDescription"]) == \
        ("VoidRefund", "10042", "Transaction already voided")
    assert second["message"] == {"GatewayResult": "10042", "GatewayMessage": "D01 - Already Voided",
                                 "TransactionCode": "tc-1", "RemainingAmount": "0", "ResponseType": "void",
                                 "ReferenceNumber": original}  # no GatewayTransID: nothing happened
    snapshot = await state(client)
    assert (snapshot["refund_executions"][original], snapshot["refund_attempts"][original]) == (1, 2)

    # Once settled, the voided part stays gone: 3500 is left to refund.
    await control(client, "settle")
    after = await refund(client, original, 3500)
    assert (after["message"]["GatewayMessage"], after["message"]["RemainingAmount"]) == ("A02 - Credit Posted", "0")


async def test_settled_sale_takes_several_partial_refunds_until_a_credit_empties_it(client):
    original = await sale(client, 5000)
    settled = await control(client, "settle", {"gateway_trans_ids": [original]})
    assert settled == {"settled": [original]}

    answers = [await refund(client, original, amount, invoice=f"rf_{i}")
               for i, amount in enumerate((1000, 1500, 2500))]

    assert [a["message"]["GatewayMessage"] for a in answers] == \
        ["A08 - Partial Refund Posted", "A08 - Partial Refund Posted", "A02 - Credit Posted"]
    assert [a["message"]["RemainingAmount"] for a in answers] == ["4000", "2500", "0"]
    assert {a["message"]["ResponseType"] for a in answers} == {"refund"}
    assert len({a["message"]["GatewayTransID"] for a in answers} | {original}) == 4
    stored = sale_state(await state(client), original)
    assert (stored["refunded"], stored["remaining"], stored["status"]) == (5000, 0, "Confirmed")


async def test_refund_above_the_remaining_amount_is_30026_bad_amount(client):
    original = await sale(client, 5000)
    await control(client, "settle")
    await refund(client, original, 4000)

    answer = await refund(client, original, 1001)

    assert (answer["root"], answer["ResponseCode"], answer["ResponseDescription"]) == \
        ("VoidRefund", "30026", "Invalid amount")
    assert "GatewayTransID" not in answer["message"]
    assert {k: answer["message"][k] for k in ("GatewayResult", "GatewayMessage", "RemainingAmount", "ResponseType")} \
        == {"GatewayResult": "30026", "GatewayMessage": "D18 - Bad Amount", "RemainingAmount": "1000",
            "ResponseType": "refund"}
    unsettled = await sale(client, 300)
    too_big_void = await refund(client, unsettled, 301)
    assert (too_big_void["ResponseCode"], too_big_void["message"]["ResponseType"]) == ("30026", "void")


async def test_ping_answers_00000_and_checks_credentials(client):
    ok = await call(client, "099", {}, transaction_id="p-1")
    bad = await call(client, "099", {}, password="nope")

    assert ok == {"root": "Ping", "TransactionID": "p-1", "RequestType": "099", "ResponseCode": "00000",
                  "ResponseDescription": "Successful Request"}
    assert (bad["root"], bad["ResponseCode"]) == ("ErrorResponse", "10024")


# -- refusals before processing --------------------------------------------------------------------

async def test_wrong_user_password_or_merchant_codes_answer_10024(client):
    original = await sale(client, 5000)
    wrong_merchant = refund_message(original, 100) | {"MerchantCode": "M999"}
    wrong_account = refund_message(original, 100) | {"MerchantAccountCode": "A999"}

    answers = [await refund(client, original, 100, user="someone"),
               await refund(client, original, 100, password="guess"),
               await call(client, "012", wrong_merchant), await call(client, "012", wrong_account),
               await call(client, "004", sale_message(100) | {"MerchantCode": ""})]

    for answer in answers:
        assert answer == {"root": "ErrorResponse", "TransactionID": "tx-1", "RequestType": answer["RequestType"],
                          "ResponseCode": "10024", "ResponseDescription": "Invalid credentials"}
    assert PASSWORD not in str(answers)
    assert sale_state(await state(client), original)["refund_attempts"] == 0


async def test_unknown_or_missing_reference_and_bad_amounts_are_error_responses(client):
    original = await sale(client, 5000)

    unknown = await refund(client, "999999999", 100)
    missing = await refund(client, "", 100)
    refund_of_refund = await refund(client, (await refund(client, original, 100))["message"]["GatewayTransID"], 1)
    bad_amounts = [await refund(client, original, amount) for amount in ("12.00", "-5", "0", "", "1e3")]

    assert (unknown["root"], unknown["ResponseCode"], unknown["ResponseDescription"]) == \
        ("ErrorResponse", "10055", "Invalid reference number")
    assert (missing["root"], missing["ResponseCode"]) == ("ErrorResponse", "10001")
    assert refund_of_refund["ResponseCode"] == "10055"
    assert {(a["root"], a["ResponseCode"]) for a in bad_amounts} == {("ErrorResponse", "10028")}
    assert "message" not in unknown
    assert sale_state(await state(client), original)["refund_attempts"] == 1


async def test_bad_date_request_type_and_transaction_type_are_refused_and_TransactionId_is_accepted(client):
    original = await sale(client, 5000)

    bad_date = await refund(client, original, 100, when="2025-01-02")
    bad_type = await call(client, "777", {})
    bad_kind = await call(client, "012", refund_message(original, 100, kind="sale"))
    other_spelling = await refund(client, original, 100, transaction_id="tx-lower", id_tag="TransactionId")

    assert (bad_date["ResponseCode"], bad_type["ResponseCode"], bad_kind["ResponseCode"]) == ("10029", "10022", "10033")
    assert bad_type["RequestType"] == "777"
    assert (other_spelling["ResponseCode"], other_spelling["TransactionID"]) == ("00000", "tx-lower")


async def test_soap_layer_errors_are_400_faults_and_wrong_action_or_content_type_are_refused(client):
    broken = await post_process(client, b"<soap:Envelope xmlns:soap='x'><unclosed>")
    not_soap = await post_process(client, b"<requestHeader/>")
    no_message = await post_process(client, f'<s:Envelope xmlns:s="{SOAP_NS}"><s:Body/></s:Envelope>'.encode())
    laughs = f'<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><s:Envelope xmlns:s="{SOAP_NS}">&b;</s:Envelope>'
    entity_attack = await post_process(client, laughs.encode())
    not_base64 = await post_process(client, envelope(b"x").replace(base64.b64encode(b"x"), b"%%%"))
    body = envelope(request_xml("099", {}))
    wrong_action = await client.post(PROCESS, content=body, headers={"Content-Type": "text/xml",
                                                                      "SOAPAction": "urn:other"})
    quoted_action = await client.post(PROCESS, content=body, headers={"Content-Type": "text/xml",
                                                                       "SOAPAction": f'"{PROCESS_ACTION}"'})
    soap12 = await client.post(PROCESS, content=body, headers={"Content-Type": "application/soap+xml",
                                                                "SOAPAction": PROCESS_ACTION})

    for response in (broken, not_soap, no_message, entity_attack):
        assert response.status_code == 400
        fault = DefusedET.fromstring(response.content).find(f"{{{SOAP_NS}}}Body/{{{SOAP_NS}}}Fault")
        assert fault is not None and fault.findtext("faultcode") == "s:Client"
    assert flat(decode(not_base64))["ResponseCode"] == "99999"
    assert wrong_action.status_code == 500 and "ContractFilter mismatch" in wrong_action.text
    assert flat(decode(quoted_action))["ResponseCode"] == "00000"
    assert soap12.status_code == 415


async def test_values_are_escaped_in_answers(client):
    original = await sale(client, 5000)

    answer = await refund(client, original, 100, code="<b>&\"'</b>", invoice="rf_<&>")

    assert answer["message"]["TransactionCode"] == "<b>&\"'</b>"
    _, rows = await lookup(client, invoice="rf_&lt;&amp;&gt;")
    assert [r["InvoiceNumber"] for r in rows] == ["rf_<&>"]


# -- sandbox amounts, duplicates, reporting --------------------------------------------------------

async def test_sandbox_amounts_decline_outside_500_to_6999_only_when_switched_on(client):
    plain = await sale(client, 10000)
    assert (await refund(client, plain, 100))["ResponseCode"] == "00000"  # off by default

    config = SimConfig(username=USER, password=PASSWORD, merchant_code=MERCHANT, merchant_account_code=ACCOUNT,
                       sandbox_amounts=True)
    async with running_simulator(config) as sandbox, httpx.AsyncClient(base_url=sandbox.url, timeout=5) as c:
        created = [(await control(c, "sales", {"amount": 10000, "settled": True}))["gateway_trans_id"]
                   for _ in range(5)]
        answers = [await refund(c, ref, amount) for ref, amount in zip(created, (1, 499, 500, 6999, 7000))]
        snapshot = sandbox.state()

    assert [a["ResponseCode"] for a in answers] == ["30032", "30032", "00000", "00000", "30032"]
    declined = answers[0]
    assert (declined["root"], declined["ResponseDescription"]) == ("VoidRefund", "Denied by the bank")
    assert {k: declined["message"][k] for k in ("GatewayResult", "GatewayMessage", "RemainingAmount")} == \
        {"GatewayResult": "30032", "GatewayMessage": "D01 - Declined", "RemainingAmount": "10000"}
    assert "GatewayTransID" not in declined["message"]
    assert sum(snapshot["refund_executions"].values()) == 2 and snapshot["counts"]["declines"] == 3


async def test_duplicate_requests_are_each_executed_no_idempotency(client):
    original = await sale(client, 5000)
    await control(client, "settle")

    first = await refund(client, original, 700, invoice="rf_dup", code="same")
    second = await refund(client, original, 700, invoice="rf_dup", code="same")

    assert first["message"]["GatewayTransID"] != second["message"]["GatewayTransID"]
    assert [first["message"]["RemainingAmount"], second["message"]["RemainingAmount"]] == ["4300", "3600"]
    total, rows = await lookup(client, invoice="rf_dup")
    assert total == 2 and {r["TransactionType"] for r in rows} == {"Refund"}
    assert (await state(client))["refund_executions"][original] == 2


async def test_reporting_finds_refunds_by_invoice_number_or_id_and_refuses_bad_credentials(client):
    original = await sale(client, 5000, invoice="INV-9")
    void = await refund(client, original, 2000, invoice="rf_void")
    await control(client, "settle")
    refunded = await refund(client, original, 1000, invoice="rf_refund")
    await refund(client, original, 9999, invoice="rf_declined")

    total, (row,) = await lookup(client, invoice="rf_refund")
    assert total == 1 and list(row) == ["TransactionId", "TransactionType", "InvoiceNumber", "ReferenceNumber",
                                        "RequestedAmount", "AuthorizedAmount", "RemainingAmount", "ResponseCode",
                                        "TransactionStatus", "SettlementStatus", "SaleDateTime"]
    assert row.pop("SaleDateTime")  # when it was made: what a listing by date range reads
    assert row == {"TransactionId": refunded["message"]["GatewayTransID"], "TransactionType": "Refund",
                   "InvoiceNumber": "rf_refund", "ReferenceNumber": original, "RequestedAmount": "1000",
                   "AuthorizedAmount": "1000", "RemainingAmount": "2000", "ResponseCode": "00000",
                   "TransactionStatus": "Open", "SettlementStatus": "Unsettled"}
    (void_row,) = (await lookup(client, id=void["message"]["GatewayTransID"]))[1]
    assert (void_row["TransactionType"], void_row["TransactionStatus"], void_row["SettlementStatus"]) == \
        ("Void", "Voided", "Settled")
    (sale_row,) = (await lookup(client, invoice="INV-9"))[1]
    assert {k: sale_row[k] for k in ("TransactionType", "RequestedAmount", "AuthorizedAmount", "RemainingAmount",
                                     "TransactionStatus", "SettlementStatus", "ReferenceNumber")} == \
        {"TransactionType": "Sale", "RequestedAmount": "5000", "AuthorizedAmount": "3000", "RemainingAmount": "2000",
         "TransactionStatus": "Confirmed", "SettlementStatus": "Settled", "ReferenceNumber": ""}
    assert await lookup(client, invoice="rf_declined") == (0, [])
    assert await lookup(client, invoice="rf_refund", id=original) == (0, [])
    assert (await lookup(client))[0] == 3

    bad = await client.post(REPORTING, content=reporting_envelope(invoice="rf_refund", password="wrong"),
                            headers={"Content-Type": "text/xml", "SOAPAction": REPORTING_ACTION})
    assert bad.status_code == 500
    fault = DefusedET.fromstring(bad.content).find(f"{{{SOAP_NS}}}Body/{{{SOAP_NS}}}Fault")
    assert fault is not None and fault.findtext("faultstring") == "Invalid credentials"


# -- faults ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "root", "code", "gateway_message"), [
    ("internal_error", "ErrorResponse", "20002", None),
    ("unavailable", "ErrorResponse", "20003", None),
    ("network", "VoidRefund", "20003", "E02 - Network Unavailable"),
])
async def test_front_door_faults_answer_without_executing(client, kind, root, code, gateway_message):
    original = await sale(client, 5000)
    await control(client, "faults", {kind: {"count": 1, "request_type": "012"}})

    failed = await refund(client, original, 100, code="tc-f")
    retried = await refund(client, original, 100)

    assert (failed["root"], failed["ResponseCode"]) == (root, code)
    if gateway_message:
        assert failed["message"] == {"GatewayResult": code, "GatewayMessage": gateway_message,
                                     "TransactionCode": "tc-f", "ReferenceNumber": original}
    assert retried["ResponseCode"] == "00000"
    snapshot = await state(client)
    assert snapshot["refund_executions"][original] == 1 and snapshot["faults_fired"] == {kind: 1}


async def test_dropped_connection_before_execution_runs_nothing(client):
    original = await sale(client, 5000)
    await control(client, "faults", {"drop": {"count": 1}})

    with pytest.raises(httpx.TransportError):
        await refund(client, original, 100)

    assert (await state(client))["refund_executions"] == {}
    assert await lookup(client, invoice="rf_1") == (0, [])


async def test_execute_then_drop_leaves_a_refund_the_client_never_heard_of(client):
    original = await sale(client, 5000)
    await control(client, "settle")
    await control(client, "faults", {"execute_then_drop": {"count": 1, "request_type": "012"}})

    with pytest.raises(httpx.TransportError):
        await refund(client, original, 1200, invoice="rf_lost")

    stored = sale_state(await state(client), original)
    assert (stored["refund_executions"], stored["refunded"]) == (1, 1200)
    assert stored["refunds"][0]["invoice_num"] == "rf_lost"
    total, (row,) = await lookup(client, invoice="rf_lost")
    assert (total, row["TransactionId"], row["RequestedAmount"], row["RemainingAmount"]) == \
        (1, stored["refunds"][0]["gateway_trans_id"], "1200", "3800")


async def test_execute_then_timeout_holds_the_answer_of_an_executed_refund(client):
    original = await sale(client, 5000)
    await control(client, "faults", {"execute_then_timeout": {"count": 1, "hold_seconds": 30}})

    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await post_process(client, envelope(request_xml("012", refund_message(original, 5000))), timeout=0.3)

    assert time.monotonic() - started < 5
    assert sale_state(await state(client), original)["status"] == "Voided"


async def test_unknown_code_is_executed_and_answers_Z99(client):
    original = await sale(client, 5000)
    await control(client, "faults", {"unknown_code": {"count": 1}})

    answer = await refund(client, original, 5000)

    assert (answer["root"], answer["ResponseCode"], answer["message"]["GatewayMessage"]) == \
        ("VoidRefund", "00000", "Z99 - Something New")
    assert answer["message"]["GatewayTransID"]
    assert (await state(client))["refund_executions"][original] == 1


async def test_garbage_answers_200_with_a_body_that_is_not_xml(client):
    original = await sale(client, 5000)
    await control(client, "faults", {"garbage": {"count": 1}})
    response = await post_process(client, envelope(request_xml("012", refund_message(original, 100))))
    assert response.status_code == 200
    with pytest.raises(ET.ParseError):
        DefusedET.fromstring(response.content)
    assert (await state(client))["refund_executions"] == {}  # not executed unless asked

    await control(client, "faults", {"garbage": {"count": 1, "payload": "result", "execute": True}})
    response = await post_process(client, envelope(request_xml("012", refund_message(original, 100))))
    result = DefusedET.fromstring(response.content).find(f".//{{{RH_NS}}}ProcessRequestResult")
    assert result is not None
    with pytest.raises(ET.ParseError):
        DefusedET.fromstring(base64.b64decode(result.text or ""))
    assert (await state(client))["refund_executions"] == {original: 1}


async def test_hostile_answers_carry_entity_bombs_or_a_huge_body(client):
    ping = envelope(request_xml("099", {}))
    await control(client, "faults", {"hostile": {"count": 1}})
    bomb = await post_process(client, ping)
    assert bomb.status_code == 200 and b"<!ENTITY lol9" in bomb.content and len(bomb.content) < 4096
    with pytest.raises(defusedxml.DTDForbidden):
        DefusedET.fromstring(bomb.content, forbid_dtd=True)
    with pytest.raises(defusedxml.EntitiesForbidden):
        DefusedET.fromstring(bomb.content)

    await control(client, "faults", {"hostile": {"count": 1, "payload": "billion_laughs_result"}})
    inner_bomb = await post_process(client, ping)
    result = DefusedET.fromstring(inner_bomb.content).find(f".//{{{RH_NS}}}ProcessRequestResult")
    assert result is not None
    with pytest.raises(defusedxml.EntitiesForbidden):
        DefusedET.fromstring(base64.b64decode(result.text or ""))

    await control(client, "faults", {"hostile": {"count": 1, "payload": "huge", "huge_bytes": 3_000_000}})
    received = 0
    async with client.stream("POST", PROCESS, content=ping,
                             headers={"Content-Type": "text/xml", "SOAPAction": PROCESS_ACTION}) as huge:
        assert huge.status_code == 200 and "Content-Length" not in huge.headers
        async for chunk in huge.aiter_raw():
            received += len(chunk)
    assert received >= 3_000_000


async def test_latency_spike_delays_matching_requests_only(client):
    await control(client, "faults", {"latency": {"ms": 0, "spike_ms": 300, "count": 1, "request_type": "012"}})
    ping = envelope(request_xml("099", {}))

    started = time.monotonic()
    await post_process(client, ping)
    ping_took = time.monotonic() - started
    started = time.monotonic()
    await refund(client, "123", 100)
    refund_took = time.monotonic() - started

    assert ping_took < 0.25 <= refund_took


async def test_faults_on_the_reporting_api_and_rule_validation(client):
    await control(client, "faults", {"unavailable": {"count": 1, "path": REPORTING}})
    body = reporting_envelope(invoice="x")
    headers = {"Content-Type": "text/xml", "SOAPAction": REPORTING_ACTION}

    unavailable = await client.post(REPORTING, content=body, headers=headers)
    assert unavailable.status_code == 503 and "Service Unavailable" in unavailable.text
    assert await lookup(client, invoice="x") == (0, [])
    for bad in ({"nonsense": {}}, {"hostile": {"payload": "other"}}, {"drop": {"count": "many"}}):
        assert (await client.post("/_sim/faults", json=bad)).status_code == 400
    assert (await client.delete("/_sim/faults")).json() == {}


async def test_seeded_faults_fail_the_same_requests_after_a_reset(client):
    ping = envelope(request_xml("099", {}))
    pattern = []
    for _ in range(2):
        await control(client, "reset", {"seed": 3})
        await control(client, "faults", {"internal_error": {"probability": 0.5}})
        pattern.append([flat(decode(await post_process(client, ping)))["ResponseCode"] for _ in range(12)])

    assert pattern[0] == pattern[1] and set(pattern[0]) == {"00000", "20002"}
    ids = []
    for _ in range(2):
        await control(client, "reset", {"seed": 3})
        ids.append((await control(client, "sales", {"amount": 100}))["gateway_trans_id"])
    assert ids[0] == ids[1]


# -- control API and command line ------------------------------------------------------------------

async def test_control_api_creates_settles_and_resets(client):
    created = await control(client, "sales", {"amount": 5000, "invoice_num": "INV-1"})
    other = await control(client, "sales", {"amount": 700})

    assert created["sale"]["amount"] == 5000 and created["sale"]["settled"] is False
    assert (await control(client, "settle", {"gateway_trans_ids": [created["gateway_trans_id"]]}))["settled"] == \
        [created["gateway_trans_id"]]
    assert (await control(client, "settle"))["settled"] == [other["gateway_trans_id"]]
    assert (await control(client, "settle"))["settled"] == []
    assert (await client.post("/_sim/settle", json={"gateway_trans_ids": ["nope"]})).status_code == 400
    assert (await client.post("/_sim/sales", json={"amount": "5"})).status_code == 400
    assert (await refund(client, created["gateway_trans_id"], 100))["message"]["ResponseType"] == "refund"
    snapshot = await control(client, "reset")
    assert snapshot["sales"] == [] and snapshot["refund_executions"] == {}


async def test_command_line_prints_where_it_listens_and_stops_on_sigterm():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adapters.bridgepay_sim", "--port", "0", "--username", USER, "--password", PASSWORD,
        "--merchant-code", MERCHANT, "--merchant-account-code", ACCOUNT, stdout=asyncio.subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert "listening on http://127.0.0.1:" in line and PASSWORD not in line
        url = line.split("listening on ")[1].split()[0]
        async with httpx.AsyncClient(base_url=url, timeout=5) as c:
            assert (await call(c, "099", {}))["ResponseCode"] == "00000"
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_delay_execution_carries_the_request_out_after_the_client_gave_up(client):
    original = await sale(client, 5000)
    await control(client, "faults", {"delay_execution": {"count": 1, "request_type": "012", "delay_ms": 600}})

    with pytest.raises(httpx.ReadTimeout):
        await post_process(client, envelope(request_xml("012", refund_message(original, 5000))), timeout=0.2)
    assert original not in (await state(client))["refund_executions"]  # not yet

    await asyncio.sleep(0.8)
    assert (await state(client))["refund_executions"][original] == 1  # carried out all the same


async def test_execute_after_disconnect_waits_for_the_client_to_give_up_then_executes(client):
    original = await sale(client, 5000)
    await control(client, "faults", {"execute_after_disconnect": {"count": 1, "request_type": "012",
                                                                  "delay_ms": 300, "hold_seconds": 10}})
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        await post_process(client, envelope(request_xml("012", refund_message(original, 5000))), timeout=0.5)
    assert time.monotonic() - started < 2
    await asyncio.sleep(0.1)
    assert original not in (await state(client))["refund_executions"]  # the client is gone, not yet executed

    await asyncio.sleep(0.6)
    assert (await state(client))["refund_executions"][original] == 1
