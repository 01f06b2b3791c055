"""The one retry policy for processor calls: transient faults, and unknown outcomes when the
processor deduplicates on our idempotency key; nothing else. Exponential backoff with
jitter, Retry-After honoured, capped by attempts and by total time.

Retries are logged without the call's arguments: they carry amounts and references that
belong in the refund's own log lines, not in every retry's.
"""

from __future__ import annotations

import structlog
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_before_delay
from tenacity.wait import wait_exponential_jitter

from adapters.base import OutcomeUnknownError, TransientProcessorError
from gateway import metrics

log = structlog.get_logger(__name__)


def _retryable(safe_to_resend: bool):
    def check(exc: BaseException) -> bool:
        # An unknown outcome may mean the processor acted: resend only when it deduplicates on our key.
        return isinstance(exc, TransientProcessorError) or (safe_to_resend and isinstance(exc, OutcomeUnknownError))
    return check


class _Wait:
    """Exponential backoff with jitter, but never sooner than the processor's Retry-After."""

    def __init__(self, initial: float, maximum: float):
        self._backoff = wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)

    def __call__(self, state: RetryCallState) -> float:
        delay = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        return max(delay, retry_after) if retry_after else delay


def _on_retry(processor: str):
    """Count and log a retry (without the call's arguments)."""
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        error_class = getattr(exc, "error_class", None)
        metrics.child(metrics.PROCESSOR_RETRIES, processor, error_class or "unknown").inc()
        log.warning("processor_retry", processor=processor, attempt=state.attempt_number, error_class=error_class,
                    code=getattr(exc, "code", None), sleep_seconds=round(state.upcoming_sleep, 3))
    return before_sleep


def processor_retrying(*, max_attempts: int, max_seconds: float, initial_backoff: float, max_backoff: float,
                       safe_to_resend: bool, processor: str = "unknown") -> AsyncRetrying:
    return AsyncRetrying(
        retry=retry_if_exception(_retryable(safe_to_resend)),
        # stop_before_delay: give up rather than start an attempt after the time budget, including
        # when the processor's Retry-After lies beyond it.
        stop=stop_after_attempt(max_attempts) | stop_before_delay(max_seconds),
        wait=_Wait(initial_backoff, max_backoff),
        before_sleep=_on_retry(processor),
        reraise=True,
    )


def release(retrying: AsyncRetrying) -> None:
    """Drop what a finished run of `retrying` keeps. Its call state and its thread-local statistics
    refer back to it, so every processor call would leave about 40 objects in reference cycles for
    the cyclic garbage collector, whose passes then stall the event loop (tens of ms at a few
    hundred refunds a second). Cut here, they are freed at once. These are two tenacity internals,
    pinned by the lock; tests/unit/test_retry.py fails if a run leaves a cycle again."""
    retrying._retry_state = None  # type: ignore[attr-defined]
    retrying._local.__dict__.clear()
