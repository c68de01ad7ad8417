"""Several replicas behind one openai-compatible backend: balancing, ejection, 503, backpressure."""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes import FakeLlamaCppPython, FakeLlamaServer, FakeVLLM
from tierline.dispatch.replicas import KV_METRICS, WAITING_METRICS, Replica, parse_metrics
from tierline.dispatch.router import Router

from .conftest import make_config
from .helpers import Sleeps, request, routed


def vllm_backend(*servers: FakeVLLM, **extra: object) -> dict[str, object]:
    return {
        "kind": "openai-compatible",
        "flavor": "vllm",
        "model": "m",
        "base_urls": [s.base_url for s in servers],
        "health_interval_s": 0.1,
        **extra,
    }


def chat_counts(*servers: FakeVLLM) -> list[int]:
    return [sum(r.path == "/v1/chat/completions" for r in s.requests) for s in servers]


async def dispatch_many(router: Router, n: int) -> list[bool]:
    outcomes = await asyncio.gather(
        *(router.dispatch(1, lambda _m, i=i: request(f"job {i}")) for i in range(n))
    )
    return [o.ok for o in outcomes]


async def rejoined(replica: Replica, deadline_s: float = 60) -> None:
    """Wait until the health probe (every 0.1 s) lets `replica` back; fail at the deadline,
    which only guards against a hang (a loaded machine may take far longer than 0.1 s)."""

    async def poll() -> None:
        while True:
            if not replica.ejected:
                return
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), deadline_s)
    except asyncio.TimeoutError:  # not TimeoutError before Python 3.11
        pytest.fail(f"the revived replica was not probed back in within {deadline_s} s")


async def test_least_outstanding_spreads_the_load() -> None:
    """Concurrent requests are shared about evenly between equal replicas."""
    with FakeVLLM(model="m", latency_ms=50) as a, FakeVLLM(model="m", latency_ms=50) as b:
        async with routed(make_config({"v": vllm_backend(a, b)})) as router:
            assert all(await dispatch_many(router, 40))
        counts = chat_counts(a, b)
    assert sum(counts) == 40 and min(counts) >= 15


async def test_dead_replica_is_ejected_and_rejoins_after_probe() -> None:
    """A killed replica stops getting requests; once revived, the health probe lets it back."""
    with FakeVLLM(model="m") as a, FakeVLLM(model="m") as b:
        async with routed(make_config({"v": vllm_backend(a, b)})) as router:
            assert all(await dispatch_many(router, 4))
            a.kill()
            assert all(await dispatch_many(router, 10))  # every job still answered, by b
            pool = router.backend("v").pool  # type: ignore[attr-defined]
            assert pool.replicas[0].ejected and not pool.replicas[1].ejected
            before = chat_counts(a)[0]
            a.revive()
            await rejoined(pool.replicas[0])
            assert all(await dispatch_many(router, 10))
        assert chat_counts(a)[0] > before


async def test_unhealthy_replica_at_start_gets_nothing() -> None:
    """/health 503 (engine dead) at start: that replica is ejected before the first request."""
    with FakeVLLM(model="m") as a, FakeVLLM(model="m") as b:
        a.set_engine_dead()
        async with routed(make_config({"v": vllm_backend(a, b)})) as router:
            assert all(await dispatch_many(router, 6))
        assert chat_counts(a, b) == [0, 6]


async def test_engine_busy_503_is_retried_on_another_replica_at_once() -> None:
    """vLLM's 503 "engine busy" goes to the other replica without a backoff wait."""
    sleeps = Sleeps()
    with FakeVLLM(model="m") as a, FakeVLLM(model="m") as b:
        a.enqueue_fault(503)
        async with routed(make_config({"v": vllm_backend(a, b)}), sleeps) as router:
            outcome = await router.dispatch(1, lambda _m: request())
        counts = chat_counts(a, b)
    assert outcome.ok and outcome.hops[0].attempts == 2
    assert counts == [1, 1]
    assert sleeps == [0.0]  # the retry layer's first backoff would be 0.375-0.5 s


