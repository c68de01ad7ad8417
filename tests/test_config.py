"""Config: found in the documented order, validated, errors name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierline.config import load_config
from tierline.errors import ConfigError

GOOD = """
[backends.local]
kind = "llamacpp"

[backends.gpu]
kind = "openai-compatible"
base_url = "http://127.0.0.1:8000/v1"
model = "qwen"

[routes]
1 = ["local"]
2 = ["gpu", "local"]
3 = "gpu"
"""


def test_no_file_means_embedded_default() -> None:
    """With no config anywhere, every tier routes to the local embedded model."""
    cfg = load_config()
    assert cfg.is_default
    assert {t: cfg.routes[t] for t in (1, 2, 3)} == {1: ["local"], 2: ["local"], 3: ["local"]}
    assert cfg.backends["local"].kind == "llamacpp"


def test_default_tiering_is_the_embedded_default_s_unvalidated() -> None:
    """`tierline classify` with no config file takes [tiering] from `default_tiering()`, built
    without validating anything (no pydantic validator, no plugin discovery): it must be the
    embedded default's, field for field, and loading it must build no validator."""
    import subprocess
    import sys

    from tierline.config import default_tiering, embedded_default

    assert default_tiering() == embedded_default().tiering
    assert default_tiering().judge == embedded_default().tiering.judge
    code = (
        "import sys\n"
        "from tierline.config import default_tiering\n"
        "from tierline.tiering.pipeline import Tierer\n"
        "Tierer.from_config(default_tiering())\n"
        "print('pydantic.plugin._loader' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_local_file_then_env_then_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """./tierline.toml is used, $TIERLINE_CONFIG beats it, --config beats both."""
    (tmp_path / "tierline.toml").write_text(GOOD, encoding="utf-8")
    assert load_config().origin == "tierline.toml"
    other = tmp_path / "other.toml"
    other.write_text(GOOD, encoding="utf-8")
    monkeypatch.setenv("TIERLINE_CONFIG", str(other))
    assert load_config().origin == str(other)
    third = tmp_path / "third.toml"
    third.write_text(GOOD, encoding="utf-8")
    cfg = load_config(str(third))
    assert cfg.origin == str(third)
    assert cfg.routes[2] == ["gpu", "local"] and cfg.routes[3] == ["gpu"]
    assert cfg.backends["gpu"].base_urls == ["http://127.0.0.1:8000/v1"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[routes\n", "invalid TOML"),
        (
            GOOD.replace('kind = "llamacpp"', 'kind = "llamacpp"\nmax_concurency = 3'),
            "backends.local.max_concurency: Extra inputs are not permitted",
        ),
        (GOOD.replace('kind = "openai-compatible"', 'kind = "ollama"'), "backends.gpu"),
        (GOOD.replace('3 = "gpu"', '3 = ["cloud"]'), "routes.3: unknown backend 'cloud'"),
        (GOOD.replace('3 = "gpu"', ""), "tier 3 has no route"),
        (GOOD.replace('3 = "gpu"', '3 = "gpu"\n4 = "gpu"'), "routes.4: tiers are 1, 2 and 3"),
        (GOOD + '\n[tiering]\nrules = [{tier = 1, pattern = "("}]\n', "tiering.rules.0.pattern"),
        (GOOD + "\n[defaults]\nmax_tokens = 0\n", "defaults.max_tokens"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    """Every invalid config is refused with the file name and the offending key."""
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """An explicit --config that does not exist is an error, not a silent default."""
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.toml"))
