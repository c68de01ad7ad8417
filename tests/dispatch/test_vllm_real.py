"""Opt-in: a real vLLM server named by TIERLINE_VLLM_URL (e.g. http://gpu-a:8000/v1)."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest

from .conftest import make_config
from .helpers import ask, request

pytestmark = pytest.mark.vllm

URL = os.environ.get("TIERLINE_VLLM_URL", "")


@pytest.fixture(scope="module")
def served() -> tuple[str, str]:
    """The base URL and the served model name (from /v1/models)."""
    if not URL:
        pytest.skip("set TIERLINE_VLLM_URL to run the real-vLLM tests")
    with urllib.request.urlopen(URL.rstrip("/") + "/models", timeout=10) as resp:
        model = json.load(resp)["data"][0]["id"]
    return URL, model


def backend(url: str, model: str) -> dict[str, object]:
    return {
        "kind": "openai-compatible",
        "flavor": "vllm",
        "model": model,
        "base_url": url,
        "metrics": True,
    }


async def test_chat_and_usage(served: tuple[str, str]) -> None:
    """A plain job through the real server, with usage."""
    outcome = await ask(make_config({"v": backend(*served)}), request("Say hello.", max_tokens=16))
    assert outcome.ok, outcome.final
    assert (
        outcome.final
        and outcome.final.completion
        and outcome.final.completion.usage.output_tokens > 0
    )


async def test_structured_output(served: tuple[str, str]) -> None:
    """response_format json_schema is honoured (vLLM's structured outputs)."""
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    outcome = await ask(
        make_config({"v": backend(*served)}),
        request("Two plus two?", max_tokens=32, response_format=fmt),
    )
    assert outcome.ok and outcome.final and outcome.final.completion
    assert isinstance(json.loads(outcome.final.completion.text)["n"], int)