async def test_single_replica_503_backs_off() -> None:
    """With no other replica free, a 503 is retried on the same one after a backoff."""
    sleeps = Sleeps()
    with FakeVLLM(model="m") as a:
        a.enqueue_fault(503)
        async with routed(make_config({"v": vllm_backend(a)}), sleeps) as router:
            outcome = await router.dispatch(1, lambda _m: request())
    assert outcome.ok and outcome.hops[0].attempts == 2
    assert len(sleeps) == 1 and 0.375 <= sleeps[0] <= 0.5  # INITIAL_RETRY_DELAY_S, jittered


async def test_per_replica_cap_keeps_requests_under_the_server_limit() -> None:
    """max_in_flight_per_replica=1 against servers that 503 beyond one request: no 503 at all."""
    with (
        FakeVLLM(model="m", latency_ms=30, max_num_seqs=1, max_queued=0) as a,
        FakeVLLM(model="m", latency_ms=30, max_num_seqs=1, max_queued=0) as b,
    ):
        async with routed(
            make_config({"v": vllm_backend(a, b, max_in_flight_per_replica=1)})
        ) as router:
            outcomes = await asyncio.gather(
                *(router.dispatch(1, lambda _m: request()) for _ in range(8))
            )
        rejected = a.pool.rejected + b.pool.rejected
    assert all(o.ok for o in outcomes) and rejected == 0
    assert {o.hops[0].attempts for o in outcomes} == {1}


async def test_metrics_backpressure_avoids_the_queued_replica() -> None:
    """A replica reporting a long queue on /metrics gets no requests while another is free."""
    with FakeVLLM(model="m") as a, FakeVLLM(model="m") as b:
        a.override_metric("vllm:num_requests_waiting", 50)
        config = make_config(
            {"v": vllm_backend(a, b, metrics=True, metrics_interval_s=0.1, max_waiting=10)}
        )
        async with routed(config) as router:
            assert all(await dispatch_many(router, 10))
        assert chat_counts(a, b) == [0, 10]


async def test_backpressure_holds_requests_until_the_queue_drains() -> None:
    """Every replica saturated: requests wait for /metrics to show room, then go."""
    with FakeVLLM(model="m") as a:
        a.override_metric("vllm:kv_cache_usage_perc", 0.99)
        config = make_config(
            {"v": vllm_backend(a, metrics=True, metrics_interval_s=0.1, max_kv_cache_usage=0.9)}
        )
        async with routed(config) as router:
            task = asyncio.create_task(router.dispatch(1, lambda _m: request()))
            await asyncio.sleep(0.3)
            assert not task.done() and chat_counts(a) == [0]
            a.override_metric("vllm:kv_cache_usage_perc", None)
            outcome = await asyncio.wait_for(task, 5)
    assert outcome.ok


@pytest.mark.parametrize(
    ("text", "waiting", "kv"),
    [
        (
            'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0\n'
            'vllm:num_requests_waiting{engine="1",model_name="m"} 2.0\n'
            'vllm:num_requests_waiting_by_reason{reason="capacity"} 9.0\n'
            'vllm:kv_cache_usage_perc{engine="0"} 0.5\nvllm:kv_cache_usage_perc{engine="1"} 0.75\n',
            5.0,
            0.75,
        ),
        ('# HELP old\nvllm:gpu_cache_usage_perc{model_name="m"} 0.4\n', None, 0.4),
        ("llamacpp:requests_deferred 4\n", 4.0, None),
    ],
)
def test_parse_metrics(text: str, waiting: float | None, kv: float | None) -> None:
    """Queues add up across engines, KV use takes the fullest; old metric names still work."""
    values = parse_metrics(text, WAITING_METRICS + KV_METRICS)
    assert next((values[n] for n in WAITING_METRICS if n in values), None) == waiting
    assert next((values[n] for n in KV_METRICS if n in values), None) == kv


