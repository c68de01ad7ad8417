"""Price arithmetic against hand-computed figures."""

from __future__ import annotations

from decimal import Decimal

import pytest

from tierline.errors import ConfigError
from tierline.jobs import Usage
from tierline.ledger.pricing import NOT_BILLED, Pricer, to_micros, to_nanos

from .conftest import make_config

# $/Mtok: input 2, output 8, cache read 0.5, cache write 2.5
PRICED = {
    "kind": "openai",
    "model": "my-finetune",
    "price": {
        "input_per_mtok": 2,
        "output_per_mtok": 8,
        "cached_input_per_mtok": 0.5,
        "cache_write_per_mtok": 2.5,
    },
}


def test_cached_tokens_pay_the_cache_read_price() -> None:
    """1,000 input of which 400 cached, 100 output: 600*2 + 400*0.5 + 100*8 = 2,200 micro-$."""
    pricer = Pricer(make_config({"api": PRICED}))
    price = pricer.price(
        "api", "my-finetune", Usage(input_tokens=1000, output_tokens=100, cached_tokens=400)
    )
    assert price.nanos == 2_200_000
    assert price.source == "config:backends.api.price"
    assert price.version == "test.toml"


def test_batch_calls_get_the_discount() -> None:
    """A batch call costs half: (1000*2 + 100*8) / 2 = 1,400 micro-$; it is flagged batch."""
    pricer = Pricer(make_config({"api": PRICED}))
    usage = Usage(input_tokens=1000, output_tokens=100)
    assert pricer.price("api", "my-finetune", usage).nanos == 2_800_000
    batch = pricer.price("api", "my-finetune", usage, batch=True)
    assert (batch.nanos, batch.batch) == (1_400_000, True)


def test_reasoning_tokens_are_billed_as_output() -> None:
    """Reasoning tokens are part of output_tokens: 500 output (300 reasoning) = 500*8 = 4,000."""
    pricer = Pricer(make_config({"api": PRICED}))
    price = pricer.price("api", "my-finetune", Usage(output_tokens=500, reasoning_tokens=300))
    assert price.nanos == 4_000_000


def test_anthropic_cache_writes_and_reads_from_genai_prices() -> None:
    """claude-sonnet-4-5 ($3 in, $15 out, $0.30 cache read, $3.75 cache write per Mtok in
    genai-prices 0.2.3): 1,000 prompt tokens = 700 plain + 200 read + 100 written, 500 out
    = 2,100 + 60 + 375 + 7,500 = 10,035 micro-$."""
    pricer = Pricer(make_config({"claude": {"kind": "anthropic", "model": "claude-sonnet-4-5"}}))
    usage = Usage(input_tokens=1000, output_tokens=500, cached_tokens=200, cache_write_tokens=100)
    price = pricer.price("claude", "claude-sonnet-4-5", usage)
    assert price.nanos == 10_035_000
    assert price.source == "genai-prices:claude-sonnet-4-5"
    assert price.version is not None and price.version.startswith("genai-prices ")
    # docs/costs.md's worked example goes on: through Message Batches exactly half, 5,017.5
    # micro-$, and the claude-opus-4-6 baseline ($5 / $0.50 / $6.25 / $25) is
    # 3,500 + 100 + 625 + 12,500 = 16,725 micro-$.
    assert pricer.price("claude", "claude-sonnet-4-5", usage, batch=True).nanos == 5_017_500
    assert price.baseline_nanos == 16_725_000


def test_genai_prices_batch_variant_halves_the_bill() -> None:
    """gpt-4o-mini through the Batch API: half of $0.15 / $0.60 per Mtok."""
    pricer = Pricer(make_config({"gpt": {"kind": "openai", "model": "gpt-4o-mini"}}))
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert pricer.price("gpt", "gpt-4o-mini-2024-07-18", usage).nanos == 750_000_000
    assert pricer.price("gpt", "gpt-4o-mini", usage, batch=True).nanos == 375_000_000


def test_baseline_prices_the_same_usage() -> None:
    """Each call records the baseline (default claude-opus-4-6: $5 / $25 per Mtok) cost of the
    same usage: 1,000 in + 100 out = 5,000 + 2,500 = 7,500 micro-$."""
    pricer = Pricer(make_config({"api": PRICED}))
    price = pricer.price("api", "my-finetune", Usage(input_tokens=1000, output_tokens=100))
    assert price.baseline_nanos == 7_500_000


