"""`tierline backends check` against the fakes: a table on stderr or JSON on stdout, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fakes import FakeAnthropic, FakeOpenAI, FakeVLLM
from tierline.cli import main

from .conftest import ANT_KEY, KEY


def write_config(path: Path, backends: str) -> str:
    path.write_text(backends + '\n[routes]\n1 = "v"\n2 = "v"\n3 = "v"\n', encoding="utf-8")
    return str(path)


def test_usable_backends_exit_0_with_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reachable, key accepted, model served: exit 0, one JSON line per endpoint."""
    monkeypatch.setenv("CHECK_OPENAI_API_KEY", KEY)
    with FakeVLLM(model="m") as a, FakeVLLM(model="m") as b, FakeOpenAI(api_key=KEY) as oai:
        config = write_config(
            tmp_path / "t.toml",
            f'[backends.v]\nkind = "openai-compatible"\nflavor = "vllm"\nmodel = "m"\nbase_urls = ["{a.base_url}", "{b.base_url}"]\n'
            f'[backends.o]\nkind = "openai"\nmodel = "gpt-4o-mini"\nbase_url = "{oai.base_url}"\napi_key_env = "CHECK_OPENAI_API_KEY"\n',
        )
        code = main(["backends", "check", "--config", config, "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert [r["backend"] for r in rows] == ["v", "v", "o"]
    assert all(r["usable"] and r["model_present"] and r["latency_s"] is not None for r in rows)


def test_unusable_backend_exits_1_and_names_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wrong model, refused key, missing key, dead URL: each reported, exit 1, table on stderr."""
    monkeypatch.setenv("WRONG_API_KEY", "sk-wrong-0123456789")
    monkeypatch.delenv("ABSENT_API_KEY", raising=False)
    dead = FakeVLLM().start()
    dead.stop()
    with (
        FakeVLLM(model="m") as vllm,
        FakeOpenAI(api_key=KEY) as oai,
        FakeAnthropic(api_key=ANT_KEY) as ant,
    ):
        config = write_config(
            tmp_path / "t.toml",
            f'[backends.v]\nkind = "openai-compatible"\nflavor = "vllm"\nmodel = "other"\nbase_url = "{vllm.base_url}"\n'
            f'[backends.o]\nkind = "openai"\nmodel = "gpt-4o-mini"\nbase_url = "{oai.base_url}"\napi_key_env = "WRONG_API_KEY"\n'
            f'[backends.c]\nkind = "anthropic"\nmodel = "claude-x"\nbase_url = "{ant.base_url}"\napi_key_env = "ABSENT_API_KEY"\n'
            f'[backends.d]\nkind = "openai-compatible"\nmodel = "m"\nbase_url = "{dead.base_url}"\n',
        )
        code = main(["backends", "check", "--config", config])
    err = capsys.readouterr().err
    assert code == 1
    assert "ABSENT_API_KEY" in err and "sk-wrong-0123456789" not in err
    assert "NO" in err  # reachable/auth/model columns say which check failed


def test_unknown_backend_name_is_a_usage_error(tmp_path: Path) -> None:
    """--backend with a name the config does not have exits 2."""
    config = write_config(tmp_path / "t.toml", '[backends.v]\nkind = "llamacpp"\n')
    assert main(["backends", "check", "--config", config, "--backend", "nope"]) == 2
