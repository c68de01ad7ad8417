"""Protocol-faithful fake LLM servers on 127.0.0.1, for tests and benchmarks.

Each fake runs an aiohttp app on its own thread and event loop, records requests, injects faults
(scripted or at a seeded random rate) and answers deterministically from the prompt::

    with FakeOpenAI(api_key="sk-test") as srv:
        client = OpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=0)
        srv.enqueue_fault(429, headers={"retry-after-ms": "100"})

They are tierline's test fixtures, not part of the wheel: import them as ``tests.fakes`` with the
repository root on ``sys.path`` (pytest and ``python -m`` from the root do that). Run one as a
separate process from the repository root with ``python -m tests.fakes openai --latency-ms 50``:
it prints its base URL on the first line of stdout. The OpenAPI checker is in ``.spec``.
"""

from tests.fakes._content import Reply, schema_instance
from tests.fakes._core import FakeServer, Fault, RecordedRequest
from tests.fakes.fake_anthropic import FakeAnthropic
from tests.fakes.fake_llama import FakeLlamaCppPython, FakeLlamaServer
from tests.fakes.fake_openai import FakeOpenAI
from tests.fakes.fake_vllm import FakeVLLM

__all__ = [
    "FakeAnthropic",
    "FakeLlamaCppPython",
    "FakeLlamaServer",
    "FakeOpenAI",
    "FakeServer",
    "FakeVLLM",
    "Fault",
    "RecordedRequest",
    "Reply",
    "schema_instance",
]

FAKES: dict[str, type[FakeServer]] = {
    "openai": FakeOpenAI,
    "anthropic": FakeAnthropic,
    "vllm": FakeVLLM,
    "llama-server": FakeLlamaServer,
    "llama-cpp-python": FakeLlamaCppPython,
}
