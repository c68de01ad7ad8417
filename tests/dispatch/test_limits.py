"""Rate limiter, rate-limit headers and the circuit breaker, on a fake clock (no sleeping)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from tierline.dispatch.limits import (
    CircuitBreaker,
    RateLimiter,
    estimate_tokens,
    parse_go_duration,
    pause_from_headers,
)
from tierline.dispatch.router import Router
from tierline.errors import BackendConnectionError, BackendStatusError, BackendUnavailable
from tierline.testing import FakeBackend

from .conftest import make_config
from .helpers import request


class Clock:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_rpm_spaces_requests_after_the_burst() -> None:
    """60 rpm: a 10-second burst goes at once, then one request a second."""
    clock = Clock()
    limiter = RateLimiter(rpm=60, clock=clock, sleep=clock.sleep)
    for _ in range(13):
        await limiter.acquire(0)
    assert clock.now == pytest.approx(1003.0)


async def test_tpm_uses_the_estimate_then_the_real_usage() -> None:
    """The estimate is taken up front; settling with less usage gives tokens back."""
    clock = Clock()
    limiter = RateLimiter(tpm=600, clock=clock, sleep=clock.sleep)  # 10 tokens/s, burst 100
    await limiter.acquire(100)
    limiter.settle(100, 20)  # only 20 were used: 80 come back
    await limiter.acquire(80)
    assert clock.now == pytest.approx(1000.0)
    await limiter.acquire(50)  # now empty: 50 tokens take 5 s
    assert clock.now == pytest.approx(1005.0)


async def test_a_request_larger_than_the_burst_still_goes() -> None:
    """A request above the bucket's size waits for a full bucket instead of forever."""
    clock = Clock()
    limiter = RateLimiter(tpm=60, clock=clock, sleep=clock.sleep)  # 1 token/s, burst 10
    await limiter.acquire(500)
    await limiter.acquire(1)
    assert clock.now > 1000.0 and len(clock.slept) < 5


async def test_pause_holds_every_request() -> None:
    """A server-directed pause delays the next request by that long."""
    clock = Clock()
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    assert not limiter.active
    limiter.pause(2.5)
    assert limiter.active
    await limiter.acquire(0)
    assert clock.now == pytest.approx(1002.5)


