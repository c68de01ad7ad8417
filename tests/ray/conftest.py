"""A real local Ray cluster (no mocks of Ray), one per test module, kept small: 2 CPUs, no
dashboard, a small object store. Ray is part of the `ray` extra, which CI installs: a missing
Ray fails these tests (they never skip)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.fakes import FakeVLLM
from tests.fakes._core import BODY

MODEL = "Qwen/Qwen2.5-1.5B-Instruct"
DUPLICATES = 4
EXTRA = DUPLICATES + 2  # lines of `jobs()` besides the N numbered jobs: copies, 2 bad lines


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 1024**2,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


class CountingVLLM(FakeVLLM):
    """A fake vLLM that counts the chat completions it answered (a paid call each), and can
    hold requests before answering them (`holding`), so a test can kill a client while no
    reply is on its way to it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.completed = 0  # 200 replies to /v1/chat/completions whose client was still there
        self.by_prompt: Counter[str] = Counter()  # the same, by the job's (last) message
        self.arrived = 0  # requests to /v1/chat/completions received (held ones included)
        self.holding = False

    def _wrap(self, handler: Any) -> Any:
        async def counted(request: web.Request) -> web.StreamResponse:
            if request.path.endswith("/chat/completions"):
                self.arrived += 1
            while self.holding:  # noqa: ASYNC110 - set from the test thread, not this loop
                await asyncio.sleep(0.005)
            response = await handler(request)
            transport = request.transport
            alive = transport is not None and not transport.is_closing()
            if request.path.endswith("/chat/completions") and response.status == 200 and alive:
                self.completed += 1
                self.by_prompt[_prompt(request.get(BODY))] += 1
            return response

        return super()._wrap(counted)


def _prompt(body: object) -> str:
    assert isinstance(body, dict)
    return str(body["messages"][-1]["content"])


def paid_per_job(replicas: list[CountingVLLM]) -> Counter[str]:
    """Completions answered per job (by its prompt), over every replica."""
    return sum((r.by_prompt for r in replicas), Counter())


@pytest.fixture
def replicas() -> Iterator[list[CountingVLLM]]:
    """Two fake vLLM replicas with seeded faults (429, 5xx, resets, malformed and slow
    replies): retries absorb them, so every job ends ok on its first backend."""
    with CountingVLLM(fault_rate=0.03, seed=1) as a, CountingVLLM(fault_rate=0.03, seed=2) as b:
        yield [a, b]


def vllm_config(path: Path, replicas: list[FakeVLLM], *, max_concurrency: int = 64) -> Path:
    urls = ", ".join(f'"{r.base_url}"' for r in replicas)
    path.write_text(
        f"""
[backends.gpu]
kind = "openai-compatible"
flavor = "vllm"
model = "{MODEL}"
base_urls = [{urls}]
max_concurrency = {max_concurrency}
max_attempts = 10
circuit_failures = 100000
metrics = false
health_check = false
price = {{ input_per_mtok = 2000, output_per_mtok = 4000 }}

[routes]
1 = ["gpu"]
2 = ["gpu"]
3 = ["gpu"]

[defaults]
max_tokens = 32
"""
    )
    return path


def jobs(path: Path, n: int) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(
                json.dumps(
                    {
                        "id": f"j{i}",
                        "prompt": f"Summarize ticket {i}: the printer on floor {i % 7} is out of toner.",
                        "tier": 1 + i % 3,
                    }
                )
                + "\n"
            )
        for i in range(DUPLICATES):  # identical jobs: one is sent, the others copy its answer
            fh.write(
                json.dumps({"id": f"d{i}", "prompt": "Same question?", "temperature": 0}) + "\n"
            )
        fh.write('{"id": "broken", "prompt": 3}\n{not json\n')
    return path


def content(path: Path) -> dict[str, dict[str, Any]]:
    """Each result by id, without what differs from one execution to the next (time, retries)."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for name in ("latency_s", "attempts"):
            record.pop(name)
        for hop in record.get("route", []):
            hop.pop("latency_s", None)
            hop.pop("attempts", None)
        out[record["id"] or f"{record['source']}:{record['line']}"] = record
    return out
