"""Helpers for tests that run `tierline run` as a real subprocess against a fake vLLM server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from tests.fakes import FakeVLLM

# How long a subprocess or a wait may take before the test calls it a hang. Generous on purpose:
# on a loaded machine starting `tierline run` alone can take many seconds, and these bounds
# assert nothing about speed.
HANG_GUARD = 180.0


def vllm_config(path: Path, server: FakeVLLM, *, max_concurrency: int = 8, extra: str = "") -> Path:
    """Every tier on one openai-compatible backend served by `server`."""
    path.write_text(
        f"""
[backends.gpu]
kind = "openai-compatible"
flavor = "vllm"
base_url = "{server.base_url}"
model = "m"
max_concurrency = {max_concurrency}
max_attempts = 2
{extra}
[routes]
1 = ["gpu"]
2 = ["gpu"]
3 = ["gpu"]
""",
        encoding="utf-8",
    )
    return path


def start_run(args: list[str], home: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tierline", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "TIERLINE_HOME": str(home), **env},
    )


def wait_for_lines(
    path: Path, count: int, proc: subprocess.Popen[bytes], timeout: float = HANG_GUARD
) -> int:
    """Wait until `path` has at least `count` complete lines (bounded in time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = path.read_bytes().count(b"\n") if path.exists() else 0
        if lines >= count:
            return lines
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {count} lines")


def wait_for_requests(server: FakeVLLM, count: int, timeout: float = HANG_GUARD) -> None:
    """Wait until `server` has received `count` requests; fail when the deadline passes (it only
    guards against a hang: nothing is asserted about how long it took)."""
    deadline = time.monotonic() + timeout
    while server.request_count < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{server.name} got {server.request_count} of {count} requests")
        time.sleep(0.02)


def requested_ids(server: FakeVLLM) -> Counter[str]:
    """How many times each job (by its prompt, "Question N?") was sent to the server."""
    counts: Counter[str] = Counter()
    for request in list(server.requests):
        if request.path.endswith("/chat/completions") and isinstance(request.body, dict):
            text = request.body["messages"][-1]["content"]
            counts["j" + text.removeprefix("Question ").removesuffix("?")] += 1
    return counts


def complete_results(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_bytes().splitlines(keepends=True):
        if line.endswith(b"\n"):
            out.append(json.loads(line))
    return out