@pytest.mark.parametrize(
    ("fake", "flavor", "probes"),
    [
        (FakeVLLM, "vllm", ["/health"]),
        (FakeLlamaServer, "llama-server", ["/health"]),
        (FakeLlamaCppPython, "llama-cpp-python", ["/v1/models"]),  # it has no /health
        (FakeVLLM, "generic", ["/health"]),  # /health first ...
        (FakeLlamaCppPython, "generic", ["/v1/models"]),  # ... its 404 (unrecorded): /v1/models
    ],
)
async def test_each_flavor_probes_its_health_endpoint(
    fake: type[FakeVLLM], flavor: str, probes: list[str]
) -> None:
    """docs/dispatch.md's flavors table: what each replica is probed with before its first
    request."""
    with fake(model="m") as srv:
        backend = {**vllm_backend(srv), "flavor": flavor}
        async with routed(make_config({"v": backend})) as router:
            assert (await router.dispatch(1, lambda _m: request())).ok
        paths = [r.path for r in srv.requests]
    assert paths[: paths.index("/v1/chat/completions")] == probes


async def test_loading_llama_server_gets_nothing_until_loaded() -> None:
    """llama-server answers /health with 503 "Loading model" while it loads: that replica gets
    no requests; once loaded, the next probe lets it in."""
    with FakeLlamaServer(model="m", loading_seconds=3600) as a, FakeLlamaServer(model="m") as b:
        backend = {**vllm_backend(a, b), "flavor": "llama-server"}
        async with routed(make_config({"v": backend})) as router:
            assert all(await dispatch_many(router, 6))
            assert chat_counts(a, b) == [0, 6]
            a.finish_loading()
            await rejoined(router.backend("v").pool.replicas[0])  # type: ignore[attr-defined]
            assert all(await dispatch_many(router, 20))
        assert chat_counts(a)[0] > 0


async def test_all_replicas_ejected_still_tries_one() -> None:
    """Every replica down and no probe due for an hour: a request is still sent (it doubles as
    the probe), so a replica that came back serves at once and rejoins."""
    with FakeVLLM(model="m") as a, FakeVLLM(model="m") as b:
        a.kill()
        b.kill()
        backend = vllm_backend(a, b, health_interval_s=3600, max_attempts=2)
        async with routed(make_config({"v": backend})) as router:
            first = await router.dispatch(1, lambda _m: request())
            pool = router.backend("v").pool  # type: ignore[attr-defined]
            assert not first.ok and all(r.ejected for r in pool.replicas)
            a.revive()
            second = await router.dispatch(1, lambda _m: request())
            assert second.ok and not pool.replicas[0].ejected and pool.replicas[1].ejected
        assert chat_counts(a) == [1]


async def test_a_reset_on_a_working_replica_does_not_count_against_the_circuit() -> None:
    """With one replica dead, resets on the other (the last one alive) eject it only until its
    immediate re-probe answers; they never open the backend's circuit (issue 13)."""
    with FakeVLLM(model="m") as a, FakeVLLM(model="m") as b:
        config = make_config({"v": vllm_backend(a, b, circuit_failures=2, health_interval_s=60)})
        async with routed(config) as router:
            assert all(await dispatch_many(router, 4))
            a.kill()
            b.enqueue_fault(kind="reset", path="/v1/chat/completions", times=4)
            assert all(await dispatch_many(router, 20))
            assert router.gate("v").breaker.state == "closed"
            pool = router.backend("v").pool  # type: ignore[attr-defined]
            assert pool.replicas[0].down and not pool.replicas[1].down


async def test_every_replica_dead_still_opens_the_circuit() -> None:
    """When no replica is alive, their failures count again: the circuit opens."""
    with FakeVLLM(model="m") as a, FakeVLLM(model="m") as b:
        config = make_config({"v": vllm_backend(a, b, circuit_failures=3, max_attempts=2)})
        async with routed(config) as router:
            assert all(await dispatch_many(router, 4))
            a.kill()
            b.kill()
            outcomes = []
            for i in range(8):  # one after another: the probes settle in between
                outcomes.append(await router.dispatch(1, lambda _m, i=i: request(f"job {i}")))
            assert not any(o.ok for o in outcomes)
            assert router.gate("v").breaker.state == "open"
