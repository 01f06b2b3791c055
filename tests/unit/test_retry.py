"""The one retry policy for processor calls: what is retried, how often, and for how long."""

from __future__ import annotations

import io
import json
import time

import pytest

from adapters.base import OutcomeUnknownError, ProcessorProtocolError, TransientProcessorError
from gateway.logging import configure
from gateway.retry import processor_retrying


class Processor:
    """A call that fails with the given errors in turn, then answers "ok"; records when it was called."""

    def __init__(self, *errors: BaseException, forever: BaseException | None = None):
        self.errors = list(errors)
        self.forever = forever
        self.calls: list[float] = []
        self.t0 = time.monotonic()

    async def __call__(self) -> str:
        self.calls.append(time.monotonic() - self.t0)
        if self.errors:
            raise self.errors.pop(0)
        if self.forever is not None:
            raise self.forever
        return "ok"


def policy(*, max_attempts: int = 4, max_seconds: float = 5.0, initial_backoff: float = 0.001,
           max_backoff: float = 0.005, safe_to_resend: bool = True):
    return processor_retrying(max_attempts=max_attempts, max_seconds=max_seconds, initial_backoff=initial_backoff,
                              max_backoff=max_backoff, safe_to_resend=safe_to_resend)


async def run(retrying, call) -> str:
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("the retry loop ended without an answer or an error")


def transient(**kw) -> TransientProcessorError:
    return TransientProcessorError("503 service unavailable", code="503", **kw)


# --- what is retried --------------------------------------------------------------------------

async def test_transient_fault_is_retried_until_the_call_succeeds():
    call = Processor(transient(), transient())
    assert await run(policy(max_attempts=4), call) == "ok"
    assert len(call.calls) == 3


async def test_transient_fault_that_persists_is_reraised_after_max_attempts():
    last = transient()
    call = Processor(transient(), transient(), forever=last)
    with pytest.raises(TransientProcessorError) as info:
        await run(policy(max_attempts=4), call)
    assert info.value is last
    assert len(call.calls) == 4


async def test_single_attempt_policy_never_retries():
    call = Processor(forever=transient())
    with pytest.raises(TransientProcessorError):
        await run(policy(max_attempts=1), call)
    assert len(call.calls) == 1


@pytest.mark.parametrize("error", [
    ProcessorProtocolError("answer is not JSON", code="unparseable"),
    ValueError("a bug in the adapter"),
], ids=lambda e: type(e).__name__)
async def test_error_that_is_not_transient_is_raised_at_once_without_retrying(error):
    call = Processor(error)
    with pytest.raises(type(error)) as info:
        await run(policy(max_attempts=5), call)
    assert info.value is error
    assert len(call.calls) == 1


async def test_unknown_outcome_is_not_resent_when_the_processor_does_not_deduplicate():
    error = OutcomeUnknownError("read timeout")
    call = Processor(error)
    with pytest.raises(OutcomeUnknownError) as info:
        await run(policy(max_attempts=5, safe_to_resend=False), call)
    assert info.value is error
    assert len(call.calls) == 1


async def test_fault_that_left_the_refund_undone_is_resent_even_without_deduplication():
    call = Processor(transient(), transient())
    assert await run(policy(max_attempts=5, safe_to_resend=False), call) == "ok"
    assert len(call.calls) == 3


async def test_unknown_outcome_is_resent_when_the_processor_deduplicates():
    call = Processor(OutcomeUnknownError("503"))
    assert await run(policy(max_attempts=5, safe_to_resend=True), call) == "ok"
    assert len(call.calls) == 2


# --- how long it waits ------------------------------------------------------------------------

async def test_retry_after_from_the_processor_is_waited_for_instead_of_the_short_backoff():
    call = Processor(transient(retry_after=0.2))
    assert await run(policy(initial_backoff=0.001, max_backoff=0.005), call) == "ok"
    assert call.calls[1] - call.calls[0] >= 0.18


async def test_without_retry_after_the_short_backoff_is_used():
    call = Processor(transient())
    assert await run(policy(initial_backoff=0.001, max_backoff=0.005), call) == "ok"
    assert call.calls[1] - call.calls[0] < 0.15


async def test_backoff_never_waits_longer_than_max_backoff():
    call = Processor(transient(), transient(), transient(), transient())
    assert await run(policy(max_attempts=5, initial_backoff=0.02, max_backoff=0.03), call) == "ok"
    gaps = [b - a for a, b in zip(call.calls, call.calls[1:])]
    assert len(gaps) == 4
    assert max(gaps) < 0.15


async def test_retrying_stops_once_max_seconds_have_passed():
    last = transient()
    call = Processor(forever=last)
    started = time.monotonic()
    with pytest.raises(TransientProcessorError) as info:
        await run(policy(max_attempts=1000, max_seconds=0.3, initial_backoff=0.02, max_backoff=0.04), call)
    elapsed = time.monotonic() - started
    assert info.value is last
    assert 0.2 <= elapsed < 0.5  # stops before an attempt would start past the budget
    assert 2 < len(call.calls) < 1000


async def test_retry_is_logged_without_the_calls_arguments():
    stream = io.StringIO()
    configure("json", "info", stream=stream)
    try:
        call = Processor(transient())

        async def refund(amount: int, reference: str) -> str:
            return await call()

        # Called through tenacity directly, so the arguments are in the retry state it logs from.
        assert await policy()(refund, 987654, "ch_unusual_reference") == "ok"
    finally:
        configure("console", "warning")
    out = stream.getvalue()
    line = json.loads(out.splitlines()[0])
    assert (line["event"], line["attempt"], line["code"], line["error_class"]) == ("processor_retry", 1, "503",
                                                                                  "transient")
    assert "987654" not in out and "ch_unusual_reference" not in out


# --- edge cases -----------------------------------------------------------------------------------

async def test_no_retry_starts_after_max_seconds():
    call = Processor(forever=transient(retry_after=0.25))
    with pytest.raises(TransientProcessorError):
        await run(policy(max_attempts=10, max_seconds=0.3), call)
    assert max(call.calls) <= 0.3 + 0.05


async def test_retry_after_longer_than_the_budget_gives_up_instead_of_calling_early():
    error = transient(retry_after=5.0)
    call = Processor(forever=error)
    with pytest.raises(TransientProcessorError):
        await run(policy(max_attempts=4, max_seconds=0.2), call)
    assert len(call.calls) == 1


@pytest.mark.parametrize("errors", [(), (TransientProcessorError("503"),), (ProcessorProtocolError("bad"),)])
async def test_a_released_run_leaves_nothing_for_the_cyclic_garbage_collector(errors):
    import gc

    from gateway.retry import release

    async def one_run() -> None:
        retrying = policy()
        try:
            await run(retrying, Processor(*errors))
        except ProcessorProtocolError:
            pass
        finally:
            release(retrying)

    await one_run()  # anything made once (a cache, an interned name) is made before counting
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            await one_run()
        assert gc.collect() == 0
    finally:
        gc.enable()
