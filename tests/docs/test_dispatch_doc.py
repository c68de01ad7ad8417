"""docs/dispatch.md's defaults are the code's: its limits table and the replica intervals are
read from the page and compared with the config models and constants they describe."""

from __future__ import annotations

import re
from pathlib import Path

from tierline import config as cfg
from tierline.dispatch import retry, sdk

DOC = (Path(__file__).resolve().parents[2] / "docs" / "dispatch.md").read_text(encoding="utf-8")
KINDS = {
    "llamacpp": cfg.LlamaCppBackendConfig,
    "openai-compatible": cfg.OpenAICompatibleBackendConfig,
    "openai": cfg.OpenAIBackendConfig,
    "anthropic": cfg.AnthropicBackendConfig,
}


def limits_table() -> dict[str, str]:
    """{key cell: default cell} of the "Limits (per backend)" table."""
    section = DOC.split("## Limits (per backend)", 1)[1].split("\n\n", 2)[1]
    rows = [line.split("|")[1:3] for line in section.splitlines()[2:]]
    return {key.strip(): default.strip() for key, default in rows}


def default(model: type[cfg.BaseModel], field: str) -> object:
    return model.model_fields[field].default


def test_limits_table_matches_the_config_defaults() -> None:
    """Each default in the table is the field's default for every backend kind."""
    table = limits_table()
    llama = KINDS["llamacpp"](kind="llamacpp", workers=3, parallel=5)
    assert llama.max_concurrency == 3 * 5  # "0", the default, means workers x parallel
    assert default(KINDS["llamacpp"], "max_concurrency") == 0
    assert table["`max_concurrency`"] == (
        f"{default(cfg.BackendSettings, 'max_concurrency')} (llamacpp "
        f"`workers` × `parallel`, openai-compatible "
        f"{default(KINDS['openai-compatible'], 'max_concurrency')}, openai/anthropic "
        f"{default(KINDS['openai'], 'max_concurrency')})"
    )
    assert default(KINDS["openai"], "max_concurrency") == default(
        KINDS["anthropic"], "max_concurrency"
    )
    for key in ("rpm", "tpm"):
        assert table[f"`{key}`"] == "none"
        assert {default(m, key) for m in KINDS.values()} == {None}
    timeout = default(cfg.BackendSettings, "timeout_s")
    assert table["`timeout_s`"] == f"{timeout:g}"
    assert f"per request (connect at most {sdk.CONNECT_TIMEOUT_S:g} s)" in DOC
    assert table["`max_attempts`"] == str(default(cfg.BackendSettings, "max_attempts"))
    failures, reset = (
        default(cfg.BackendSettings, k) for k in ("circuit_failures", "circuit_reset_s")
    )
    assert table["`circuit_failures`, `circuit_reset_s`"] == f"{failures}, {reset:g}"
    for model in KINDS.values():
        for key in ("timeout_s", "max_attempts", "circuit_failures", "circuit_reset_s"):
            assert default(model, key) == default(cfg.BackendSettings, key), (model, key)


def test_replica_intervals_and_retry_numbers() -> None:
    """The health and metrics intervals, and the retry layer's numbers, as the page says them."""
    compat = KINDS["openai-compatible"]
    health = default(compat, "health_interval_s")
    metrics = default(compat, "metrics_interval_s")
    assert f"re-probed every `health_interval_s`\n  ({health:g} s)" in DOC
    assert f"`/metrics` is read every `metrics_interval_s` ({metrics:g} s)" in DOC
    assert (
        f"Otherwise {retry.INITIAL_RETRY_DELAY_S:g} s doubling to at most "
        f"{retry.MAX_RETRY_DELAY_S:g} s, minus up to 25 % jitter" in DOC
    )
    assert f"when 0 < it ≤ {retry.MAX_RETRY_AFTER_S:g} s" in DOC
    assert re.search(r"at most `2 × Σ max_concurrency` \(≤ 1024\)", DOC)
