"""Every HTTP adapter reads at most `max_answer_bytes` of a processor's answer, counted after
decompression and enforced while the answer streams in: a decompression bomb, or a plain answer
that does not end, is a protocol error (the refund needs attention, never succeeded), and the
process does not grow by what the bomb expands to.

The processors are faked by URL: a small aiohttp server on loopback, so that the answer goes
through a real socket and the adapter's own decoding, as a hostile base_url's would.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import tracemalloc
import zlib
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterator

import orjson
import pytest
from aiohttp import web
from pydantic import ValidationError

from adapters.base import CredentialStatus, ProcessorAdapter, ProcessorProtocolError, RefundRequest
from adapters.bridgepay import BridgePayAdapter
from adapters.bridgepay_sim import wire
from adapters.simkit import serve_on_loopback
from adapters.stripe import StripeAdapter
from gateway.domain.refunds import Outcome, Stage, Status
from gateway.ledger import decide
from gateway.settings import BridgePayProcessor, MockProcessor, StripeProcessor

DEFAULT_CAP = 1_048_576
BOMB_EXPANDS_TO = 32 * 1024 * 1024  # 32 times the default cap, from about 32 KB of gzip
# What one call may allocate in all while it meets a bomb: the cap, the decoder's buffers, the client.
PEAK_LIMIT = 6 * 1024 * 1024
SMALL_CAP = 4096
STREAM_CHUNK = 64 * 1024

REQUEST = RefundRequest(refund_id="rf_answer_cap", idempotency_key="rf_answer_cap:refund",
                        psp_reference="ch_answer_cap", amount=1_000, currency="USD", invoice_id="INV-CAP")


# --- answers that would succeed, padded with whitespace to any size --------------------------------------------

@functools.cache
def stripe_refund() -> bytes:
    return orjson.dumps({"id": "re_answer_cap", "object": "refund", "amount": 1_000, "currency": "usd",
                         "charge": "ch_answer_cap", "status": "succeeded",
                         "metadata": {"refund_id": "rf_answer_cap"}})


@functools.cache
def bridgepay_refund() -> bytes:
    inner = (b'<?xml version="1.0" encoding="utf-8"?><VoidRefund><TransactionID>rf_answer_cap</TransactionID>'
             b"<RequestType>012</RequestType><ResponseCode>00000</ResponseCode>"
             b"<ResponseDescription>Successful Request</ResponseDescription><responseMessage>"
             b"<GatewayTransID>117154791</GatewayTransID><GatewayMessage>A08 - Partial Refund Posted</GatewayMessage>"
             b"<ResponseType>refund</ResponseType><RemainingAmount>0</RemainingAmount></responseMessage></VoidRefund>")
    return wire.process_response(inner)


def padded(answer: bytes, size: int) -> bytes:
    """`answer` grown to `size` bytes with whitespace where its format allows it (JSON after the
    value, XML between elements): still an answer that parses, and succeeds."""
    if answer.startswith(b"{"):
        return answer + b" " * (size - len(answer))
    at = answer.index(b"<s:Body>") if b"<s:Body>" in answer else answer.index(b"Body>") + len(b"Body>")
    at = answer.index(b">", at) + 1
    return answer[:at] + b" " * (size - len(answer)) + answer[at:]


@functools.cache
def gzip_bomb(answer: bytes) -> bytes:
    """A valid answer padded to BOMB_EXPANDS_TO bytes, gzip'd: about a thousandth of that on the wire."""
    return gzip.compress(padded(answer, BOMB_EXPANDS_TO), compresslevel=9)


# --- a processor faked by URL -------------------------------------------------------------------------------------

@dataclass
class FakeProcessor:
    """Answers every request with one canned answer; `stream_total` streams a plain answer of that
    many bytes (the answer's start, then spaces) and counts what it wrote before the client left."""

    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    stream_total: int | None = None
    written: int = 0
    paths: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.paths.append(request.path)
        if self.stream_total is None:
            return web.Response(status=self.status, body=self.body, headers=self.headers)
        response = web.StreamResponse(status=self.status, headers=self.headers)
        await response.prepare(request)
        try:
            await response.write(self.body)
            self.written = len(self.body)
            while self.written < self.stream_total:
                await response.write(b" " * STREAM_CHUNK)
                self.written += STREAM_CHUNK
            await response.write_eof()
        except ConnectionError:
            pass  # the client stopped reading and closed the connection: what it should do
        return response


@pytest.fixture
async def processor() -> AsyncIterator[tuple[FakeProcessor, str]]:
    fake = FakeProcessor()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    async with serve_on_loopback(app) as url:
        yield fake, url


@dataclass(frozen=True)
class Processor:
    name: str
    make: Callable[..., ProcessorAdapter]  # (base_url, **config overrides)
    answer: Callable[[], bytes]  # a refund answer that succeeds
    content_type: str


