"""The one retry layer. SDK retries are switched off (max_retries=0) so that this is the only one.

Policy mirrors the vendor SDKs' `_should_retry` (openai-python, anthropic-sdk-python): retry 408,
409, 429, 5xx (529 included) and connection errors; never a 4xx that cannot succeed; honour a
server-directed delay (Retry-After / retry-after-ms) up to MAX_RETRY_AFTER_S; otherwise capped,
jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from ..errors import BackendError

__all__ = [
    "INITIAL_RETRY_DELAY_S",
    "MAX_RETRY_AFTER_S",
    "MAX_RETRY_DELAY_S",
    "backoff_delay",
    "call_with_retry",
    "is_retryable",
]

T = TypeVar("T")

INITIAL_RETRY_DELAY_S = 0.5  # the SDKs' INITIAL_RETRY_DELAY
MAX_RETRY_DELAY_S = 8.0  # the SDKs' MAX_RETRY_DELAY
# Honour server-directed delays up to two minutes (openai-python's MAX_RETRY_AFTER_DELAY);
# a longer one means the quota is gone for a while: fail the attempt, let fallback decide.
MAX_RETRY_AFTER_S = 120.0


def is_retryable(exc: BaseException) -> bool:
    """Whether trying the same backend again can help."""
    if not isinstance(exc, BackendError) or not exc.retryable:
        return False
    return exc.retry_after is None or exc.retry_after <= MAX_RETRY_AFTER_S


def backoff_delay(
    retries_done: int, retry_after: float | None = None, *, rand: float | None = None
) -> float:
    """Seconds to wait before the next attempt."""
    if retry_after is not None and 0 < retry_after <= MAX_RETRY_AFTER_S:
        return retry_after
    jitter = 1 - 0.25 * (random.random() if rand is None else rand)
    return min(INITIAL_RETRY_DELAY_S * 2.0**retries_done, MAX_RETRY_DELAY_S) * jitter


def _delay(exc: BaseException | None, retries_done: int) -> float:
    if isinstance(exc, BackendError) and exc.retry_elsewhere:
        return 0.0  # another replica is free: waiting would only idle it
    retry_after = exc.retry_after if isinstance(exc, BackendError) else None
    return backoff_delay(retries_done, retry_after)


def _wait(state: RetryCallState) -> float:
    # the first attempt is made before the retry loop (call_with_retry): this is one more
    return _delay(state.outcome.exception() if state.outcome else None, state.attempt_number)


class Attempted(Exception):
    """Carries how many attempts a failed call took, with the last error as its cause."""

    def __init__(self, error: BaseException, attempts: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts


async def call_with_retry(
    fn: Callable[[], Awaitable[T]],
    *,
    max_attempts: int,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> tuple[T, int]:
    """Run `fn` with the retry policy; return (result, attempts) or raise `Attempted`."""
    # Most calls succeed at once: the first attempt is made without building the retry loop,
    # whose setup costs about as much CPU as the rest of a job's dispatch.
    try:
        return await fn(), 1
    except Exception as exc:
        if max_attempts <= 1 or not is_retryable(exc):
            raise Attempted(exc, 1) from exc
        await sleep(_delay(exc, 0))
    retrying = AsyncRetrying(
        stop=stop_after_attempt(max_attempts - 1),
        wait=_wait,
        retry=retry_if_exception(is_retryable),
        sleep=sleep,
        reraise=True,
    )
    attempts = 1
    try:
        async for attempt in retrying:
            with attempt:
                attempts = attempt.retry_state.attempt_number + 1
                result = await fn()
    except Exception as exc:
        raise Attempted(exc, attempts) from exc
    return result, attempts
