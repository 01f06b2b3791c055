"""Log output never carries API keys, secrets, passwords, tokens or card numbers, while the ids and
amounts an operator needs stay readable."""

from __future__ import annotations

import io
import json

import pytest
import structlog
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.logging import REDACTED, card_spans, configure, has_card_number, register_secrets, scrub_text

CARD = "4242424242424242"  # Luhn-valid test Visa
NOT_A_CARD = "4242424242424241"  # same length, fails the Luhn check
API_KEY = "sk_test_writer_0123456789"
WEBHOOK_SECRET = "whsec_5f2b1c9e8d7a6b5c"


@pytest.fixture
def logs():
    """Route structlog to a buffer; `logs()` returns everything written so far."""
    stream = io.StringIO()
    configure("json", "info", stream=stream)
    yield stream.getvalue
    configure("console", "warning")


@pytest.fixture
def log():
    return structlog.get_logger()


def lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- secrets by field name ----------------------------------------------------------------------

@pytest.mark.parametrize("field", [
    "api_key", "apikey", "api-key", "API_KEY", "password", "secret", "webhook_secret", "client_secret",
    "token", "access_token", "authorization", "Authorization", "signature", "card", "card_number", "pan",
    "cvc", "cvv",
])
def test_value_of_a_secret_named_field_never_reaches_the_log(logs, log, field):
    log.info("configured", **{field: "opensesame-1234"})
    out = logs()
    assert "opensesame" not in out
    assert lines(out)[0][field] == REDACTED


def test_authorization_header_in_a_headers_dict_never_reaches_the_log(logs, log):
    log.info("outgoing_request", headers={"Authorization": "Basic dXNlcjpodW50ZXIy",
                                          "Content-Type": "application/json"})
    out = logs()
    assert "dXNlcjpodW50ZXIy" not in out
    assert lines(out)[0]["headers"] == {"Authorization": REDACTED, "Content-Type": "application/json"}


def test_secret_nested_in_lists_and_dicts_never_reaches_the_log(logs, log):
    log.info("processors_loaded", processors=[{"id": "stripe-eu", "config": {"api_key": "rk_nested_value_1"}},
                                              {"id": "bp", "password": "hunter2-bp"}])
    out = logs()
    assert "rk_nested_value_1" not in out and "hunter2-bp" not in out
    assert [p["id"] for p in lines(out)[0]["processors"]] == ["stripe-eu", "bp"]


def test_secret_inside_a_tuple_never_reaches_the_log(logs, log):
    log.info("pairs", pairs=("Authorization", f"Bearer {API_KEY}"))
    assert API_KEY not in logs()


# --- secrets by shape, in any field or in the message ----------------------------------------------

@pytest.mark.parametrize("text", [
    f"Authorization: Bearer {API_KEY}",
    "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    "bearer abc123-opaque-token",
])
def test_bearer_token_in_free_text_never_reaches_the_log(logs, log, text):
    token = text.split()[-1]
    log.info("request_failed", detail=text)
    log.info(f"request failed with {text}")
    out = logs()
    assert token not in out
    assert "Bearer [redacted]" in out


@pytest.mark.parametrize("key", [
    API_KEY, "sk_live_51Hx9ZpQeR4nD0mK3y", "rk_live_restricted_123456", WEBHOOK_SECRET,
])
def test_key_shaped_string_in_any_field_or_message_never_reaches_the_log(logs, log, key):
    log.info("processor_call", note=f"using key {key} for the call")
    log.info(f"key={key}")
    log.info("plain", value=key)
    out = logs()
    assert key not in out
    assert out.count(REDACTED) == 3


@pytest.mark.parametrize("card", [
    CARD, "4242 4242 4242 4242", "4242-4242-4242-4242", "5555555555554444", "378282246310005",
    "6011111111111117", "4000056655665556",
])
def test_luhn_valid_card_number_never_reaches_the_log(logs, log, card):
    log.info("refund_request", note=f"card {card} on file")
    log.info(f"customer paid with {card}")
    log.info("refund_request", reference=card)
    out = logs()
    assert card not in out
    assert card.replace(" ", "").replace("-", "") not in out
    assert out.count(REDACTED) == 3