def _stripe(url: str, **overrides) -> ProcessorAdapter:
    return StripeAdapter(StripeProcessor(id="stripe", kind="stripe", base_url=url, api_key="sk_test_answer_cap",
                                         timeout_seconds=10, **overrides))


def _bridgepay(url: str, **overrides) -> ProcessorAdapter:
    return BridgePayAdapter(BridgePayProcessor(id="bridgepay", kind="bridgepay", base_url=url, username="u",
                                               password="p", merchant_code="1", merchant_account_code="2",
                                               timeout_seconds=10, **overrides))


PROCESSORS = [Processor("stripe", _stripe, stripe_refund, "application/json"),
              Processor("bridgepay", _bridgepay, bridgepay_refund, "text/xml; charset=utf-8")]
BY_PROCESSOR = pytest.mark.parametrize("proc", PROCESSORS, ids=[p.name for p in PROCESSORS])


@contextlib.asynccontextmanager
async def adapter_for(proc: Processor, url: str, **overrides) -> AsyncIterator[ProcessorAdapter]:
    adapter = proc.make(url, **overrides)
    try:
        yield adapter
    finally:
        await adapter.aclose()


@contextlib.contextmanager
def peak_allocated() -> Iterator[list[int]]:
    """The most Python held at once, beyond what it held at the start, inside the block: one int."""
    peak: list[int] = []
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        yield peak
    finally:
        peak.append(tracemalloc.get_traced_memory()[1] - start)
        tracemalloc.stop()


async def refund_error(adapter: ProcessorAdapter) -> ProcessorProtocolError:
    with pytest.raises(ProcessorProtocolError) as info:
        await adapter.refund(REQUEST)
    return info.value


def assert_needs_attention(error: ProcessorProtocolError) -> None:
    decision = decide(error)
    assert (decision.target.status, decision.target.stage) == (Status.REQUIRES_ATTENTION, Stage.OUTCOME_UNKNOWN)
    assert decision.failure_code == "processor_protocol_error"


# --- decompression bombs -------------------------------------------------------------------------------------------

@BY_PROCESSOR
async def test_gzip_bomb_refund_answer_is_a_protocol_error_read_no_further_than_the_cap(processor, proc):
    fake, url = processor
    fake.body, fake.headers = gzip_bomb(proc.answer()), {"Content-Type": proc.content_type, "Content-Encoding": "gzip"}
    assert len(fake.body) < BOMB_EXPANDS_TO // 500
    async with adapter_for(proc, url) as adapter:
        with peak_allocated() as peak:
            error = await refund_error(adapter)
    assert peak[0] < PEAK_LIMIT, f"{peak[0]} bytes allocated for a {DEFAULT_CAP}-byte cap"
    assert error.code == "too_large" and str(DEFAULT_CAP) in str(error)
    assert_needs_attention(error)


@BY_PROCESSOR
@pytest.mark.parametrize("coding, compress", [("deflate", zlib.compress),
                                              ("deflate", lambda d: zlib.compress(d, wbits=-zlib.MAX_WBITS)),
                                              ("x-gzip", gzip.compress), ("GZIP", gzip.compress)],
                         ids=["deflate", "raw_deflate", "x-gzip", "upper_case"])
async def test_bomb_in_every_encoding_asked_for_is_capped(processor, proc, coding, compress):
    fake, url = processor
    fake.body = compress(padded(proc.answer(), BOMB_EXPANDS_TO))
    fake.headers = {"Content-Type": proc.content_type, "Content-Encoding": coding}
    async with adapter_for(proc, url) as adapter:
        with peak_allocated() as peak:
            error = await refund_error(adapter)
    assert error.code == "too_large"
    assert peak[0] < PEAK_LIMIT


@BY_PROCESSOR
async def test_gzip_bomb_answer_to_a_lookup_is_a_protocol_error(processor, proc):
    fake, url = processor
    fake.body, fake.headers = gzip_bomb(proc.answer()), {"Content-Type": proc.content_type, "Content-Encoding": "gzip"}
    async with adapter_for(proc, url) as adapter:
        with peak_allocated() as peak:
            with pytest.raises(ProcessorProtocolError) as info:
                # Stripe: the refund by its id (a GET); BridgePay: the Reporting API.
                await adapter.lookup_refund(REQUEST, "re_answer_cap")
    assert info.value.code == "too_large"
    assert peak[0] < PEAK_LIMIT


@BY_PROCESSOR
async def test_gzip_bomb_answer_to_a_credentials_check_is_unexpected_not_a_crash(processor, proc):
    fake, url = processor
    fake.body, fake.headers = gzip_bomb(proc.answer()), {"Content-Type": proc.content_type, "Content-Encoding": "gzip"}
    async with adapter_for(proc, url) as adapter:
        with peak_allocated() as peak:
            check = await adapter.check_credentials()
    assert check.status is CredentialStatus.UNEXPECTED and "larger than" in check.detail
    assert peak[0] < PEAK_LIMIT


