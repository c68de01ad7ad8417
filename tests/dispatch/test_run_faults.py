"""Whole runs through `run_jobs` against the fakes: faults, fallback, one result per job."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.fakes import FakeOpenAI
from tests.fakes.spec import OpenAISpec
from tierline.jobs import Result, jobs_from_lines
from tierline.run import run_jobs
from tierline.tiering.pipeline import Tierer

from .conftest import KEY, make_config


def job_lines(n: int) -> list[str]:
    return [
        json.dumps({"id": f"j{i}", "prompt": f"Summarize ticket {i}.", "tier": 1 + i % 3})
        for i in range(n)
    ]


async def run(config: object, lines: list[str]) -> tuple[list[Result], object]:
    results: list[Result] = []
    summary = await run_jobs(
        jobs_from_lines(lines, source="jobs.jsonl"),
        config=config,  # type: ignore[arg-type]
        tierer=Tierer.from_config(config.tiering),  # type: ignore[attr-defined]
        sink=results.append,
    )
    return results, summary


@pytest.mark.slow
async def test_fault_mix_every_job_exactly_one_result(openai_key: str, spec: OpenAISpec) -> None:
    """429s, 5xx, resets, malformed and slow replies: each job ends with one result, no dupes."""
    with FakeOpenAI(api_key=KEY, fault_rate=0.2, seed=7) as srv:
        backend = {
            "kind": "openai",
            "model": "gpt-4o-mini",
            "base_url": srv.base_url,
            "api_key_env": openai_key,
            "max_attempts": 8,
            "max_concurrency": 32,
            "circuit_failures": 1000,
        }
        results, summary = await run(make_config({"o": backend}), job_lines(150))
        injected = srv.faults.injected
        recorded = [r for r in srv.requests if r.path == "/v1/chat/completions"]
    ids = Counter(r.id for r in results)
    assert len(ids) == 150 and set(ids.values()) == {1}
    assert all(r.status == "ok" for r in results), [r.error for r in results if r.status != "ok"]
    assert injected > 10 and sum(r.attempts for r in results) == len(recorded) > 150
    for request in recorded:
        spec.check_request(request)
    assert summary.tally.jobs == 150  # type: ignore[attr-defined]


async def test_dead_primary_falls_back_and_the_summary_counts_it(
    oai: FakeOpenAI, openai_key: str
) -> None:
    """Every job hands over from an unreachable backend; the route and the summary say so."""
    dead = FakeOpenAI().start()
    dead.stop()
    config = make_config(
        {
            "gpu": {
                "kind": "openai-compatible",
                "model": "m",
                "base_url": dead.base_url,
                "max_attempts": 1,
            },
            "api": {
                "kind": "openai",
                "model": "gpt-4o-mini",
                "base_url": oai.base_url,
                "api_key_env": openai_key,
            },
        }
    )
    results, summary = await run(config, job_lines(12))
    assert all(r.status == "ok" and r.backend == "api" for r in results)
    assert all([h.backend for h in r.route] == ["gpu", "api"] for r in results)
    assert summary.tally.fallbacks == 12  # type: ignore[attr-defined]


async def test_nothing_is_silently_downgraded(oai: FakeOpenAI, openai_key: str) -> None:
    """A backend that answers with an error is reported as the job's error, not retried elsewhere."""
    oai.enqueue_fault(400, times=1)
    config = make_config(
        {
            "first": {
                "kind": "openai",
                "model": "gpt-4o-mini",
                "base_url": oai.base_url,
                "api_key_env": openai_key,
            },
            "second": {
                "kind": "openai",
                "model": "gpt-4.1",
                "base_url": oai.base_url,
                "api_key_env": openai_key,
            },
        }
    )
    results, _ = await run(config, job_lines(1))
    assert results[0].status == "error" and [h.backend for h in results[0].route] == ["first"]
