"""Several replicas behind one backend: least-outstanding-requests balancing, health, backpressure.

Each replica (one base URL) counts the requests tierline has in flight on it. A request goes to
the replica with the fewest outstanding requests (plus its reported queue, when `/metrics` is
polled), skipping replicas that are

* ejected: a connection to it failed; it is re-probed (`/health`, else `/v1/models`) at once
  and then in the background, and rejoins when a probe succeeds. A replica whose probe failed is
  *down*; one dropped connection on a working replica (a reset) costs it only that probe;
* busy: it just answered 503 "engine busy" (vLLM's admission control), so the retry goes to
  another replica at once (`BackendError.retry_elsewhere`);
* full: `per_replica` requests already in flight on it;
* saturated: its `/metrics` say too many waiting requests or too full a KV cache.

When every replica is ejected the least loaded is used anyway, preferring one not known to be
down: the request doubles as a probe.

A failure on a replica counts against the backend's circuit breaker only when no other replica
could take the retry (`BackendError.retry_elsewhere`): one dead replica among working ones is
ejected, and never opens the circuit of the whole backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BackendConnectionError, BackendError, BackendStatusError, BackendTimeout
from .sdk import root_url

__all__ = ["Backpressure", "Replica", "ReplicaPool", "parse_metrics"]

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0
BUSY_S = 1.0  # how long a replica that said 503 is passed over (unless it said Retry-After)
EJECT_S = 5.0  # without health probes, when an ejected replica gets another chance
# Consecutive timeouts that eject one of several replicas (a hung host times out rather than
# refusing); it is then probed, and rejoins if it answers. One timeout may be a long answer.
EJECT_AFTER_TIMEOUTS = 2

# Metric names per signal, newest first: vLLM 0.33 renamed gpu_cache_usage_perc to
# kv_cache_usage_perc; llama-server reports its queue as requests_deferred.
WAITING_METRICS = ("vllm:num_requests_waiting", "llamacpp:requests_deferred")
KV_METRICS = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


@dataclass(frozen=True)
class Backpressure:
    """When to hold requests back from a replica, from its `/metrics`."""

    interval_s: float = 2.0
    max_waiting: int | None = None
    max_kv_cache_usage: float | None = None


class Replica:
    """One base URL and what tierline knows about it."""

    __slots__ = (
        "busy_until",
        "client",
        "down",
        "ejected",
        "kv_usage",
        "last_error",
        "outstanding",
        "retry_at",
        "timeouts",
        "url",
        "waiting",
    )

    def __init__(self, url: str, client: Any) -> None:
        self.url = url.rstrip("/")
        self.client = client
        self.outstanding = 0
        self.ejected = False
        self.down = False  # its last health probe failed (not just one request)
        self.timeouts = 0  # consecutive timed-out requests
        self.retry_at = 0.0
        self.busy_until = 0.0
        self.waiting = 0.0
        self.kv_usage: float | None = None
        self.last_error: str | None = None


def parse_metrics(text: str, names: Sequence[str]) -> dict[str, float]:
    """Prometheus text -> {name: value} for `names`, summed over label sets (engines, DP ranks);
    `*_perc` gauges take the largest instead, since one full engine already means queueing."""
    wanted = set(names)
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) not in wanted:
            continue
        name = match.group(1)
        try:
            value = float(match.group(2))
        except ValueError:
            continue
        if name.endswith("_perc"):
            out[name] = max(out.get(name, 0.0), value)
        else:
            out[name] = out.get(name, 0.0) + value
    return out


_SAMPLE = re.compile(r"([A-Za-z_:][\w:]*)(?:\{[^}]*\})?\s+(\S+)")


class ReplicaPool:
    """Picks a replica per request and keeps the replicas' health and load up to date."""

    def __init__(
        self,
        name: str,
        replicas: Sequence[Replica],
        *,
        per_replica: int,
        probe: Callable[[Replica, str], Any] | None = None,
        health_urls: Callable[[Replica], Sequence[str]] | None = None,
        health_interval_s: float = 5.0,
        backpressure: Backpressure | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`probe(replica, url)` is an async GET returning (status, text); None disables probes."""
        self.name = name
        self.replicas = list(replicas)
        self.per_replica = per_replica
        self._probe = probe
        self._health_urls = health_urls
        self.health_interval_s = health_interval_s
        self.backpressure = backpressure
        self._clock = clock
        self._next = 0
        self._changed = asyncio.Event()
        self._started = False
        self._start_lock = asyncio.Lock()
        self._monitor: asyncio.Task[None] | None = None
        self._reprobes: set[asyncio.Task[bool]] = set()

    @property
    def probes(self) -> bool:
        """Whether replicas' health is probed (else ejected replicas rejoin after EJECT_S)."""
        return self._probe is not None

    # --- choosing --------------------------------------------------------------------------------

    def _saturated(self, replica: Replica) -> bool:
        bp = self.backpressure
        if bp is None:
            return False
        if bp.max_waiting is not None and replica.waiting >= bp.max_waiting:
            return True
        return (
            bp.max_kv_cache_usage is not None
            and replica.kv_usage is not None
            and replica.kv_usage >= bp.max_kv_cache_usage
        )

    def _usable(self, replica: Replica, now: float) -> bool:
        """Not ejected, or ejected long enough ago to be tried again (no health probes)."""
        return not replica.ejected or (self._probe is None and now >= replica.retry_at)

    def pick(self) -> Replica | None:
        """The replica for the next request, or None when all are full or saturated."""
        now = self._clock()
        best: Replica | None = None
        best_key: tuple[bool, bool, bool, bool, float] | None = None
        count = len(self.replicas)
        start = self._next
        self._next = (start + 1) % count
        for i in range(count):
            replica = self.replicas[(start + i) % count]
            if replica.outstanding >= self.per_replica:
                continue
            key = (
                replica.down,
                not self._usable(replica, now),
                replica.busy_until > now,
                self._saturated(replica),
                replica.outstanding + replica.waiting,
            )
            if best_key is None or key < best_key:
                best, best_key = replica, key
        if best is not None and best_key is not None and best_key[3]:
            return None  # backpressure: every replica reports a full queue; wait for metrics
        return best

    async def acquire(self) -> Replica:
        """Reserve a replica for one request; waits while every replica is full or saturated."""
        if not self._started:
            await self._start()
        while True:
            replica = self.pick()
            if replica is not None:
                replica.outstanding += 1
                return replica
            changed = self._changed
            await changed.wait()

    def release(self, replica: Replica, error: BackendError | None = None) -> None:
        """Give the replica back and learn from how the request went."""
        replica.outstanding -= 1
        if error is not None:
            self._learn(replica, error)
        else:
            replica.timeouts = 0
            if replica.ejected:
                replica.ejected = replica.down = False  # the request was the probe: it worked
        self._notify()

    def _learn(self, replica: Replica, error: BackendError) -> None:
        now = self._clock()
        if isinstance(error, BackendConnectionError):  # refused, reset, or timed out
            timeout = isinstance(error, BackendTimeout)
            replica.timeouts = replica.timeouts + 1 if timeout else 0
            if not timeout or (self._replicated and replica.timeouts >= EJECT_AFTER_TIMEOUTS):
                self._eject(replica, error, now)
            elif not self._replicated:
                return  # one replica timing out: the backend is slow; its circuit decides
        elif isinstance(error, BackendStatusError) and error.status_code == 503:
            replica.busy_until = now + (error.retry_after or BUSY_S)
        else:
            return
        # Another replica can take the retry right away: no reason to back off.
        elsewhere = [r for r in self.replicas if r is not replica and self._alive(r, now)]
        error.retry_elsewhere = any(r.busy_until <= now for r in elsewhere)
        if self._replicated and self.probes and not isinstance(error, BackendStatusError):
            # A replica's own failure counts against the backend's circuit only once no other
            # replica is alive and its probe said it is down: one dead replica among working
            # ones, or a reset on the last working one, never opens the whole backend.
            error.spares_circuit = bool(elsewhere) or not replica.down

    @property
    def _replicated(self) -> bool:
        return len(self.replicas) > 1

    def _eject(self, replica: Replica, error: BackendError, now: float) -> None:
        if not replica.ejected:
            log.info("%s: ejected replica %s: %s", self.name, replica.url, error)
            self._reprobe(replica)
        replica.ejected = True
        replica.retry_at = now + EJECT_S
        replica.last_error = str(error)

    def _alive(self, replica: Replica, now: float) -> bool:
        """Could serve a retry: with probes, not probed down (an ejected replica is re-probed at
        once, so a reset does not make a working replica look dead); without, not ejected."""
        return not replica.down if self.probes else self._usable(replica, now)

    def _reprobe(self, replica: Replica) -> None:
        """Probe a just-ejected replica now rather than at the next health interval."""
        if self._probe is None or not self._started:
            return
        task = asyncio.get_running_loop().create_task(self.check(replica))
        self._reprobes.add(task)
        task.add_done_callback(self._reprobes.discard)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # --- health and metrics ----------------------------------------------------------------------

    async def _start(self) -> None:
        async with self._start_lock:
            if self._started:
                return
            if self._probe is not None:
                await asyncio.gather(*(self.check(r) for r in self.replicas))
                if self.backpressure is not None:
                    await asyncio.gather(*(self.scrape(r) for r in self.replicas if not r.ejected))
                self._monitor = asyncio.create_task(self._watch(), name=f"{self.name}-replicas")
            self._started = True

    async def check(self, replica: Replica) -> bool:
        """Probe one replica's health; eject it or let it rejoin."""
        healthy = await self.healthy(replica)
        was = replica.ejected
        replica.ejected = replica.down = not healthy
        if was != replica.ejected:
            log.info(
                "%s: replica %s %s", self.name, replica.url, "down" if replica.ejected else "up"
            )
            self._notify()
        return healthy

    async def healthy(self, replica: Replica) -> bool:
        """GET each health URL in turn: 2xx is healthy; 404/405 means "try the next one"."""
        if self._probe is None or self._health_urls is None:
            return True
        for url in self._health_urls(replica):
            try:
                status, _text = await self._probe(replica, url)
            except Exception as exc:
                replica.last_error = f"{type(exc).__name__}: {exc}"
                return False
            if 200 <= status < 300:
                return True
            if status not in (404, 405):
                replica.last_error = f"{url}: HTTP {status}"
                return False
        return False

    async def scrape(self, replica: Replica) -> None:
        """Read a replica's queue length and KV-cache use from its /metrics."""
        if self._probe is None:
            return
        try:
            status, text = await self._probe(replica, root_url(replica.url) + "/metrics")
        except Exception:
            status, text = 0, ""
        if status != 200:
            replica.waiting, replica.kv_usage = 0.0, None  # unknown: no backpressure from it
            return
        values = parse_metrics(text, WAITING_METRICS + KV_METRICS)
        replica.waiting = _first(values, WAITING_METRICS) or 0.0
        replica.kv_usage = _first(values, KV_METRICS)

    async def _watch(self) -> None:
        bp = self.backpressure
        interval = min(self.health_interval_s, bp.interval_s) if bp else self.health_interval_s
        next_health = self._clock() + self.health_interval_s
        while True:
            await asyncio.sleep(interval)
            if self._clock() >= next_health:
                next_health = self._clock() + self.health_interval_s
                ejected = [r for r in self.replicas if r.ejected]
                await asyncio.gather(*(self.check(r) for r in ejected))
            if bp is not None:
                await asyncio.gather(*(self.scrape(r) for r in self.replicas if not r.ejected))
                self._notify()

    async def aclose(self) -> None:
        monitor, self._monitor = self._monitor, None
        tasks = [t for t in (monitor, *self._reprobes) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def describe(self) -> list[dict[str, Any]]:
        """Each replica's state, for `tierline backends check` and debugging."""
        return [
            {
                "url": r.url,
                "ejected": r.ejected,
                "down": r.down,
                "outstanding": r.outstanding,
                "waiting": r.waiting,
                "kv_cache_usage": r.kv_usage,
                "last_error": r.last_error,
            }
            for r in self.replicas
        ]


def _first(values: Mapping[str, float], names: Sequence[str]) -> float | None:
    return next((values[n] for n in names if n in values), None)