async def test_gzip_bomb_answer_to_a_stripe_refund_listing_is_a_protocol_error(processor):
    fake, url = processor
    listing = orjson.dumps({"object": "list", "data": [orjson.loads(stripe_refund())], "has_more": False})
    fake.body, fake.headers = gzip_bomb(listing), {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    async with adapter_for(PROCESSORS[0], url) as adapter:
        with pytest.raises(ProcessorProtocolError) as info:
            await adapter.lookup_refund(REQUEST, None)
    assert info.value.code == "too_large"
    assert fake.paths == ["/v1/refunds"]


@BY_PROCESSOR
async def test_bytes_after_the_end_of_the_gzip_stream_count_against_the_cap(processor, proc):
    fake, url = processor
    fake.body = gzip.compress(proc.answer()) + b"\0" * (SMALL_CAP * 2)
    fake.headers = {"Content-Type": proc.content_type, "Content-Encoding": "gzip"}
    async with adapter_for(proc, url, max_answer_bytes=SMALL_CAP) as adapter:
        assert (await refund_error(adapter)).code == "too_large"


@BY_PROCESSOR
@pytest.mark.parametrize("coding", ["gzip, gzip", "br", "zstd", "compress"])
async def test_answer_in_an_encoding_not_asked_for_is_a_protocol_error(processor, proc, coding):
    fake, url = processor
    fake.body = gzip.compress(gzip.compress(padded(proc.answer(), BOMB_EXPANDS_TO)))
    fake.headers = {"Content-Type": proc.content_type, "Content-Encoding": coding}
    async with adapter_for(proc, url) as adapter:
        error = await refund_error(adapter)
    assert error.code == "unparseable"
    assert_needs_attention(error)


# --- plain answers over the cap --------------------------------------------------------------------------------

@BY_PROCESSOR
async def test_plain_answer_without_end_is_cut_off_at_the_configured_cap(processor, proc):
    fake, url = processor
    fake.body, fake.headers = proc.answer(), {"Content-Type": proc.content_type}
    fake.stream_total = 64 * 1024 * 1024
    cap = 256 * 1024
    async with adapter_for(proc, url, max_answer_bytes=cap) as adapter:
        with peak_allocated() as peak:
            error = await refund_error(adapter)
    assert error.code == "too_large" and str(cap) in str(error)
    assert peak[0] < PEAK_LIMIT
    # The adapter closed the connection instead of reading on: the server stopped writing early
    # (what it wrote beyond the cap sat in the sockets' buffers).
    assert fake.written < fake.stream_total // 2
    assert_needs_attention(error)


# --- at the cap ------------------------------------------------------------------------------------------------

@BY_PROCESSOR
@pytest.mark.parametrize("coding", [None, "gzip", "deflate"])
async def test_answer_exactly_at_the_cap_succeeds_and_one_byte_more_does_not(processor, proc, coding):
    fake, url = processor
    compress = {None: bytes, "gzip": gzip.compress, "deflate": zlib.compress}[coding]
    fake.headers = {"Content-Type": proc.content_type, **({"Content-Encoding": coding} if coding else {})}
    async with adapter_for(proc, url, max_answer_bytes=SMALL_CAP) as adapter:
        fake.body = compress(padded(proc.answer(), SMALL_CAP))
        assert (await adapter.refund(REQUEST)).outcome is Outcome.SUCCEEDED
        fake.body = compress(padded(proc.answer(), SMALL_CAP + 1))
        assert (await refund_error(adapter)).code == "too_large"


@BY_PROCESSOR
async def test_gzip_answer_just_under_the_default_cap_succeeds(processor, proc):
    fake, url = processor
    fake.body = gzip.compress(padded(proc.answer(), DEFAULT_CAP - 1))
    fake.headers = {"Content-Type": proc.content_type, "Content-Encoding": "gzip"}
    async with adapter_for(proc, url) as adapter:
        assert (await adapter.refund(REQUEST)).outcome is Outcome.SUCCEEDED


# --- the setting -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model, values", [
    (StripeProcessor, dict(kind="stripe", api_key="sk_test_answer_cap")),
    (BridgePayProcessor, dict(kind="bridgepay", base_url="https://bp.test", username="u", password="p",
                              merchant_code="1", merchant_account_code="2")),
    (MockProcessor, dict(kind="mock")),
], ids=["stripe", "bridgepay", "mock"])
def test_max_answer_bytes_is_a_processor_setting_of_one_mib_by_default_and_positive(model, values):
    assert model(id="p", **values).max_answer_bytes == DEFAULT_CAP
    assert model(id="p", max_answer_bytes=10, **values).max_answer_bytes == 10
    for bad in (0, -1):
        with pytest.raises(ValidationError, match="max_answer_bytes"):
            model(id="p", max_answer_bytes=bad, **values)
