"""Routing: each tier maps to an ordered chain of backends; a backend that cannot serve hands the
job to the next one in its chain. Every hop is recorded, so nothing is silently downgraded."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import Config
from ..errors import (
    BackendConnectionError,
    BackendError,
    BackendStatusError,
    BackendUnavailable,
    TierlineError,
    redact,
)
from ..jobs import RouteHop
from ..ledger.accounting import CallFacts
from ..ledger.busy import BusyMeter, BusySpan
from .base import Backend, Completion, Request
from .checks import CheckFailure
from .limits import CircuitBreaker, CircuitOpen, RateLimiter, estimate_tokens
from .registry import create_backend
from .retry import Attempted, call_with_retry

__all__ = ["Gate", "Hop", "Outcome", "Router"]

# Where a backend without a base URL sends its calls, for the ledger's endpoint column.


@dataclass(slots=True)
class Hop:
    """One backend tried for a job."""

    backend: str
    model: str
    status: str  # "ok", "error", "unavailable"
    attempts: int
    latency_s: float
    error: str | None = None
    completion: Completion | None = None
    busy_s: float = 0.0  # share of the backend's busy time, for gpu_hour_usd (ledger/busy.py)
    tier: int | None = None  # the tier whose route this hop ran on (differs after escalation)
    check: CheckFailure | None = None  # the answer check its answer failed, if any

    def to_route(self) -> RouteHop:
        """The result line's record of this hop (without the completion)."""
        check = None if self.check is None else (self.check.check, self.check.detail)
        return RouteHop(
            self.backend,
            self.model,
            self.status,
            self.attempts,
            self.latency_s,
            tier=self.tier,
            error=self.error,
            check=check,
        )


@dataclass(slots=True)
class Outcome:
    """Everything that happened to one job's request across its route."""

    hops: list[Hop] = field(default_factory=list)

    @property
    def final(self) -> Hop | None:
        return self.hops[-1] if self.hops else None

    @property
    def ok(self) -> bool:
        return bool(self.hops) and self.hops[-1].status == "ok"

    @property
    def attempts(self) -> int:
        return sum(h.attempts for h in self.hops)

    @property
    def fell_back(self) -> bool:
        return len(self.hops) > 1


