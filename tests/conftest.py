"""Hermetic tests: every test gets its own TIERLINE_HOME and working directory, and no config
or API key leaks in from the developer's environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tierline.testing.servers.spec import OpenAISpec, SpecMissing

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TIERLINE_HOME", str(tmp_path / "home"))
    for name in list(os.environ):
        if name in ("TIERLINE_CONFIG", "TIERLINE_DEBUG") or name.endswith("_API_KEY"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The embedded GGUF model; CI installs the `local` extra, so there it must be present."""
    try:
        import llama_cpp  # noqa: F401

        from tierline.dispatch.llamacpp import default_model_path

        return default_model_path()
    except Exception as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"llama-cpp-python with the embedded model is not installed: {exc}")


def write_jsonl(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(s.encode() if isinstance(s, str) else s for s in lines) + b"\n")
    return path


@pytest.fixture(scope="session")
def spec() -> OpenAISpec:
    """OpenAI's OpenAPI spec (shared/specs), to check what fakes answer and tierline sends."""
    try:
        return OpenAISpec.load()
    except SpecMissing as exc:
        pytest.skip(f"OpenAI OpenAPI spec not available: {exc}")
