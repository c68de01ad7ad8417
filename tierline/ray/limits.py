"""Backend limits across actors: each actor gets an even share of every per-process limit.

`max_concurrency`, `max_in_flight_per_replica`, `rpm` and `tpm` live in each process's memory
(tierline/dispatch/limits.py). On a Ray cluster each actor is a process, so the run's limits are
split evenly: the shares add up to at most the configured limit, so the limit holds for the run
with no call to anyone per request. Why a split and not a limits actor: a token bucket in an
actor costs a round trip per request (about a millisecond, against a 50 ms call at 256 in
flight: the throughput target would not hold), and a rate or a concurrency cap, unlike money,
is harmless to under-use for a moment. The price: an idle actor's share is unused; the pool's
actors are busy or the run is ending, so that is the tail of a run. The budget, which must
never be passed, is an actor instead (tierline/ray/state.py).

The split fields are operational (tierline/resume.py OPERATIONAL): resume keys do not change.
"""

from __future__ import annotations

from ..config import Config

__all__ = ["SPLIT_FIELDS", "actors_for", "split_limits"]

SPLIT_FIELDS = ("max_concurrency", "max_in_flight_per_replica", "rpm", "tpm")


def _limits(config: Config) -> list[int]:
    values = []
    for backend in config.backends.values():
        for name in SPLIT_FIELDS:
            value = getattr(backend, name, None)
            if isinstance(value, int) and value > 0:
                values.append(value)
    return values


def actors_for(config: Config, wanted: int) -> int:
    """At most `wanted` actors, and never more than the smallest limit: each actor needs a
    share of at least 1 of every limit, or the shares would add up to more than the limit."""
    return max(1, min([wanted, *_limits(config)]))


def split_limits(config: Config, actors: int) -> Config:
    """The config one of `actors` actors runs with: every per-process limit divided evenly
    (rounded down, so the shares never add up to more than the limit)."""
    if actors <= 1:
        return config
    backends = {}
    for name, backend in config.backends.items():
        changes = {}
        for field in SPLIT_FIELDS:
            value = getattr(backend, field, None)
            if isinstance(value, int) and value > 0:
                changes[field] = max(1, value // actors)
        backends[name] = backend.model_copy(update=changes)
    return config.model_copy(update={"backends": backends})
