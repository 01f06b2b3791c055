"""What RequestHandler.svc does with one decoded request: authentication, validation, then a sale
(004), a void/refund (012) or a ping (099) against the account, answered as a response document."""

from __future__ import annotations

import hmac
import re
from datetime import datetime

from adapters.bridgepay_sim import codes
from adapters.bridgepay_sim.codes import BridgePayError
from adapters.bridgepay_sim.config import SimConfig
from adapters.bridgepay_sim.simulator import Simulator
from adapters.bridgepay_sim.wire import Call, Reply

SALE, VOID_REFUND, PING = "004", "012", "099"
ROOTS = {SALE: "Auth", VOID_REFUND: "VoidRefund", PING: "Ping"}


def execute(sim: Simulator, call: Call) -> Reply:
    """Runs one request; a refusal before processing becomes an ErrorResponse."""
    sim.counts[f"requests.{call.request_type if call.request_type in ROOTS else 'other'}"] += 1
    try:
        _authenticate(call, sim.config)
        _check_date_time(call.header.get("RequestDateTime", ""))
        if call.request_type == SALE:
            return _sale(sim, call)
        if call.request_type == VOID_REFUND:
            return _void_refund(sim, call)
        if call.request_type == PING:
            if "MerchantCode" in call.message or "MerchantAccountCode" in call.message:
                _check_merchant(call, sim.config)
            return Reply("Ping", _header(call, codes.SUCCESS))
        raise BridgePayError(codes.INVALID_REQUEST_TYPE)
    except BridgePayError as e:
        return error_response(sim, call, e)


def error_response(sim: Simulator, call: Call | None, error: BridgePayError) -> Reply:
    sim.counts["error_responses"] += 1
    header = {"TransactionID": call.transaction_id if call else "", "RequestType": call.request_type if call else "",
              "ResponseCode": error.code, "ResponseDescription": error.description}
    return Reply("ErrorResponse", header)


def refused(call: Call, code: str, gateway_message: str | None) -> Reply:
    """The answer to a request a fault stopped before it ran: an ErrorResponse, or (with a gateway
    message, as for a network failure) the request type's own root."""
    if gateway_message is None:
        return Reply("ErrorResponse", _header(call, code))
    root = ROOTS.get(call.request_type, "ErrorResponse")
    message = {"GatewayResult": code, "GatewayMessage": gateway_message}
    if call.request_type == VOID_REFUND:
        message |= {"TransactionCode": call.message.get("TransactionCode", ""),
                    "ReferenceNumber": call.message.get("ReferenceNumber", "")}
    return Reply(root, _header(call, code), None if root in ("Ping", "ErrorResponse") else message)


# -- request types -------------------------------------------------------------------------------

def _sale(sim: Simulator, call: Call) -> Reply:
    message = call.message
    _check_merchant(call, sim.config)
    if message.get("TransactionType", "").lower() != "sale":
        raise BridgePayError(codes.INVALID_REQUEST_TYPE, "Invalid request type: TransactionType must be sale")
    amount = _amount(message)
    card = message.get("PaymentAccountNumber", "")
    if not re.fullmatch(r"[0-9]{12,19}", card):
        raise BridgePayError(codes.UNKNOWN_ERROR, "Unknown error: invalid PaymentAccountNumber")
    if not re.fullmatch(r"(0[1-9]|1[0-2])[0-9]{2}", message.get("ExpirationDate", "")):
        raise BridgePayError(codes.UNKNOWN_ERROR, "Unknown error: invalid ExpirationDate (MMYY)")
    sale = sim.world.create_sale(amount, invoice_num=message.get("InvoiceNum", ""),
                                 transaction_id=call.transaction_id,
                                 authorization_code=sim.new_authorization_code(), card_last4=card[-4:])
    sim.counts["sales"] += 1
    return Reply("Auth", _header(call, codes.SUCCESS), {
        "GatewayTransID": sale.gateway_trans_id, "GatewayResult": codes.SUCCESS, "GatewayMessage": "A01 - Approved",
        "AuthorizationCode": sale.authorization_code, "Amount": str(sale.amount), "InvoiceNum": sale.invoice_num})


def _void_refund(sim: Simulator, call: Call) -> Reply:
    message = call.message
    _check_merchant(call, sim.config)
    if message.get("TransactionType", "").lower() not in ("refund", "void"):
        raise BridgePayError(codes.INVALID_VOID_REQUEST, "Invalid void request: TransactionType must be refund or void")
    reference = message.get("ReferenceNumber", "")
    if not reference:
        raise BridgePayError(codes.MISSING_REFERENCE)
    amount = _amount(message)
    sale = sim.world.sales.get(reference)
    if sale is None:
        raise BridgePayError(codes.INVALID_REFERENCE)
    outcome = sim.world.reverse(sale, amount, invoice_num=message.get("InvoiceNum", ""),
                                transaction_code=message.get("TransactionCode", ""),
                                transaction_id=call.transaction_id, sandbox_amounts=sim.config.sandbox_amounts)
    sim.counts[f"{outcome.response_type}s" if outcome.reversal else "declines"] += 1
    answer = {"GatewayTransID": outcome.reversal.gateway_trans_id} if outcome.reversal else {}
    answer |= {"GatewayResult": outcome.code, "GatewayMessage": outcome.gateway_message,
               "TransactionCode": message.get("TransactionCode", ""), "RemainingAmount": str(outcome.remaining),
               "ResponseType": outcome.response_type, "ReferenceNumber": reference}
    return Reply("VoidRefund", _header(call, outcome.code), answer)


# -- checks --------------------------------------------------------------------------------------

def _header(call: Call, code: str) -> dict[str, str]:
    return {"TransactionID": call.transaction_id, "RequestType": call.request_type, "ResponseCode": code,
            "ResponseDescription": codes.DESCRIPTIONS[code]}


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def credentials_ok(user: str, password: str, config: SimConfig) -> bool:
    user_ok = _same(user, config.username)  # both compared, in constant time
    password_ok = _same(password, config.password)
    return user_ok and password_ok


def _authenticate(call: Call, config: SimConfig) -> None:
    if not credentials_ok(call.header.get("User", ""), call.header.get("Password", ""), config):
        raise BridgePayError(codes.INVALID_CREDENTIALS)


def _check_merchant(call: Call, config: SimConfig) -> None:
    if (call.message.get("MerchantCode") != config.merchant_code
            or call.message.get("MerchantAccountCode") != config.merchant_account_code):
        raise BridgePayError(codes.INVALID_CREDENTIALS)


def _check_date_time(value: str) -> None:
    try:
        if not re.fullmatch(r"[0-9]{14}", value):
            raise ValueError(value)
        datetime.strptime(value, "%Y%m%d%H%M%S")
    except ValueError:
        raise BridgePayError(codes.INVALID_DATE_TIME, "Invalid date/time: RequestDateTime is yyyyMMddHHmmss") from None


def _amount(message: dict[str, str]) -> int:
    value = message.get("Amount", "")
    if not re.fullmatch(r"[0-9]{1,12}", value) or int(value) < 1:
        raise BridgePayError(codes.INVALID_AMOUNT_FORMAT,
                             "Invalid amount format: Amount is a positive integer in cents")
    return int(value)
