"""The Stripe adapter against Stripe's REST protocol, faked by URL with respx: the refund it sends,
how every answer maps to ours, look-ups, and where each mapped answer takes the refund."""

from __future__ import annotations

from urllib.parse import parse_qsl

import httpx
import orjson
import pytest
import respx
from pydantic import SecretStr

from adapters.base import (
    OutcomeUnknownError,
    ProcessorProtocolError,
    RefundRequest,
    RefundResult,
    TransientProcessorError,
)
from adapters.stripe import StripeAdapter
from gateway.domain.refunds import Outcome, Stage, Status
from gateway.ledger import decide
from gateway.settings import StripeProcessor

BASE_URL = "https://stripe.test"
API_KEY = "sk_test_51AdapterUnitKey0123456789"
CHARGE = "ch_3PqRstUvWxYz0123"
INTENT = "pi_3PqRstUvWxYz0123"


def make_request(**overrides) -> RefundRequest:
    values = dict(refund_id="rf_01HZXK4Q7M", idempotency_key="rf_01HZXK4Q7M:refund", psp_reference=CHARGE,
                  amount=2500, currency="EUR", invoice_id="INV-2024-0042")
    values.update(overrides)
    return RefundRequest(**values)


def refund_object(status: str = "succeeded", *, refund_id: str = "rf_01HZXK4Q7M", id: str = "re_3PqRst0001",
                  **extra) -> dict:
    """A Refund as Stripe's API (2024-06-20) renders it."""
    obj = {
        "id": id, "object": "refund", "amount": 2500, "balance_transaction": "txn_3PqRst0001",
        "charge": CHARGE, "created": 1718000000, "currency": "eur", "destination_details": {"type": "card"},
        "metadata": {"refund_id": refund_id, "invoice_id": "INV-2024-0042"}, "payment_intent": INTENT,
        "reason": "requested_by_customer", "receipt_number": None, "source_transfer_reversal": None,
        "status": status, "transfer_reversal": None,
    }
    obj.update(extra)
    return obj


def stripe_error(etype: str, code: str | None = None, message: str = "Stripe says no", **extra) -> dict:
    error = {"type": etype, "message": message, "request_log_url": "https://dashboard.stripe.com/logs/req_x"}
    if code:
        error["code"] = code
    error.update(extra)
    return {"error": error}


@pytest.fixture
def stripe_api() -> respx.Router:
    """Stripe's API as respx routes; a request no route matches fails the test."""
    return respx.Router(base_url=BASE_URL, assert_all_called=False)


@pytest.fixture
async def adapter(stripe_api):
    # The routes serve as the client's transport: routing stays by URL, and no TLS context is built per test.
    adapter = StripeAdapter(StripeProcessor(id="stripe", kind="stripe", base_url=BASE_URL,
                                            api_key=SecretStr(API_KEY), timeout_seconds=2),
                            transport=httpx.MockTransport(stripe_api.async_handler))
    yield adapter
    await adapter.aclose()


MAY_HAVE_EXECUTED = OutcomeUnknownError


def may_have_executed(error: BaseException) -> bool:
    """A fault after which Stripe may have carried the refund out: resend only with the same key."""
    return isinstance(error, OutcomeUnknownError)


def sent_form(route: respx.Route, index: int = -1) -> dict[str, str]:
    request = route.calls[index].request
    return dict(parse_qsl(request.content.decode(), keep_blank_values=True))


# --- the request we send ------------------------------------------------------------------------

async def test_refund_is_posted_form_encoded_to_v1_refunds(adapter, stripe_api):
    route = stripe_api.post("/v1/refunds").respond(200, json=refund_object())
    await adapter.refund(make_request())
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.method == "POST"
    assert request.url == f"{BASE_URL}/v1/refunds"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"


async def test_refund_of_a_charge_sends_the_charge_and_no_payment_intent(adapter, stripe_api):
    route = stripe_api.post("/v1/refunds").respond(200, json=refund_object())
    await adapter.refund(make_request(psp_reference=CHARGE))
    form = sent_form(route)
    assert form["charge"] == CHARGE
    assert "payment_intent" not in form


