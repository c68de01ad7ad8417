"""Per-backend limits: requests and tokens per minute, server-directed pauses, a circuit breaker.

Everything takes a `clock` and a `sleep`, so tests drive time by hand instead of sleeping.

* `RateLimiter`: two token buckets (rpm, tpm). A call takes one request and its token *estimate*
  before it is sent; `settle()` corrects the token bucket with the real usage afterwards. A
  server that says "no more for N seconds" (429 + Retry-After, or rate-limit headers showing zero
  remaining) pauses the whole backend, not just the request that heard it.
* `pause_from_headers`: reads OpenAI's `x-ratelimit-*` (resets as Go durations, `6m0s`) and
  Anthropic's `anthropic-ratelimit-*` (resets as RFC 3339 times).
* `CircuitBreaker`: opens after N consecutive failures, lets one probe through after a cool-off
  (half-open), closes on its success.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timezone

from ..errors import BackendConnectionError, BackendError, BackendStatusError, BackendUnavailable
from .base import Request

__all__ = [
    "CircuitBreaker",
    "CircuitOpen",
    "RateLimiter",
    "estimate_tokens",
    "parse_go_duration",
    "pause_from_headers",
]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# A minute's budget may be spent in bursts of at most this many seconds' worth: providers enforce
# per-minute limits over shorter windows too (OpenAI: "60 RPM may be enforced as 1 per second").
BURST_S = 10.0


def estimate_tokens(request: Request) -> int:
    """What a call may cost in tokens before it is made: ~4 characters a token, plus the whole
    output allowance (providers count max_tokens against TPM when admitting a request)."""
    chars = sum(len(m.content) for m in request.messages) + len(request.system or "")
    return math.ceil(chars / 4) + request.max_tokens


class _Bucket:
    """A token bucket that may go into debt, so that one request larger than the burst still
    goes through once the bucket is full instead of waiting forever."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * BURST_S)
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` (capped at capacity) is available."""
        missing = min(amount, self.capacity) - self.level
        return max(0.0, missing / self.rate)


class RateLimiter:
    """rpm / tpm limits and server-directed pauses for one backend."""

    def __init__(
        self,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        now = clock()
        self._requests = _Bucket(rpm, now) if rpm else None
        self._tokens = _Bucket(tpm, now) if tpm else None
        self._clock = clock
        self._sleep = sleep
        self._paused_until = 0.0
        # FIFO admission: waiters queue behind the lock instead of racing for the same refill.
        self._lock = asyncio.Lock()

    @property
    def active(self) -> bool:
        """False when there is nothing to limit and no pause: `acquire` can be skipped."""
        return bool(self._requests or self._tokens or self._paused_until > self._clock())

    def pause(self, seconds: float) -> None:
        """Send nothing to this backend for `seconds` (a 429's Retry-After, exhausted headers)."""
        if seconds > 0:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    @property
    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    async def acquire(self, tokens: int) -> None:
        """Wait until one request of about `tokens` tokens may be sent, then account for it."""
        async with self._lock:
            while True:
                now = self._clock()
                wait = self._paused_until - now
                for bucket, amount in ((self._requests, 1), (self._tokens, tokens)):
                    if bucket is not None:
                        bucket.refill(now)
                        wait = max(wait, bucket.wait_for(amount))
                if wait <= 0:
                    break
                await self._sleep(wait)
            if self._requests is not None:
                self._requests.level -= 1
            if self._tokens is not None:
                self._tokens.level -= tokens

    def settle(self, estimated: int, actual: int) -> None:
        """Correct the token bucket once the real usage is known (refund or charge the rest)."""
        if self._tokens is not None:
            self._tokens.refill(self._clock())
            self._tokens.level = min(self._tokens.capacity, self._tokens.level + estimated - actual)


class CircuitOpen(BackendUnavailable):
    """Refused by an open circuit: no request was sent, so it is not an attempt."""


class CircuitBreaker:
    """Closed -> open after `threshold` consecutive failures -> half-open after `reset_s`."""

    def __init__(
        self, name: str, *, threshold: int, reset_s: float, clock: Clock = time.monotonic
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.reset_s = reset_s
        self._clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self.opened_at >= self.reset_s else "open"

    def check(self) -> None:
        """Raise BackendUnavailable while open; in half-open, let exactly one probe through."""
        state = self.state
        if state == "closed":
            return
        if state == "half-open" and not self._probing:
            self._probing = True
            return
        assert self.opened_at is not None
        retry_in = max(0.0, self.reset_s - (self._clock() - self.opened_at))
        raise CircuitOpen(
            f"{self.name}: circuit open after {self.failures} consecutive failures "
            f"(next probe in {retry_in:.1f}s)"
        )

    def record(self, error: BaseException | None) -> None:
        """Count an attempt's outcome (None: success)."""
        if error is None:
            self.failures, self.opened_at, self._probing = 0, None, False
            return
        if not counts_against_circuit(error):
            if self._probing:  # the probe got an answer: the backend is reachable again
                self.failures, self.opened_at, self._probing = 0, None, False
            return
        self.failures += 1
        if self._probing or self.failures >= self.threshold:
            self.opened_at, self._probing = self._clock(), False


def counts_against_circuit(error: BaseException) -> bool:
    """Failures that say the backend is broken, not that the request or the quota is.

    A 4xx is the request's fault and a 429 is the rate limiter's business; refused connections,
    timeouts and 5xx (not 503 "busy", which is backpressure) are the backend's, unless another
    replica of the same backend can take the retry (the replica was ejected, the backend works).
    """
    if isinstance(error, BackendError) and (error.retry_elsewhere or error.spares_circuit):
        return False
    if isinstance(error, BackendConnectionError):
        return True
    if isinstance(error, BackendStatusError):
        return error.status_code >= 500 and error.status_code != 503
    return isinstance(error, BackendError) and not isinstance(error, BackendUnavailable)


# --- rate-limit headers --------------------------------------------------------------------------

_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")


def parse_go_duration(text: str) -> float | None:
    """Seconds in a Go `time.Duration` string (`1s`, `6m0s`, `12ms`, `1h2m3.5s`); None if not one."""
    text = text.strip()
    if not text:
        return None
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _GO_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) else None


def _rfc3339_in(text: str, now: float) -> float | None:
    try:
        stamp = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return max(0.0, stamp.timestamp() - now)


# (prefix, reset parser): which header family, and how its resets are written.
_FAMILIES: tuple[tuple[str, Callable[[str, float], float | None]], ...] = (
    ("x-ratelimit-remaining-", lambda v, _now: parse_go_duration(v)),
    ("anthropic-ratelimit-", _rfc3339_in),
)


def pause_from_headers(headers: Mapping[str, str], now: float | None = None) -> float:
    """Seconds to hold the backend because a rate-limit window is used up (0 when none is).

    OpenAI: `x-ratelimit-remaining-{requests,tokens}: 0` with `x-ratelimit-reset-*` durations;
    Anthropic: `anthropic-ratelimit-{kind}-remaining: 0` with `-reset` RFC 3339 timestamps.
    """
    wall = time.time() if now is None else now
    pause = 0.0
    for key, value in headers.items():
        key = key.lower()
        if not key.endswith("-remaining") and not key.startswith("x-ratelimit-remaining-"):
            continue
        if value.strip() not in ("0", "0.0"):
            continue
        for prefix, parse in _FAMILIES:
            if not key.startswith(prefix):
                continue
            if prefix == "x-ratelimit-remaining-":
                reset_key = "x-ratelimit-reset-" + key.removeprefix(prefix)
            else:
                reset_key = key.removesuffix("-remaining") + "-reset"
            reset = _header(headers, reset_key)
            seconds = parse(reset, wall) if reset is not None else None
            if seconds is not None:
                pause = max(pause, seconds)
    return pause


def _header(headers: Mapping[str, str], key: str) -> str | None:
    value = headers.get(key)
    if value is None:
        lowered = {k.lower(): v for k, v in headers.items()}
        value = lowered.get(key)
    return value