def test_card_number_in_an_exception_traceback_never_reaches_the_log(logs, log):
    try:
        raise ValueError(f"processor rejected card {CARD}")
    except ValueError:
        log.exception("adapter_error")
    out = logs()
    assert CARD not in out
    assert "processor rejected card [redacted]" in lines(out)[0]["exception"]


def test_card_number_passed_as_a_format_argument_never_reaches_the_log(logs, log):
    log.info("paid with %s", CARD)
    assert CARD not in logs()


# --- what stays readable ----------------------------------------------------------------------

def test_ids_references_and_amounts_stay_readable(logs, log):
    fields = dict(refund_id="rf_01j9zq4k8m2n3p5r7s9t1v3w5x", transaction_id="tx_01j9zq4k8m2n3p5r7s9t1v3w5y",
                  psp_reference="ch_3MtwBwLkdIwHu7ix28a3tqPa", invoice_id="INV-2024-0042",
                  idempotency_key="rf_01j9zq4k8m2n3p5r7s9t1v3w5x", processor="stripe-eu", amount=1050,
                  currency="EUR", decline_code="insufficient_funds", processor_code="card_declined",
                  card_id="card_1N3T00LkdIwHu7ixRdxpVI1Q", token_id="tok_visa", status="succeeded")
    log.info("refund_created", **fields)
    record = lines(logs())[0]
    assert {k: record[k] for k in fields} == fields
    assert record["event"] == "refund_created"


def test_number_that_fails_the_luhn_check_stays_readable(logs, log):
    log.info("lookup", reference=NOT_A_CARD)
    log.info(f"order {NOT_A_CARD} shipped")
    out = logs()
    assert lines(out)[0]["reference"] == NOT_A_CARD
    assert lines(out)[1]["event"] == f"order {NOT_A_CARD} shipped"


def test_short_and_long_digit_runs_stay_readable(logs, log):
    # 12 digits is too short for a card, 20 too long: neither is one.
    log.info("refs", short="424242424242", long="42424242424242424242", amount=424242424242)
    record = lines(logs())[0]
    assert (record["short"], record["long"], record["amount"]) == ("424242424242", "42424242424242424242",
                                                                   424242424242)


def test_message_without_secrets_is_logged_unchanged(logs, log):
    log.info("refund 10.50 EUR for invoice INV-1 succeeded", attempt=2)
    record = lines(logs())[0]
    assert record["event"] == "refund 10.50 EUR for invoice INV-1 succeeded"
    assert record["attempt"] == 2
    assert record["level"] == "info"


def test_messages_below_the_configured_level_are_dropped(logs, log):
    log.debug("noisy", detail="x")
    log.info("kept")
    assert [r["event"] for r in lines(logs())] == ["kept"]


# --- edge cases -----------------------------------------------------------------------------------

def test_request_headers_mapping_never_leaks_the_authorization_or_api_key_header(logs, log):
    headers = CIMultiDictProxy(CIMultiDict({"Authorization": "Basic dXNlcjpodW50ZXIy",
                                            "X-API-Key": "billing-key-0123456789"}))
    log.info("request_received", headers=headers)
    out = logs()
    assert "dXNlcjpodW50ZXIy" not in out
    assert "billing-key-0123456789" not in out


def test_card_number_given_as_an_integer_never_reaches_the_log(logs, log):
    log.info("refund_request", reference=int(CARD))
    assert CARD not in logs()


def test_field_whose_name_merely_contains_pan_stays_readable(logs, log):
    log.info("customer", company="Acme GmbH", expand="lines")
    record = lines(logs())[0]
    assert (record["company"], record["expand"]) == ("Acme GmbH", "lines")


@pytest.mark.parametrize("text, secret", [
    ("connecting to postgresql://gateway:s3cr3t-pw@db:5432/gw", "s3cr3t-pw"),
    ("login failed: password=hunter2 user=bp", "hunter2"),
    ('{"api_key": "plain-value-123"}', "plain-value-123"),
    ("Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy"),
])
def test_credentials_inside_free_text_never_reach_the_log(logs, log, text, secret):
    log.info("db_error", detail=text)
    assert secret not in logs()