async def test_refund_of_a_payment_intent_sends_the_payment_intent_and_no_charge(adapter, stripe_api):
    route = stripe_api.post("/v1/refunds").respond(200, json=refund_object())
    await adapter.refund(make_request(psp_reference=INTENT))
    form = sent_form(route)
    assert form["payment_intent"] == INTENT
    assert "charge" not in form


async def test_refund_sends_the_amount_in_minor_units(adapter, stripe_api):
    route = stripe_api.post("/v1/refunds").respond(200, json=refund_object())
    await adapter.refund(make_request(amount=1999))
    assert sent_form(route)["amount"] == "1999"


@pytest.mark.parametrize(("ours", "sent"), [
    ("duplicate", "duplicate"),
    ("fraudulent", "fraudulent"),
    ("requested_by_customer", "requested_by_customer"),
    ("customer_changed_mind", "requested_by_customer"),
    ("goodwill gesture", "requested_by_customer"),
])
async def test_refund_reason_is_mapped_to_one_of_stripes_three_reasons(adapter, stripe_api, ours, sent):
    route = stripe_api.post("/v1/refunds").respond(200, json=refund_object())
    await adapter.refund(make_request(reason=ours))
    assert sent_form(route)["reason"] == sent


async def test_refund_without_a_reason_sends_no_reason(adapter, stripe_api):
    route = stripe_api.post("/v1/refunds").respond(200, json=refund_object())
    await adapter.refund(make_request(reason=None))
    assert "reason" not in sent_form(route)


async def test_refund_carries_our_ids_in_metadata(adapter, stripe_api):
    route = stripe_api.post("/v1/refunds").respond(200, json=refund_object())
    await adapter.refund(make_request(credit_note_id="CN-12"))
    form = sent_form(route)
    assert form["metadata[refund_id]"] == "rf_01HZXK4Q7M"
    assert form["metadata[invoice_id]"] == "INV-2024-0042"
    assert form["metadata[credit_note_id]"] == "CN-12"


async def test_refund_without_a_credit_note_sends_no_credit_note_metadata(adapter, stripe_api):
    route = stripe_api.post("/v1/refunds").respond(200, json=refund_object())
    await adapter.refund(make_request(credit_note_id=None))
    assert "metadata[credit_note_id]" not in sent_form(route)


async def test_user_metadata_is_sent_and_our_ids_win_over_user_keys_of_the_same_name(adapter, stripe_api):
    route = stripe_api.post("/v1/refunds").respond(200, json=refund_object())
    user = {"order": "A-9", "refund_id": "forged", "invoice_id": "forged", "credit_note_id": "forged"}
    await adapter.refund(make_request(credit_note_id="CN-12", metadata=user))
    form = sent_form(route)
    assert form["metadata[order]"] == "A-9"
    assert form["metadata[refund_id]"] == "rf_01HZXK4Q7M"
    assert form["metadata[invoice_id]"] == "INV-2024-0042"
    assert form["metadata[credit_note_id]"] == "CN-12"


async def test_refund_authenticates_with_the_secret_key_as_bearer_token(adapter, stripe_api):
    route = stripe_api.post("/v1/refunds").respond(200, json=refund_object())
    await adapter.refund(make_request())
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in route.calls.last.request.content.decode()


async def test_idempotency_key_is_the_requests_key_and_the_same_on_a_resend(adapter, stripe_api):
    route = stripe_api.post("/v1/refunds").respond(200, json=refund_object())
    request = make_request(idempotency_key="idem-7f3a9c")
    await adapter.refund(request)
    await adapter.refund(request)
    keys = [call.request.headers["Idempotency-Key"] for call in route.calls]
    assert keys == ["idem-7f3a9c", "idem-7f3a9c"]


async def test_two_refunds_send_their_own_idempotency_keys(adapter, stripe_api):
    route = stripe_api.post("/v1/refunds").respond(200, json=refund_object())
    await adapter.refund(make_request(idempotency_key="idem-one"))
    await adapter.refund(make_request(idempotency_key="idem-two"))
    assert [c.request.headers["Idempotency-Key"] for c in route.calls] == ["idem-one", "idem-two"]


# --- 2xx answers: the Refund object -------------------------------------------------------------

