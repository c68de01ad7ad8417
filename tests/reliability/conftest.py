"""Fixtures for the reliability tests: the real CLI with the local backend swapped for a fake."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tierline.dispatch import registry
from tierline.dispatch.base import Request
from tierline.testing import FunctionBackend

# Three in-process backends, one per tier, so a run has a window of 6 jobs in flight.
THREE_TIERS = """
[backends.a]
kind = "llamacpp"
[backends.b]
kind = "llamacpp"
[backends.c]
kind = "llamacpp"
[routes]
1 = ["a"]
2 = ["b"]
3 = ["c"]
"""


class Calls:
    """Every request the fake backends got, by job id."""

    def __init__(self) -> None:
        self.job_ids: list[str | None] = []

    def __call__(self, request: Request) -> str:
        self.job_ids.append(request.job_id)
        return f"answer to {request.job_id}"


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    """Every `llamacpp` backend becomes a fake that answers at once and records its calls."""
    recorder = Calls()
    monkeypatch.setitem(
        registry.FACTORIES,
        "llamacpp",
        lambda name, _config: FunctionBackend(recorder, name=name, model=f"{name}-model"),
    )
    yield recorder


@pytest.fixture
def three_tiers(tmp_path: Path) -> Path:
    path = tmp_path / "tierline.toml"
    path.write_text(THREE_TIERS, encoding="utf-8")
    return path


def jobs_file(path: Path, count: int, *, start: int = 0) -> Path:
    """`count` valid jobs spread over the three tiers."""
    lines = [
        json.dumps({"id": f"j{i}", "prompt": f"Question {i}?", "tier": 1 + i % 3})
        for i in range(start, start + count)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
