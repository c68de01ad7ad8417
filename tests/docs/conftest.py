"""Fixtures that run the examples against fakes.

The example configs keep real URLs (``http://gpu-a:8000/v1``, ``https://api.openai.com/v1``, ...).
`FakeStack.config` starts one fake per URL, chosen by the backend's kind and flavor (vLLM with
the configured model name, llama-server, OpenAI, Anthropic), and replaces each URL in the text
with its fake's; a URL left over fails the test. API keys in the environment are dummies that
the fakes require. Scripts run with this venv's `tierline` first on PATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tests.conftest import EXAMPLES
from tests.fakes import (
    FakeAnthropic,
    FakeLlamaServer,
    FakeOpenAI,
    FakeServer,
    FakeVLLM,
)

KEY = "sk-docs-test-key-0001"
CONFIGS = EXAMPLES / "configs"
BIN = Path(sys.executable).parent
URL = re.compile(r"https?://[^\s\"']+")
# Workload jobs that tier 1 or 2: a run on them never loads the Anthropic SDK (2 s per process),
# which keeps the script tests fast. (If tiering moves one to tier 3, tests only get slower.)
SYNC_IDS = ["code-0234", "code-0261", "tkt-0155", "mail-0101", "mail-0014", "code-0271"]
SYNC_IDS += ["code-0227", "mail-0096", "qa-0042", "reason-0230", "inv-0043"]


class FakeStack:
    """Fakes for the URLs of example configs; every fake is stopped when the test ends."""

    def __init__(self, stack: ExitStack, tmp: Path) -> None:
        self._stack = stack
        self._tmp = tmp
        self.openai: FakeServer | None = None
        self.anthropic: FakeServer | None = None
        self.by_url: dict[str, FakeServer] = {}

    def _start(self, server: FakeServer) -> FakeServer:
        return self._stack.enter_context(server)

    def _fake_for(self, backend: dict[str, Any]) -> FakeServer:
        kind = backend["kind"]
        if kind == "openai":
            self.openai = self.openai or self._start(FakeOpenAI(api_key=KEY))
            return self.openai
        if kind == "anthropic":
            self.anthropic = self.anthropic or self._start(FakeAnthropic(api_key=KEY))
            return self.anthropic
        if backend.get("flavor") == "vllm":
            return self._start(FakeVLLM(model=backend["model"]))
        if backend.get("flavor") == "llama-server":
            return self._start(FakeLlamaServer())
        raise AssertionError(f"no fake for backend {backend}")

    def config(self, name: str) -> Path:
        """examples/configs/NAME with every URL pointing at a fake on 127.0.0.1."""
        text = (CONFIGS / name).read_text(encoding="utf-8")
        for backend in tomllib.loads(text)["backends"].values():
            urls = backend.get("base_urls") or [backend.get("base_url")]
            for url in filter(None, urls):
                fake = self.by_url.get(url) or self._fake_for(backend)
                self.by_url[url] = fake
                text = text.replace(f'"{url}"', f'"{fake.base_url}"')
        left = [u for u in URL.findall(_uncommented(text)) if "127.0.0.1:" not in u]
        assert not left, f"{name}: URLs without a fake: {left}"
        path = self._tmp / f"fake-{name}"
        path.write_text(text, encoding="utf-8")
        return path


def _uncommented(text: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeStack]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with ExitStack() as stack:
        yield FakeStack(stack, tmp_path)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of examples/ (scripts, Makefile, configs; the job files trimmed to a few jobs)."""
    dest = tmp_path / "examples"
    shutil.copytree(EXAMPLES, dest, ignore=shutil.ignore_patterns("out", "__pycache__"))
    return dest


def script_env(**extra: str) -> dict[str, str]:
    """The environment for a script: this venv's tierline first on PATH, no colour."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "NO_COLOR": "1"}
    env["TIERLINE"] = str(BIN / "tierline")
    return {**env, **extra}


def run_script(
    args: list[str], cwd: Path, timeout: float = 600, **env: str
) -> subprocess.CompletedProcess[str]:
    # The timeout only stops a hung script: the pipelines script starts ~40 tierline processes,
    # which took 85 s on 2 cores with four other test runs beside it (15 s of CPU).
    return subprocess.run(
        args, cwd=cwd, env=script_env(**env), capture_output=True, text=True, timeout=timeout
    )


def subset(path: Path, dest: Path, ids: list[str] | None = None, count: int = 0) -> Path:
    """Some lines of a job file: those with the given ids (or custom_ids), else the first COUNT."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if ids is not None:
        wanted = set(ids)
        lines = [
            line
            for line in lines
            if (json.loads(line).get("id") or json.loads(line).get("custom_id")) in wanted
        ]
    else:
        lines = lines[:count]
    dest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