def test_what_a_processor_said_is_stored_without_keys_or_card_numbers():
    # Processors echo what they were sent; failure messages and attempt rows reach operators,
    # the console and the billing core's callbacks.
    from adapters.base import RefundResult, TransientProcessorError
    from gateway.domain.refunds import Outcome
    from gateway.ledger import decide

    declined = decide(RefundResult(Outcome.DECLINED, message="Invalid API Key provided: sk_live_4eC39HqLyjWDarjtT1zdp7dc"))
    transient = decide(TransientProcessorError("card 4242 4242 4242 4242 was refused; retry"))
    for decision in (declined, transient):
        assert "4eC39HqLyjWDarjtT1zdp7dc" not in decision.failure_message
        assert "4242 4242 4242 4242" not in decision.failure_message
    assert transient.failure_message.endswith("was refused; retry")
    assert len(decide(TransientProcessorError("x" * 5000)).failure_message) == 500


@pytest.mark.parametrize("text", [f"evt_{CARD}", f"ch_{CARD}x", f"pan:{CARD}", f"card{CARD[:4]} {CARD[4:]}"])
def test_a_card_number_glued_to_letters_or_underscores_is_redacted_too(logs, log, text):
    log.info("webhook_received", event_id=text)
    assert CARD not in logs() and CARD[4:] not in logs()


def test_the_libraries_stdlib_loggers_go_through_the_same_redaction_as_json(logs):
    import logging

    try:
        raise ValueError(f"b'Authorization: Bearer {API_KEY}\\x01{CARD}'")
    except ValueError:
        logging.getLogger("aiohttp.server").exception("Error handling request from 127.0.0.1")
    logging.getLogger("httpx").info(f"HTTP Request: POST /?card={CARD}")  # below the libraries' level
    [record] = lines(logs())
    assert (record["logger"], record["level"], record["event"]) == ("aiohttp.server", "error",
                                                                    "Error handling request from 127.0.0.1")
    assert "ValueError" in record["exception"] and API_KEY not in record["exception"]
    assert CARD not in logs()


@pytest.mark.parametrize(("text", "cards"), [
    ("4111111111111111", ["4111111111111111"]),
    ("card 4111 1111 1111 1111.", ["4111 1111 1111 1111"]),
    ("CN-4111111111111111-2", ["4111111111111111"]),  # a trailing group does not hide it
    ("ref 3782-822463-10005 x", ["3782-822463-10005"]),
    ("4111111111111112", []),  # fails Luhn
    ("order 20261121164832620802", []),  # 20 digits: no card number
    ("2026-11-21 and 1732206512", []),
    # A Stripe-Signature whose MAC holds 17 digits in a row that pass Luhn: a hex MAC, not a card.
    ("t=1796393937,v1=6eff7c9f88d31453294899833574e30f6c443ae3bed5a1e6fd0750860315053b", []),
    (f"sha256:{'ab' * 8}{CARD}{'cd' * 8}", []),
    (f"sha256:{'ab' * 2}{CARD}{'cd' * 2}", [CARD]),  # too short for a hash: a card glued to letters
    (f"{'1' * 40} {CARD}", [CARD]),  # digits only are no hash
])
def test_card_numbers_are_found_in_any_grouping(text, cards):
    assert [text[a:b] for a, b in card_spans(text)] == cards
    assert has_card_number(text) == bool(cards)


def test_a_registered_secret_is_redacted_by_value_in_any_escaping_and_credential_elements_always():
    secret = "pa$$<w0rd>&more"
    register_secrets([secret, "short"])
    echoed = (f"fault: {secret} / &lt;Password&gt;pa$$&lt;w0rd&gt;&amp;more&lt;/Password&gt; / "
              f"pa%24%24%3Cw0rd%3E%26more / <User>gw_user</User> <Password>anything</Password>")
    scrubbed = scrub_text(echoed)
    assert "w0rd" not in scrubbed and "gw_user" not in scrubbed and "anything" not in scrubbed, scrubbed
    assert scrub_text("a short word") == "a short word"  # too short to register: ordinary words stay
