"""Shared machinery: schema instances, formatting, slots, lifecycle, process mode, spec helper."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest
from fakehelpers import http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes import FAKES, FakeOpenAI, FakeVLLM, Reply, schema_instance
from tests.fakes._core import SlotPool, go_duration, rfc3339
from tests.fakes.loadgen import run_load
from tests.fakes.spec import ENV_VAR, OpenAISpec, SpecError, SpecMissing

REPO = Path(__file__).resolve().parents[2]


def schemas() -> st.SearchStrategy[dict[str, object]]:
    """Random JSON schemas of the kinds structured-output requests use."""
    leaves = st.one_of(
        st.builds(
            lambda lo, span: {"type": "string", "minLength": lo, "maxLength": lo + span},
            st.integers(0, 20),
            st.integers(0, 20),
        ),
        st.builds(
            lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
            st.integers(-50, 50),
            st.integers(0, 10),
        ),
        st.builds(lambda lo: {"type": "number", "exclusiveMinimum": lo}, st.floats(-100, 100)),
        st.builds(
            lambda step: {"type": "integer", "multipleOf": step, "minimum": 1}, st.integers(1, 9)
        ),
        st.just({"type": "boolean"}),
        st.just({"type": "null"}),
        st.just({"type": "string", "format": "date-time"}),
        st.lists(st.text(max_size=5), min_size=1, max_size=4, unique=True).map(
            lambda e: {"enum": e}
        ),
        st.just({"type": ["string", "null"]}),
    )

    def extend(
        children: st.SearchStrategy[dict[str, object]],
    ) -> st.SearchStrategy[dict[str, object]]:
        obj = st.dictionaries(
            st.text("abcdefgh", min_size=1, max_size=4), children, max_size=4
        ).flatmap(
            lambda props: st.builds(
                lambda req, extra: {
                    "type": "object",
                    "properties": props,
                    "required": req,
                    "additionalProperties": extra,
                },
                st.lists(st.sampled_from(sorted(props)), unique=True) if props else st.just([]),
                st.booleans(),
            )
        )
        arr = st.builds(
            lambda items, lo: {"type": "array", "items": items, "minItems": lo},
            children,
            st.integers(0, 3),
        )
        any_of = st.lists(children, min_size=1, max_size=3).map(
            lambda bs: {"anyOf": [{"type": "null"}, *bs]}
        )
        return st.one_of(obj, arr, any_of)

    return st.recursive(leaves, extend, max_leaves=12)


class TestSchemaInstance:
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(schema=schemas(), seed=st.text(max_size=10))
    def test_instances_validate(self, schema: dict[str, object], seed: str) -> None:
        """Every generated instance validates against its schema."""
        jsonschema.validate(schema_instance(schema, seed), schema)

    def test_refs_allof_and_formats(self) -> None:
        """$ref into $defs, allOf merges and formats are honoured."""
        schema = {
            "$defs": {
                "item": {
                    "type": "object",
                    "properties": {"id": {"type": "string", "format": "uuid"}},
                    "required": ["id"],
                }
            },
            "allOf": [
                {
                    "type": "object",
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/$defs/item"}, "minItems": 2}
                    },
                    "required": ["items"],
                },
                {
                    "properties": {"when": {"type": "string", "format": "date"}},
                    "required": ["when"],
                },
            ],
        }
        value = schema_instance(schema, "x")
        jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
        assert len(value["items"]) == 2 and value["when"] == "2024-01-01"

    def test_deterministic_and_seed_dependent(self) -> None:
        """The same seed gives the same instance; strings depend on the seed."""
        schema = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}
        assert (
            schema_instance(schema, "a")
            == schema_instance(schema, "a")
            != schema_instance(schema, "b")
        )


class TestFormatting:
    @pytest.mark.parametrize(
        ("seconds", "text"),
        [
            (0, "0s"),
            (0.012, "12ms"),
            (0.0125, "12.5ms"),
            (1, "1s"),
            (1.5, "1.5s"),
            (360, "6m0s"),
            (3600, "1h0m0s"),
            (3725.25, "1h2m5.25s"),
        ],
    )
    def test_go_duration(self, seconds: float, text: str) -> None:
        """Rate-limit resets are formatted like Go's time.Duration."""
        assert go_duration(seconds) == text

    def test_rfc3339(self) -> None:
        """Anthropic timestamps are UTC with a Z suffix."""
        assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
        assert rfc3339(0, micros=False) == "1970-01-01T00:00:00Z"