@pytest.mark.parametrize(("status", "outcome"), [
    ("pending", Outcome.PENDING),
    ("succeeded", Outcome.SUCCEEDED),
    ("canceled", Outcome.CANCELED),
    ("requires_action", Outcome.NEEDS_ATTENTION),
])
async def test_refund_status_maps_to_our_outcome(adapter, stripe_api, status, outcome):
    stripe_api.post("/v1/refunds").respond(200, json=refund_object(status, id="re_3PqRst0042"))
    result = await adapter.refund(make_request())
    assert result.outcome is outcome
    assert result.psp_refund_id == "re_3PqRst0042"


async def test_failed_refund_is_declined_with_the_failure_reason_kept(adapter, stripe_api):
    stripe_api.post("/v1/refunds").respond(
        200, json=refund_object("failed", failure_reason="expired_or_canceled_card",
                                failure_balance_transaction="txn_3PqRstFail"))
    result = await adapter.refund(make_request())
    assert result.outcome is Outcome.DECLINED
    assert result.processor_code == "expired_or_canceled_card"
    assert result.decline_code == "expired_or_canceled_card"
    assert result.psp_refund_id == "re_3PqRst0001"


@pytest.mark.parametrize("status", ["processing", "Succeeded", "", None, 3])
async def test_unknown_refund_status_needs_attention_and_is_never_success(adapter, stripe_api, status):
    stripe_api.post("/v1/refunds").respond(200, json=refund_object(status))
    result = await adapter.refund(make_request())
    assert result.outcome is Outcome.NEEDS_ATTENTION
    assert result.psp_refund_id == "re_3PqRst0001"


@pytest.mark.parametrize("body", [
    b"<html><body>502 Bad Gateway</body></html>",
    b"",
    b"not json at all",
    b"[]",
    b'"refund"',
    orjson.dumps({"id": CHARGE, "object": "charge", "amount": 2500, "status": "succeeded"}),
    orjson.dumps({"object": "refund", "status": "succeeded", "amount": 2500}),  # no id
    orjson.dumps({"id": 42, "object": "refund", "status": "succeeded"}),
    orjson.dumps(stripe_error("api_error")),
], ids=["html", "empty", "text", "list", "string", "charge", "refund_without_id", "numeric_id", "error_body"])
async def test_success_status_without_a_refund_object_is_a_protocol_error(adapter, stripe_api, body):
    stripe_api.post("/v1/refunds").respond(200, content=body)
    with pytest.raises(ProcessorProtocolError):
        await adapter.refund(make_request())


# --- error answers -------------------------------------------------------------------------------

@pytest.mark.parametrize(("http_status", "etype"), [(402, "card_error"), (400, "invalid_request_error")])
@pytest.mark.parametrize("code", ["charge_already_refunded", "amount_too_large", "amount_too_small"])
async def test_refusal_of_the_refund_is_a_decline_with_the_code_kept(adapter, stripe_api, http_status, etype, code):
    stripe_api.post("/v1/refunds").respond(http_status, json=stripe_error(etype, code, param="amount"))
    result = await adapter.refund(make_request())
    assert result.outcome is Outcome.DECLINED
    assert result.processor_code == code
    assert result.decline_code == code
    assert result.psp_refund_id is None


async def test_card_error_with_only_a_decline_code_is_a_decline_with_that_code(adapter, stripe_api):
    stripe_api.post("/v1/refunds").respond(402, json=stripe_error("card_error", decline_code="do_not_honor"))
    result = await adapter.refund(make_request())
    assert result.outcome is Outcome.DECLINED
    assert result.decline_code == "do_not_honor"


async def test_idempotency_error_is_a_protocol_error_and_never_a_retry(adapter, stripe_api):
    stripe_api.post("/v1/refunds").respond(400, json=stripe_error(
        "idempotency_error", message="Keys for idempotent requests can only be used with the same parameters"))
    with pytest.raises(ProcessorProtocolError) as info:
        await adapter.refund(make_request())
    assert not isinstance(info.value, TransientProcessorError)
    assert info.value.code == "idempotency_error"


async def test_concurrent_use_of_the_key_409_is_transient(adapter, stripe_api):
    stripe_api.post("/v1/refunds").respond(409, json=stripe_error(
        "idempotency_error", message="There is currently another in-progress request using this Idempotent Key"))
    with pytest.raises(TransientProcessorError) as info:
        await adapter.refund(make_request())
    assert not may_have_executed(info.value)