def test_model_override_beats_backend_price() -> None:
    """[pricing.models."<model>"] wins over backends.<name>.price and over genai-prices."""
    config = make_config(
        {"api": PRICED},
        pricing={"models": {"my-finetune": {"input_per_mtok": 1, "output_per_mtok": 1}}},
    )
    price = Pricer(config).price("api", "my-finetune", Usage(input_tokens=1000, output_tokens=1000))
    assert (price.nanos, price.source) == (2_000_000, "config:pricing.models.my-finetune")


def test_unknown_price_is_none_and_flagged() -> None:
    """A self-hosted server with no price is unknown (None), never free, and warned about."""
    pricer = Pricer(
        make_config(
            {
                "gpu": {
                    "kind": "openai-compatible",
                    "model": "Qwen/Qwen2.5-7B",
                    "base_url": "http://gpu:8000/v1",
                }
            }
        )
    )
    price = pricer.price("gpu", "Qwen/Qwen2.5-7B", Usage(input_tokens=10, output_tokens=10))
    assert price.nanos is None
    assert price.source == "unknown"
    assert "NO KNOWN PRICE" in pricer.unknown_warnings()[0]
    assert pricer.worst_case_micros("gpu", 10, 10) is None


def test_gpu_hour_prices_busy_time() -> None:
    """gpu_hour_usd = 3.60 and a 2.5 s share of busy time: 3.60 * 2.5 / 3600 = 2,500 micro-$."""
    pricer = Pricer(
        make_config(
            {
                "gpu": {
                    "kind": "openai-compatible",
                    "model": "m",
                    "base_url": "http://gpu/v1",
                    "gpu_hour_usd": 3.6,
                }
            }
        )
    )
    price = pricer.price("gpu", "m", Usage(input_tokens=10_000, output_tokens=10_000), busy_s=2.5)
    assert price.nanos == 2_500_000
    failed = pricer.price("gpu", "m", None, busy_s=1.0)  # a failed call still kept the GPU busy
    assert failed.nanos == 1_000_000


def test_local_in_process_model_without_price_is_free_and_says_so() -> None:
    """The in-process llama.cpp model with no gpu_hour_usd costs $0, with its source named."""
    pricer = Pricer(make_config({"local": {"kind": "llamacpp"}}))
    price = pricer.price("local", "SmolLM2", Usage(input_tokens=100, output_tokens=100))
    assert price.nanos == 0
    assert price.source.startswith("local")


def test_a_call_that_never_answered_is_not_billed() -> None:
    """No usage reported (the call failed) on a token-priced backend: 0, 'not billed'."""
    pricer = Pricer(make_config({"api": PRICED}))
    assert pricer.price("api", "my-finetune", None).source == NOT_BILLED


def test_worst_case_uses_the_dearest_input_price() -> None:
    """Worst case of 1,000 prompt + 100 answer tokens: 1000*2.5 (cache write) + 100*8 = 3,300."""
    pricer = Pricer(make_config({"api": PRICED}))
    assert pricer.worst_case_micros("api", 1000, 100) == 3_300


def test_unpriceable_baseline_is_a_config_error() -> None:
    """A baseline model nobody has a price for is refused up front, naming the fix."""
    pricer = Pricer(
        make_config({"api": PRICED}, baseline={"model": "no-such-model", "provider": None})
    )
    with pytest.raises(ConfigError, match=r"pricing\.models"):
        pricer.baseline  # noqa: B018


def test_micros_round_half_even_and_bounds_round_up() -> None:
    """Costs round half-even (unbiased over many calls); worst-case bounds round up."""
    assert to_micros(Decimal("0.0000025")) == 2
    assert to_micros(Decimal("0.0000035")) == 4
    assert to_micros(Decimal("0.0000020001"), ceiling=True) == 3


def test_cheap_calls_keep_their_fraction_of_a_micro_dollar() -> None:
    """Issue 13: 200 small gpt-4o-mini calls of 11.925 micro-$ each (28 in of which 1 cached,
    13 out at $0.15 / $0.075 / $0.60 per Mtok: 4.05 + 0.075 + 7.8) sum to exactly 2,385
    micro-$, not 200 x 12 = 2,400."""
    pricer = Pricer(make_config({"gpt": {"kind": "openai", "model": "gpt-4o-mini"}}))
    price = pricer.price(
        "gpt", "gpt-4o-mini", Usage(input_tokens=28, output_tokens=13, cached_tokens=1)
    )
    assert price.nanos == 11_925
    assert sum(price.nanos for _ in range(200)) == 2_385_000


def test_nanos_round_half_even() -> None:
    assert to_nanos(Decimal("0.0000000025")) == 2
    assert to_nanos(Decimal("0.0000000035")) == 4
