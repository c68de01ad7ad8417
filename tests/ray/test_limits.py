"""The even split of per-process limits over actors (tierline/ray/limits.py)."""

from __future__ import annotations

from tierline.config import config_from_mapping
from tierline.ray.limits import actors_for, split_limits
from tierline.resume import route_fingerprint


def config(**limits: int) -> object:
    backend = {"kind": "openai-compatible", "model": "m", "base_url": "http://127.0.0.1:1/v1"}
    return config_from_mapping(
        {"backends": {"b": {**backend, **limits}}, "routes": {"1": ["b"], "2": ["b"], "3": ["b"]}},
        origin="test",
    )


def test_shares_add_up_to_at_most_the_limit() -> None:
    cfg = config(max_concurrency=64, rpm=600, tpm=10_000, max_in_flight_per_replica=10)
    share = split_limits(cfg, 3).backends["b"]  # type: ignore[attr-defined]
    assert (share.max_concurrency, share.rpm, share.tpm) == (21, 200, 3333)
    assert share.max_in_flight_per_replica == 3
    assert 3 * share.tpm <= 10_000


def test_split_keeps_resume_keys() -> None:
    """The limits are operational: a job's resume key is the same on any number of actors."""
    cfg = config(max_concurrency=64, rpm=600)
    assert route_fingerprint(split_limits(cfg, 4)) == route_fingerprint(cfg)  # type: ignore[arg-type]


def test_never_more_actors_than_the_smallest_limit() -> None:
    """Each actor needs a share of at least 1, or the shares would pass the limit."""
    assert actors_for(config(max_concurrency=4, rpm=600), 16) == 4  # type: ignore[arg-type]
    assert actors_for(config(max_concurrency=64), 8) == 8  # type: ignore[arg-type]