async def test_conflict_409_without_an_error_body_is_transient(adapter, stripe_api):
    stripe_api.post("/v1/refunds").respond(409, json=stripe_error("invalid_request_error", "lock_timeout"))
    with pytest.raises(TransientProcessorError):
        await adapter.refund(make_request())


async def test_rate_limit_429_is_transient_with_retry_after_from_the_header(adapter, stripe_api):
    stripe_api.post("/v1/refunds").respond(
        429, headers={"Retry-After": "7"}, json=stripe_error("invalid_request_error", "rate_limit"))
    with pytest.raises(TransientProcessorError) as info:
        await adapter.refund(make_request())
    assert info.value.retry_after == 7.0
    assert not may_have_executed(info.value)


async def test_rate_limit_429_without_retry_after_is_transient_with_no_hint(adapter, stripe_api):
    stripe_api.post("/v1/refunds").respond(429, json=stripe_error("invalid_request_error", "rate_limit"))
    with pytest.raises(TransientProcessorError) as info:
        await adapter.refund(make_request())
    assert info.value.retry_after is None


@pytest.mark.parametrize("http_status", [500, 502, 503])
async def test_server_error_is_retryable_and_may_have_executed(adapter, stripe_api, http_status):
    stripe_api.post("/v1/refunds").respond(http_status, json=stripe_error("api_error"))
    with pytest.raises(MAY_HAVE_EXECUTED) as info:
        await adapter.refund(make_request())
    assert may_have_executed(info.value)


async def test_server_error_with_an_html_body_is_retryable_and_may_have_executed(adapter, stripe_api):
    stripe_api.post("/v1/refunds").respond(502, content=b"<html>Bad Gateway</html>",
                                           headers={"Content-Type": "text/html"})
    with pytest.raises(MAY_HAVE_EXECUTED) as info:
        await adapter.refund(make_request())
    assert may_have_executed(info.value)


async def test_should_retry_true_on_a_400_makes_it_transient(adapter, stripe_api):
    stripe_api.post("/v1/refunds").respond(400, headers={"Stripe-Should-Retry": "true"},
                                           json=stripe_error("invalid_request_error", "amount_too_large"))
    with pytest.raises(TransientProcessorError) as info:
        await adapter.refund(make_request())
    assert not may_have_executed(info.value)


async def test_should_retry_false_on_a_503_is_a_protocol_error(adapter, stripe_api):
    stripe_api.post("/v1/refunds").respond(503, headers={"Stripe-Should-Retry": "false"},
                                           json=stripe_error("api_error"))
    with pytest.raises(ProcessorProtocolError):
        await adapter.refund(make_request())


async def test_should_retry_false_on_a_429_is_not_transient(adapter, stripe_api):
    stripe_api.post("/v1/refunds").respond(429, headers={"Stripe-Should-Retry": "false"},
                                           json=stripe_error("invalid_request_error", "rate_limit"))
    try:
        result = await adapter.refund(make_request())
    except MAY_HAVE_EXECUTED:
        pytest.fail("Stripe-Should-Retry: false on a 429 was treated as retryable")
    except ProcessorProtocolError:
        return
    assert result.outcome not in (Outcome.SUCCEEDED, Outcome.PENDING)


@pytest.mark.parametrize("http_status", [401, 403])
async def test_rejected_credentials_are_a_protocol_error(adapter, stripe_api, http_status):
    stripe_api.post("/v1/refunds").respond(http_status, json=stripe_error(
        "invalid_request_error", message="Invalid API Key provided: sk_test_****6789"))
    with pytest.raises(ProcessorProtocolError) as info:
        await adapter.refund(make_request())
    assert not isinstance(info.value, TransientProcessorError)


async def test_unknown_error_type_on_a_4xx_is_a_protocol_error(adapter, stripe_api):
    stripe_api.post("/v1/refunds").respond(418, json=stripe_error("teapot_error"))
    with pytest.raises(ProcessorProtocolError):
        await adapter.refund(make_request())


# --- transport faults -----------------------------------------------------------------------------

async def test_connection_refused_is_transient_and_was_not_executed(adapter, stripe_api):
    stripe_api.post("/v1/refunds").mock(side_effect=httpx.ConnectError("connection refused"))
    with pytest.raises(TransientProcessorError) as info:
        await adapter.refund(make_request())
    assert not may_have_executed(info.value)