def test_estimate_counts_prompt_and_output_allowance() -> None:
    """About four characters a token plus max_tokens."""
    assert estimate_tokens(request("x" * 400, max_tokens=50)) == 150


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1h2m3.5s", 3723.5),
        ("0", 0.0),
        ("soon", None),
        ("", None),
    ],
)
def test_go_durations(text: str, seconds: float | None) -> None:
    """OpenAI's reset headers are Go durations."""
    assert parse_go_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_openai_headers_pause_only_when_exhausted() -> None:
    """remaining 0 -> pause for the matching reset; remaining > 0 -> no pause."""
    headers = {
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1.5s",
        "x-ratelimit-remaining-tokens": "1000",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert pause_from_headers(headers) == pytest.approx(1.5)
    assert pause_from_headers({**headers, "x-ratelimit-remaining-requests": "3"}) == 0.0


def test_anthropic_headers_use_rfc3339_resets() -> None:
    """anthropic-ratelimit-*-remaining: 0 pauses until its RFC 3339 reset."""
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    reset = (now + timedelta(seconds=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": reset,
        "anthropic-ratelimit-requests-remaining": "10",
        "anthropic-ratelimit-requests-reset": reset,
    }
    assert pause_from_headers(headers, now=now.timestamp()) == pytest.approx(7.0)


def test_circuit_opens_half_opens_and_closes() -> None:
    """N failures open it; after reset_s one probe passes; its success closes it."""
    clock = Clock()
    breaker = CircuitBreaker("b", threshold=3, reset_s=10, clock=clock)
    for _ in range(3):
        breaker.check()
        breaker.record(BackendConnectionError("refused"))
    with pytest.raises(BackendUnavailable, match="circuit open"):
        breaker.check()
    clock.now += 10
    breaker.check()  # the probe
    with pytest.raises(BackendUnavailable):
        breaker.check()  # only one probe at a time
    breaker.record(None)
    assert breaker.state == "closed"
    breaker.check()


def test_failed_probe_reopens_and_client_errors_do_not_count() -> None:
    """A failing probe re-opens at once; 400s and 429s never open the circuit."""
    clock = Clock()
    breaker = CircuitBreaker("b", threshold=2, reset_s=5, clock=clock)
    for status in (400, 429, 503, 400):
        breaker.record(BackendStatusError("x", status_code=status))
    assert breaker.state == "closed"
    breaker.record(BackendStatusError("x", status_code=500))
    breaker.record(BackendStatusError("x", status_code=502))
    assert breaker.state == "open"
    clock.now += 5
    breaker.check()
    breaker.record(BackendStatusError("x", status_code=500))
    assert breaker.state == "open"


async def test_open_circuit_hands_jobs_to_the_next_backend() -> None:
    """After circuit_failures failed attempts the backend is skipped without being called."""
    config = make_config(
        {
            "flaky": {
                "kind": "llamacpp",
                "max_attempts": 1,
                "circuit_failures": 2,
                "circuit_reset_s": 60,
            },
            "steady": {"kind": "llamacpp"},
        }
    )
    flaky, steady = FakeBackend("flaky"), FakeBackend("steady")
    flaky.enqueue(*[BackendStatusError("boom", status_code=500)] * 5)
    router = Router(config, {"flaky": flaky, "steady": steady})
    statuses, attempts = [], []
    for _ in range(4):
        outcome = await router.dispatch(1, lambda _m: request())
        statuses.append([h.status for h in outcome.hops])
        attempts.append([h.attempts for h in outcome.hops])
    await router.aclose()
    assert statuses[:2] == [["error"], ["error"]]  # a 500 is an error, reported, not a hand-over
    assert statuses[2:] == [["unavailable", "ok"], ["unavailable", "ok"]]
    assert len(flaky.calls) == 2
    # Refused by the open circuit before anything was sent: 0 attempts (issue 13), so the
    # ledger gets no row for it (it records hops with attempts).
    assert attempts[2:] == [[0, 1], [0, 1]]


async def test_429_pauses_the_backend_for_everyone() -> None:
    """One request's 429 + Retry-After holds the other requests to that backend too."""
    config = make_config(
        {
            "b": {
                "kind": "openai-compatible",
                "model": "m",
                "base_url": "http://127.0.0.1:9/v1",
                "max_attempts": 2,
                "max_concurrency": 4,
            }
        }
    )
    backend = FakeBackend("b")
    backend.enqueue(BackendStatusError("slow down", status_code=429, retry_after=2.0))
    waits: list[tuple[str, float]] = []

    async def sleep(seconds: float) -> None:  # records which job waited, then waits
        waits.append((asyncio.current_task().get_name(), seconds))  # type: ignore[union-attr]
        await asyncio.sleep(seconds)

    router = Router(config, {"b": backend}, sleep=sleep)

    async def other() -> None:
        while True:  # starts once the first job's 429 was heard
            if backend.calls:
                break
            await asyncio.sleep(0)
        await router.dispatch(1, lambda _m: request("other job"))

    first, _ = await asyncio.gather(
        asyncio.create_task(router.dispatch(1, lambda _m: request()), name="first"),
        asyncio.create_task(other(), name="other"),
    )
    await router.aclose()
    assert first.ok and first.hops[0].attempts == 2
    assert ("first", 2.0) in waits  # the retry, after Retry-After
    # The other job was held by the backend's pause although it never saw a 429 itself.
    assert [name for name, s in waits if s > 0 and name == "other"] == ["other"]
    assert [c.messages[0].content for c in backend.calls].count("other job") == 1
