"""The one retry layer: which failures are retried and how long it waits (a table, like the SDKs')."""

from __future__ import annotations

import pytest

from tierline.dispatch.retry import Attempted, backoff_delay, call_with_retry, is_retryable
from tierline.errors import (
    BackendConnectionError,
    BackendError,
    BackendStatusError,
    BackendTimeout,
    BackendUnavailable,
)


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (BackendStatusError("x", status_code=408), True),
        (BackendStatusError("x", status_code=409), True),
        (BackendStatusError("x", status_code=429), True),
        (BackendStatusError("x", status_code=500), True),
        (BackendStatusError("x", status_code=503), True),
        (BackendStatusError("x", status_code=529), True),
        (BackendStatusError("x", status_code=400), False),
        (BackendStatusError("x", status_code=401), False),
        (BackendStatusError("x", status_code=404), False),
        (BackendStatusError("x", status_code=422), False),
        (
            BackendStatusError("x", status_code=429, retry_after=300),
            False,
        ),  # quota gone for minutes
        (BackendConnectionError("refused"), True),
        (BackendTimeout("slow"), True),
        (BackendUnavailable("no key"), False),
        (BackendError("context too long"), False),
        (ValueError("bug"), False),
    ],
)
def test_is_retryable(error: Exception, retry: bool) -> None:
    """Retry 408, 409, 429, 5xx and connection errors; never other 4xx or long Retry-After."""
    assert is_retryable(error) is retry


@pytest.mark.parametrize(
    ("retries", "retry_after", "rand", "expected"),
    [
        (0, None, 0.0, 0.5),
        (0, None, 1.0, 0.375),
        (1, None, 0.0, 1.0),
        (3, None, 0.0, 4.0),
        (10, None, 0.0, 8.0),  # capped
        (0, 0.15, 0.0, 0.15),  # server-directed delay wins
        (2, 90.0, 0.0, 90.0),
        (0, 0.0, 0.0, 0.5),  # a zero Retry-After falls back to backoff
        (0, 500.0, 0.0, 0.5),  # beyond the cap: not honoured
    ],
)
def test_backoff_delay(
    retries: int, retry_after: float | None, rand: float, expected: float
) -> None:
    """Backoff is min(0.5 * 2^n, 8) with up to 25% jitter, unless the server said how long."""
    assert backoff_delay(retries, retry_after, rand=rand) == pytest.approx(expected)


async def test_call_with_retry_counts_attempts() -> None:
    """Two retryable failures then success: three attempts, waits as the server asked."""
    waits: list[float] = []
    failures = [
        BackendStatusError("busy", status_code=529, retry_after=0.2),
        BackendConnectionError("reset"),
    ]

    async def fn() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    result, attempts = await call_with_retry(fn, max_attempts=4, sleep=sleep)
    assert (result, attempts) == ("ok", 3)
    assert waits[0] == 0.2 and 0.75 <= waits[1] <= 1.0


async def test_call_with_retry_gives_up() -> None:
    """A permanent error is not retried; the attempts are reported with it."""

    async def fn() -> str:
        raise BackendStatusError("bad request", status_code=400)

    with pytest.raises(Attempted) as info:
        await call_with_retry(fn, max_attempts=4)
    assert info.value.attempts == 1
    assert isinstance(info.value.error, BackendStatusError)