@pytest.mark.parametrize("fault", [httpx.ReadTimeout("read timed out"),
                                   httpx.RemoteProtocolError("server disconnected without sending a response")],
                         ids=lambda e: type(e).__name__)
async def test_no_answer_after_sending_is_retryable_and_may_have_executed(adapter, stripe_api, fault):
    stripe_api.post("/v1/refunds").mock(side_effect=fault)
    with pytest.raises(MAY_HAVE_EXECUTED) as info:
        await adapter.refund(make_request())
    assert may_have_executed(info.value)


# --- look-ups -------------------------------------------------------------------------------------

async def test_lookup_by_psp_refund_id_reads_that_refund(adapter, stripe_api):
    route = stripe_api.get("/v1/refunds/re_3PqRst0042").respond(200, json=refund_object("succeeded",
                                                                                         id="re_3PqRst0042"))
    listing = stripe_api.get("/v1/refunds").respond(200, json={"object": "list", "data": [], "has_more": False})
    result = await adapter.lookup_refund(make_request(), "re_3PqRst0042")
    assert result == RefundResult(Outcome.SUCCEEDED, psp_refund_id="re_3PqRst0042", processor_code="succeeded")
    assert route.call_count == 1
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert listing.call_count == 0


async def test_lookup_by_psp_refund_id_maps_a_failed_refund_to_a_decline(adapter, stripe_api):
    stripe_api.get("/v1/refunds/re_3PqRst0042").respond(
        200, json=refund_object("failed", id="re_3PqRst0042", failure_reason="lost_or_stolen_card"))
    result = await adapter.lookup_refund(make_request(), "re_3PqRst0042")
    assert result.outcome is Outcome.DECLINED
    assert result.decline_code == "lost_or_stolen_card"


async def test_lookup_of_a_refund_stripe_does_not_know_is_none(adapter, stripe_api):
    stripe_api.get("/v1/refunds/re_missing").respond(404, json=stripe_error(
        "invalid_request_error", "resource_missing", message="No such refund: 're_missing'", param="id"))
    assert await adapter.lookup_refund(make_request(), "re_missing") is None


async def test_lookup_by_psp_refund_id_on_a_server_error_is_retryable(adapter, stripe_api):
    stripe_api.get("/v1/refunds/re_3PqRst0042").respond(500, json=stripe_error("api_error"))
    with pytest.raises(MAY_HAVE_EXECUTED):
        await adapter.lookup_refund(make_request(), "re_3PqRst0042")