class Gate:
    """What stands between requests and one backend: its concurrency cap, rpm/tpm limiter and
    circuit breaker. Every attempt (retries included) passes through `call`."""

    def __init__(
        self,
        name: str,
        config: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.slots = asyncio.Semaphore(config.max_concurrency)
        self.limiter = RateLimiter(rpm=config.rpm, tpm=config.tpm, clock=clock, sleep=sleep)
        self.breaker = CircuitBreaker(
            name, threshold=config.circuit_failures, reset_s=config.circuit_reset_s, clock=clock
        )
        self._counts_tokens = config.tpm is not None
        self.busy = BusyMeter()

    async def call(
        self, backend: Backend, request: Request, span: BusySpan | None = None
    ) -> Completion:
        self.breaker.check()
        estimate = estimate_tokens(request) if self._counts_tokens else 0
        if self.limiter.active:
            await self.limiter.acquire(estimate)
        try:
            answer = backend.complete(request)
            completion = await (span.measure(answer) if span is not None else answer)
        except BackendError as exc:
            self.breaker.record(exc)
            self.limiter.settle(estimate, 0)
            if isinstance(exc, BackendStatusError) and exc.status_code == 429 and exc.retry_after:
                # The quota is spent for everyone, not just this request: hold the backend.
                self.limiter.pause(exc.retry_after)
            raise
        self.breaker.record(None)
        if self._counts_tokens:
            used = completion.usage.input_tokens + completion.usage.output_tokens
            self.limiter.settle(estimate, used)
        if completion.pause_s:
            self.limiter.pause(completion.pause_s)
        return completion


class Router:
    """Creates backends lazily and sends each request along its tier's chain."""

    def __init__(
        self,
        config: Config,
        backends: Mapping[str, Backend] | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`backends` supplies ready-made backends by name (tests, library users); every wait
        (retry backoff, rate-limit pause) goes through `sleep`, so tests can see each one."""
        self.config = config
        self._backends: dict[str, Backend] = dict(backends or {})
        self.gates: dict[str, Gate] = {}
        self._sleep = sleep
        self._warmed = False

    def gate(self, name: str) -> Gate:
        gate = self.gates.get(name)
        if gate is None:
            gate = self.gates[name] = Gate(name, self.config.backends[name], sleep=self._sleep)
        return gate

    def backend(self, name: str) -> Backend:
        if name not in self._backends:
            # Creating a backend imports its SDK (seconds under load) and blocks the event loop:
            # the calls in flight on other backends are not billed busy time for that (a
            # fallback created mid-run; warm() creates the route heads before the first send).
            with contextlib.ExitStack() as stack:
                for gate in self.gates.values():
                    stack.enter_context(gate.busy.paused())
                self._backends[name] = create_backend(name, self.config.backends[name])
        return self._backends[name]

    def warm(self) -> None:
        """Create the HTTP backends that head a route (importing their SDKs) before the first
        request. Created mid-run, an SDK import blocks the event loop for seconds, and the busy
        meters of the calls then in flight on self-hosted servers would bill their GPUs for it.
        A backend that cannot be created now fails its jobs later, as it would unwarmed; the
        in-process model is left to load on first use (a run may not need it). Called again,
        it does nothing: the run calls it before its first send, so a run answered wholly from
        the answer cache imports no SDK."""
        if self._warmed:
            return
        self._warmed = True
        for name in sorted({chain[0] for chain in self.config.routes.values()}):
            if self.config.backends[name].entry.in_process:
                continue
            try:
                self.backend(name)
            except TierlineError:
                continue

    def chain(self, tier: int) -> list[str]:
        return self.config.route(tier)

    async def dispatch(self, tier: int, build: Callable[[str], Request]) -> Outcome:
        """Send the request `build(backend)` makes for each backend along the tier's chain
        (each backend may resolve the job differently: `dispatch.base.request_for`)."""
        outcome = Outcome()
        for name in self.chain(tier):
            hop = await self._try(name, build(name))
            outcome.hops.append(hop)
            if hop.status != "unavailable":
                break
        return outcome

    async def _try(self, name: str, request: Request) -> Hop:
        span = self.gate(name).busy.span()
        hop = await self._attempts(name, request, span)
        hop.busy_s = span.seconds
        return hop

    async def _attempts(self, name: str, request: Request, span: BusySpan) -> Hop:
        config = self.config.backends[name]
        started = time.perf_counter()
        try:
            backend = self.backend(name)
            gate = self.gate(name)
            async with gate.slots:
                completion, attempts = await call_with_retry(
                    lambda: gate.call(backend, request, span),
                    max_attempts=config.max_attempts,
                    sleep=self._sleep,
                )
        except BackendUnavailable as exc:
            return Hop(
                name,
                config.display_model,
                "unavailable",
                0,
                time.perf_counter() - started,
                str(exc),
            )
        except Attempted as exc:
            # A backend that never answered (refused, reset, timed out) after every retry
            # cannot serve now: the next backend in the chain gets the job.
            unavailable = isinstance(exc.error, (BackendConnectionError, BackendUnavailable))
            status = "unavailable" if unavailable else "error"
            message = (
                str(exc.error) if isinstance(exc.error, BackendError) else redact(repr(exc.error))
            )
            # The circuit refused the last try before anything was sent: not an attempt.
            refused = isinstance(exc.error, CircuitOpen)
            return Hop(
                name,
                config.display_model,
                status,
                exc.attempts - refused,
                time.perf_counter() - started,
                message,
            )
        return Hop(
            name,
            completion.model,
            "ok",
            attempts,
            time.perf_counter() - started,
            completion=completion,
        )

    def call_facts(self, hop: Hop) -> CallFacts:
        """The hop as the ledger prices and stores it (the ledger knows no dispatch types)."""
        completion = hop.completion
        return CallFacts(
            backend=hop.backend,
            model=hop.model,
            status=hop.status,
            attempts=hop.attempts,
            latency_s=hop.latency_s,
            usage=completion.usage if completion else None,
            busy_s=hop.busy_s,
            endpoint=self.config.backends[hop.backend].endpoint,
            error=hop.error,
            check_failed=hop.check.check if hop.check else None,
        )

    async def aclose(self) -> None:
        backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            await backend.aclose()
