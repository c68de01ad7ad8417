"""Hermetic tests: every test gets its own TIERLINE_HOME and working directory, and no config
or API key leaks in from the developer's environment. Nothing here skips: a missing or broken
dependency (llama-cpp-python, the model, the OpenAPI spec) fails the tests that need it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import tierline.cli
from tests.fakes.spec import ENV_VAR, OpenAISpec

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@pytest.fixture(scope="session")
def user_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache directory for the session: the embedded model is requantized into it once,
    and never into the developer's real ~/.cache."""
    return tmp_path_factory.mktemp("xdg-cache")


@pytest.fixture(autouse=True)
def hermetic(tmp_path: Path, user_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TIERLINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(user_cache))
    for name in list(os.environ):
        if name in ("TIERLINE_CONFIG", "TIERLINE_DEBUG", ENV_VAR) or name.endswith("_API_KEY"):
            monkeypatch.delenv(name)
    # In-process main(): a bug raises its own exception instead of becoming exit 70.
    monkeypatch.setattr(tierline.cli, "RAISE_INTERNAL_ERRORS", True)
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The embedded GGUF model. The README's test command installs the `local` extra, so a
    missing or broken llama-cpp-python or model is an error of every test that needs it."""
    import llama_cpp  # noqa: F401

    from tierline.dispatch.llamacpp import default_model_path

    return default_model_path()


def write_jsonl(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"\n".join(s.encode() if isinstance(s, str) else s for s in lines) + b"\n")
    return path


@pytest.fixture(scope="session")
def spec() -> OpenAISpec:
    """OpenAI's OpenAPI spec (the trimmed copy in the package), to check what fakes answer and
    what tierline sends."""
    return OpenAISpec.load()