class RefundListing:
    """GET /v1/refunds over a fixed list of refunds, paged the way Stripe pages: limit and starting_after."""

    def __init__(self, refunds: list[dict], page_size: int = 2):
        self.refunds, self.page_size = refunds, page_size
        self.params: list[dict[str, str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params)
        self.params.append(params)
        start = 0
        if "starting_after" in params:
            start = 1 + next(i for i, r in enumerate(self.refunds) if r["id"] == params["starting_after"])
        page = self.refunds[start:start + self.page_size]
        return httpx.Response(200, json={"object": "list", "url": "/v1/refunds", "data": page,
                                         "has_more": start + self.page_size < len(self.refunds)})


def other_refund(n: int) -> dict:
    return refund_object("succeeded", id=f"re_other{n:04d}", refund_id=f"rf_other{n}")


async def test_lookup_without_psp_id_lists_the_charges_refunds_and_matches_our_refund_id(adapter, stripe_api):
    listing = RefundListing([other_refund(1), refund_object("pending", id="re_ours")], page_size=100)
    stripe_api.get("/v1/refunds").mock(side_effect=listing)
    result = await adapter.lookup_refund(make_request(psp_reference=CHARGE), None)
    assert result is not None
    assert result.outcome is Outcome.PENDING
    assert result.psp_refund_id == "re_ours"
    assert listing.params == [{"charge": CHARGE, "limit": "100"}]


async def test_lookup_without_psp_id_lists_by_payment_intent_for_a_pi_reference(adapter, stripe_api):
    listing = RefundListing([refund_object("succeeded", id="re_ours")], page_size=100)
    stripe_api.get("/v1/refunds").mock(side_effect=listing)
    result = await adapter.lookup_refund(make_request(psp_reference=INTENT), None)
    assert result is not None and result.psp_refund_id == "re_ours"
    assert listing.params == [{"payment_intent": INTENT, "limit": "100"}]


async def test_lookup_follows_has_more_with_starting_after_until_it_finds_ours(adapter, stripe_api):
    refunds = [other_refund(1), other_refund(2), other_refund(3), other_refund(4),
               refund_object("succeeded", id="re_ours")]
    listing = RefundListing(refunds, page_size=2)
    stripe_api.get("/v1/refunds").mock(side_effect=listing)
    result = await adapter.lookup_refund(make_request(), None)
    assert result is not None and result.psp_refund_id == "re_ours"
    assert [p.get("starting_after") for p in listing.params] == [None, "re_other0002", "re_other0004"]
    assert all(p["charge"] == CHARGE and p["limit"] == "100" for p in listing.params)


async def test_lookup_that_matches_nothing_on_any_page_is_none(adapter, stripe_api):
    listing = RefundListing([other_refund(n) for n in range(5)], page_size=2)
    stripe_api.get("/v1/refunds").mock(side_effect=listing)
    assert await adapter.lookup_refund(make_request(), None) is None
    assert len(listing.params) == 3


async def test_lookup_of_a_payment_without_refunds_is_none(adapter, stripe_api):
    stripe_api.get("/v1/refunds").mock(side_effect=RefundListing([]))
    assert await adapter.lookup_refund(make_request(), None) is None


async def test_lookup_ignores_refunds_without_metadata(adapter, stripe_api):
    dashboard_refund = refund_object("succeeded", id="re_dashboard", metadata={})
    stripe_api.get("/v1/refunds").mock(side_effect=RefundListing([dashboard_refund]))
    assert await adapter.lookup_refund(make_request(), None) is None


async def test_lookup_listing_for_a_payment_stripe_does_not_know_is_none(adapter, stripe_api):
    stripe_api.get("/v1/refunds").respond(404, json=stripe_error("invalid_request_error", "resource_missing"))
    assert await adapter.lookup_refund(make_request(), None) is None


async def test_lookup_listing_that_fails_with_a_server_error_is_retryable(adapter, stripe_api):
    stripe_api.get("/v1/refunds").respond(503, json=stripe_error("api_error"))
    with pytest.raises(MAY_HAVE_EXECUTED):
        await adapter.lookup_refund(make_request(), None)


@pytest.mark.parametrize("body", [b"not json", b'{"object": "list"}', b'[]'])
async def test_lookup_listing_that_is_unparseable_is_a_protocol_error(adapter, stripe_api, body):
    stripe_api.get("/v1/refunds").respond(200, content=body)
    with pytest.raises(ProcessorProtocolError):
        await adapter.lookup_refund(make_request(), None)


@pytest.mark.parametrize("body", [b'{"data": 5, "has_more": false}', b'{"data": ["re_1"], "has_more": false}',
                                  b'{"data": [{"object": "refund"}], "has_more": false}'])
async def test_lookup_listing_whose_data_is_not_a_list_of_refunds_is_a_protocol_error(adapter, stripe_api, body):
    stripe_api.get("/v1/refunds").respond(200, content=body)
    with pytest.raises(ProcessorProtocolError):
        await adapter.lookup_refund(make_request(), None)


async def test_lookup_that_never_runs_out_of_pages_stops_with_a_protocol_error(adapter, stripe_api):
    listing = RefundListing([other_refund(n) for n in range(50)], page_size=1)
    stripe_api.get("/v1/refunds").mock(side_effect=listing)
    with pytest.raises(ProcessorProtocolError):
        await adapter.lookup_refund(make_request(), None)
    assert len(listing.params) < 50


# --- where each answer takes the refund -------------------------------------------------------------

def answer(http_status: int, body: dict | bytes, headers: dict[str, str] | None = None):
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.Response(http_status, content=content, headers=headers)


# Retries spent on a fault that may have acted, or an unknown outcome: both spellings of "look it up first".
MAYBE_EXECUTED_CODES = frozenset({"retries_exhausted", "outcome_unknown"})

LEDGER_CASES = {
    "succeeded": (answer(200, refund_object("succeeded")), Status.SUCCEEDED, Stage.DONE, None),
    "pending": (answer(200, refund_object("pending")), Status.PENDING, Stage.PENDING_AT_PROCESSOR, None),
    "failed": (answer(200, refund_object("failed", failure_reason="insufficient_funds")),
               Status.FAILED, Stage.DONE, "insufficient_funds"),
    "canceled": (answer(200, refund_object("canceled")), Status.CANCELED, Stage.DONE, "canceled"),
    "requires_action": (answer(200, refund_object("requires_action")), Status.REQUIRES_ATTENTION,
                        Stage.OUTCOME_UNKNOWN, "requires_action"),  # cancelable: POST /v1/refunds/{id}/cancel
    "unknown_status": (answer(200, refund_object("processing")), Status.REQUIRES_ATTENTION, Stage.OUTCOME_UNKNOWN,
                       "unrecognised_processor_status"),
    "garbage_200": (answer(200, b"<html>"), Status.REQUIRES_ATTENTION, Stage.OUTCOME_UNKNOWN,
                    "processor_protocol_error"),
    "card_error_402": (answer(402, stripe_error("card_error", "charge_already_refunded")), Status.FAILED,
                       Stage.DONE, "charge_already_refunded"),
    "amount_too_large_400": (answer(400, stripe_error("invalid_request_error", "amount_too_large")), Status.FAILED,
                             Stage.DONE, "amount_too_large"),
    "idempotency_error": (answer(400, stripe_error("idempotency_error")), Status.REQUIRES_ATTENTION,
                          Stage.OUTCOME_UNKNOWN, "processor_protocol_error"),
    "conflict_409": (answer(409, stripe_error("idempotency_error")), Status.REQUIRES_ATTENTION, Stage.NOT_SENT,
                     "retries_exhausted"),
    "rate_limit_429": (answer(429, stripe_error("invalid_request_error", "rate_limit")),
                       Status.REQUIRES_ATTENTION, Stage.NOT_SENT, "retries_exhausted"),
    "server_error_500": (answer(500, stripe_error("api_error")), Status.REQUIRES_ATTENTION, Stage.OUTCOME_UNKNOWN,
                         MAYBE_EXECUTED_CODES),
    "should_retry_false_503": (answer(503, stripe_error("api_error"), {"Stripe-Should-Retry": "false"}),
                               Status.REQUIRES_ATTENTION, Stage.OUTCOME_UNKNOWN, "processor_protocol_error"),
    "unauthorized_401": (answer(401, stripe_error("invalid_request_error")), Status.REQUIRES_ATTENTION,
                         Stage.OUTCOME_UNKNOWN, "processor_protocol_error"),
    "connect_error": (httpx.ConnectError("refused"), Status.REQUIRES_ATTENTION, Stage.NOT_SENT, "retries_exhausted"),
    "read_timeout": (httpx.ReadTimeout("timed out"), Status.REQUIRES_ATTENTION, Stage.OUTCOME_UNKNOWN,
                     MAYBE_EXECUTED_CODES),
    "remote_protocol_error": (httpx.RemoteProtocolError("disconnected"), Status.REQUIRES_ATTENTION,
                              Stage.OUTCOME_UNKNOWN, MAYBE_EXECUTED_CODES),
}


@pytest.mark.parametrize(("reply", "status", "stage", "failure_code"), LEDGER_CASES.values(), ids=LEDGER_CASES.keys())
async def test_each_stripe_answer_leads_the_refund_to_its_intended_status_and_stage(adapter, stripe_api, reply,
                                                                                    status, stage, failure_code):
    route = stripe_api.post("/v1/refunds")
    if isinstance(reply, Exception):
        route.mock(side_effect=reply)
    else:
        route.mock(return_value=reply)
    try:
        outcome: RefundResult | BaseException = await adapter.refund(make_request())
    except (TransientProcessorError, ProcessorProtocolError, OutcomeUnknownError) as e:
        outcome = e
    decision = decide(outcome)
    assert (decision.target.status, decision.target.stage) == (status, stage)
    if isinstance(failure_code, frozenset):
        assert decision.failure_code in failure_code
    else:
        assert decision.failure_code == failure_code


async def test_succeeded_answer_records_stripes_refund_id(adapter, stripe_api):
    stripe_api.post("/v1/refunds").respond(200, json=refund_object("succeeded", id="re_3PqRst0099"))
    decision = decide(await adapter.refund(make_request()))
    assert decision.psp_refund_id == "re_3PqRst0099"
