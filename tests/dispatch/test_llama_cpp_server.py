"""The real `python -m llama_cpp.server` with the embedded SmolLM2 as an openai-compatible backend."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import make_config
from .helpers import ask, request

pytestmark = pytest.mark.llama


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory, smollm2: Path) -> Iterator[str]:
    """Start the server on a free 127.0.0.1 port; always stop it. The `local` extra installs
    llama-cpp-python[server]: a missing piece is an error here, not a skip."""
    import fastapi  # noqa: F401
    import sse_starlette  # noqa: F401
    import uvicorn  # noqa: F401

    model = smollm2
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--verbose",
            "False",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:  # bounded: the deadline above
            if proc.poll() is not None:
                log.flush()
                tail = log_path.read_text(errors="replace")[-2000:]
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not start within 120 s")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def backend(url: str) -> dict[str, object]:
    return {
        "kind": "openai-compatible",
        "flavor": "llama-cpp-python",
        "model": "smollm2",
        "base_url": url,
        "max_concurrency": 2,
        "timeout_s": 120,
        "max_attempts": 1,  # a 500 here would be a translation bug, not bad luck
    }


async def test_plain_chat(llama_server: str) -> None:
    """A plain job gets text and usage back from the real server."""
    outcome = await ask(
        make_config({"l": backend(llama_server)}), request("Say hello.", max_tokens=16)
    )
    assert outcome.ok, outcome.final
    assert outcome.final and outcome.final.completion
    completion = outcome.final.completion
    assert completion.usage.input_tokens > 0 and completion.usage.output_tokens > 0


async def test_json_schema_job(llama_server: str) -> None:
    """OpenAI's json_schema (which this server answers with a 500) works via the translation."""
    schema = {
        "type": "object",
        "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["color"],
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
    outcome = await ask(
        make_config({"l": backend(llama_server)}),
        request(
            "What color is the sky? Answer in JSON.",
            max_tokens=40,
            temperature=0.0,
            response_format=fmt,
        ),
    )
    assert outcome.ok, outcome.final
    assert outcome.final and outcome.final.completion
    assert json.loads(outcome.final.completion.text)["color"] in ("red", "green", "blue")


async def test_backends_check_sees_the_server(llama_server: str) -> None:
    """backends check: reachable, no key needed, latency measured."""
    from tierline.dispatch.probe import check_backends

    results = await check_backends(make_config({"l": backend(llama_server)}))
    assert len(results) == 1 and results[0].usable and results[0].latency_s is not None
