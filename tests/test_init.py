"""`tierline init`: every starter config it writes is one tierline accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierline.cli import main
from tierline.config import load_config

COMBOS = [
    ([], {1: ["local"], 2: ["local"], 3: ["local"]}),
    (["--anthropic"], {1: ["local"], 2: ["claude"], 3: ["claude"]}),
    (
        ["--vllm", "http://g1:8000/v1", "--vllm", "http://g2:8000/v1", "--anthropic"],
        {1: ["local"], 2: ["vllm", "claude"], 3: ["claude", "vllm"]},
    ),
    (
        ["--no-local", "--llama-server", "http://127.0.0.1:8080/v1", "--openai"],
        {1: ["llama_server"], 2: ["llama_server", "openai"], 3: ["openai", "llama_server"]},
    ),
]


@pytest.mark.parametrize(("flags", "routes"), COMBOS)
def test_starter_configs_load(
    tmp_path: Path, flags: list[str], routes: dict[int, list[str]]
) -> None:
    """The written file validates and routes each tier as documented."""
    path = tmp_path / "t.toml"
    assert main(["init", *flags, "-o", str(path)]) == 0
    cfg = load_config(str(path))
    assert {t: cfg.routes[t] for t in (1, 2, 3)} == routes  # type: ignore[index]


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An existing config is kept unless --force is given."""
    path = tmp_path / "tierline.toml"
    path.write_text("# mine\n", encoding="utf-8")
    assert main(["init", "-o", str(path)]) == 2
    assert path.read_text(encoding="utf-8") == "# mine\n" and "--force" in capsys.readouterr().err
    assert main(["init", "-o", str(path), "--force", "--anthropic"]) == 0
    assert "[backends.claude]" in path.read_text(encoding="utf-8")


def test_init_needs_a_backend(capsys: pytest.CaptureFixture[str]) -> None:
    """Turning every backend off is a usage error, not an empty config."""
    assert main(["init", "--no-local", "-o", "-"]) == 2
    assert "at least one backend" in capsys.readouterr().err