class TestSlotPool:
    async def test_fifo_and_full(self) -> None:
        """Waiters get slots in arrival order; a capped queue reports full."""
        pool = SlotPool(1, max_waiting=2)
        order: list[int] = []

        async def job(n: int) -> None:
            async with pool.slot():
                order.append(n)
                await asyncio.sleep(0.01)

        tasks = [asyncio.ensure_future(job(n)) for n in range(3)]
        await asyncio.sleep(0)
        assert (pool.running, len(pool.waiting), pool.full) == (1, 2, True)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2] and pool.running == 0 and not pool.waiting

    async def test_cancelled_waiter_frees_its_place(self) -> None:
        """A cancelled waiter leaves the queue and does not leak a slot."""
        pool = SlotPool(1)
        hold = asyncio.Event()

        async def holder() -> None:
            async with pool.slot():
                await hold.wait()

        async def waiter() -> None:
            async with pool.slot():
                pass

        first = asyncio.ensure_future(holder())
        await asyncio.sleep(0)
        second = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
        hold.set()
        await first
        assert pool.running == 0 and not pool.waiting


class TestLifecycle:
    def test_no_leaked_threads_or_sockets(self) -> None:
        """Starting and stopping every fake many times leaves no threads or file descriptors."""
        threads = threading.active_count()
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            for cls in FAKES.values():
                with cls() as srv:
                    http("GET", f"{srv.base_url}/models")
        assert threading.active_count() == threads
        assert len(os.listdir("/proc/self/fd")) <= fds + 2

    def test_stop_is_idempotent_and_restart_refused(self) -> None:
        """stop() twice is fine; a started fake cannot start again."""
        srv = FakeOpenAI().start()
        with pytest.raises(RuntimeError):
            srv.start()
        srv.stop()
        srv.stop()

    def test_separate_process(self) -> None:
        """python -m tests.fakes prints its base URL first and stops on SIGTERM."""
        with subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fakes",
                "vllm",
                "--model",
                "m",
                "--latency-ms",
                "5",
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        ) as proc:
            try:
                assert proc.stdout is not None
                base_url = proc.stdout.readline().strip()
                assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
                status, _, body = http(
                    "POST",
                    f"{base_url}/chat/completions",
                    {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert status == 200 and json.loads(body)["object"] == "chat.completion"
            finally:
                proc.terminate()
                assert proc.wait(timeout=10) == 0

    async def test_loadgen(self) -> None:
        """The load generator completes every request against an in-process fake."""
        with FakeOpenAI(record=False, latency_ms=5) as srv:
            result = await run_load(srv.base_url, 200, 20)
        assert result["errors"] == 0 and result["requests"] == 200


class TestSpecHelper:
    def test_reports_every_violation(self, spec: OpenAISpec) -> None:
        """validate raises SpecError listing each problem; the protocols.md batch example passes."""
        with pytest.raises(SpecError) as info:
            spec.validate({"error": {"message": 1}}, "ErrorResponse")
        assert len(info.value.errors) >= 4
        example = {
            "id": "batch_abc123",
            "object": "batch",
            "endpoint": "/v1/chat/completions",
            "errors": None,
            "input_file_id": "file-abc123",
            "completion_window": "24h",
            "status": "completed",
            "created_at": 1711471533,
            "failed_at": None,
            "request_counts": {"total": 1, "completed": 1, "failed": 0},
        }
        spec.validate(example, "Batch")
        assert spec.errors(example, "Batch", strict_nulls=True)

    def test_missing_spec_and_env_var(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A missing file raises SpecMissing naming the env var; the env var picks the file."""
        monkeypatch.setenv(ENV_VAR, str(tmp_path / "nope.yaml"))
        with pytest.raises(SpecMissing, match=ENV_VAR):
            OpenAISpec.load()
        small = tmp_path / "mini.yaml"
        small.write_text(
            "openapi: 3.1.0\ncomponents:\n  schemas:\n    Thing:\n      type: object\n"
            "      required: [a]\n",
            encoding="utf-8",
        )
        monkeypatch.setenv(ENV_VAR, str(small))
        mini = OpenAISpec.load()
        assert mini.errors({}, "Thing") and not mini.errors({"a": 1}, "Thing")
        with pytest.raises(KeyError):
            mini.validator("Other")


def test_latency_per_output_token_holds_the_request() -> None:
    """latency_per_token_ms makes a fake decode: a 50-token answer at 4 ms/token takes at
    least 0.2 s (a lower bound: a sleep never ends early); the answer has those 50 tokens."""
    with FakeVLLM(model="m", latency_per_token_ms=4) as srv:
        srv.enqueue_reply(Reply(completion_tokens=50))
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        started = time.perf_counter()
        status, _, raw = http("POST", srv.base_url + "/chat/completions", body)
        elapsed = time.perf_counter() - started
    assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 50
    assert elapsed >= 0.2
