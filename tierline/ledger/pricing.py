"""What a call cost, in integer nano-dollars, from provider-reported usage.

Nano-dollars, because a cheap call costs a few micro-dollars with a fraction (a small
gpt-4o-mini call: 11.925 µ$), and rounding each one to whole micro-dollars biases the sums over
millions of same-sized calls. Budgets and forecasts, which only need a bound, stay in
micro-dollars (rounded up).

Where a price comes from, first match wins (docs/costs.md):

1. ``[pricing.models."<model>"]`` in the config, for the model the provider reported (or the
   backend's configured model);
2. ``backends.<name>.price``: per-million-token prices for that backend;
3. ``backends.<name>.gpu_hour_usd`` (llamacpp, openai-compatible): the hardware's hourly price
   times the call's share of the backend's measured busy time (`tierline.ledger.busy`);
4. genai-prices' bundled snapshot, looked up by the backend's pricing key (a neutral fact its
   kind gives, `BackendSettings.pricing_key`): by provider id for the openai and anthropic
   backends, by URL for an openai-compatible server genai-prices knows (Together, OpenRouter,
   ...). Never its network updater: prices are those of the installed version, which the
   ledger records;
5. an in-process backend (llama.cpp) with none of the above: $0 (it runs on this machine);
6. otherwise the price is unknown: ``nanos=None``, flagged loudly, never counted as free.

Batch calls are billed at the provider's batch price (genai-prices' batch variant when it has
one, else ``pricing.batch_discount`` off). Cached input tokens pay the cache-read price, cache
writes the cache-write price, and reasoning tokens are output tokens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from functools import cache, lru_cache
from importlib.metadata import version
from typing import Any, Protocol

from ..config import Config, PriceConfig
from ..errors import ConfigError
from ..jobs import Usage

__all__ = [
    "CallPrice",
    "Pricer",
    "Tariff",
    "genai_prices_version",
    "micros_to_usd",
    "nanos_to_micros",
    "nanos_to_usd",
    "to_micros",
    "to_nanos",
]

MTOK = Decimal(1_000_000)
MICROS_PER_USD = Decimal(1_000_000)
NANOS_PER_USD = Decimal(1_000_000_000)
SECONDS_PER_HOUR = Decimal(3600)
NOT_BILLED = "not billed (no answer)"


def to_micros(usd: Decimal, *, ceiling: bool = False) -> int:
    """USD to integer micro-dollars: half-even (unbiased over many calls), or up for bounds."""
    rounding = ROUND_CEILING if ceiling else ROUND_HALF_EVEN
    return int((usd * MICROS_PER_USD).to_integral_value(rounding=rounding))


def micros_to_usd(micros: int | None) -> float | None:
    return None if micros is None else micros / 1_000_000


def to_nanos(usd: Decimal) -> int:
    """USD to integer nano-dollars, half-even: exact for every per-token price in use."""
    return int((usd * NANOS_PER_USD).to_integral_value(rounding=ROUND_HALF_EVEN))


def nanos_to_usd(nanos: int | None) -> float | None:
    return None if nanos is None else nanos / 1_000_000_000


def nanos_to_micros(nanos: int) -> int:
    """Rounded up: what a budget in micro-dollars must count as spent."""
    return -(-nanos // 1000)


@cache
def genai_prices_version() -> str:
    # From the package metadata: importing genai_prices itself costs ~0.4 s.
    return f"genai-prices {version('genai-prices')}"


@dataclass(frozen=True, slots=True)
class CallPrice:
    """The price of one call: None nanos means unknown, never free."""

    nanos: int | None
    source: str
    version: str | None = None
    batch: bool = False
    baseline_nanos: int | None = None


class Tariff(Protocol):
    """One way of pricing calls on one backend and model."""

    @property
    def source(self) -> str: ...

    @property
    def version(self) -> str | None: ...

    def cost(self, usage: Usage, *, batch: bool, busy_s: float) -> Decimal: ...

    def worst_case(self, input_tokens: int, output_tokens: int, *, seconds: float) -> Decimal: ...


# genai-prices validates and decomposes usage on every call (about 100 us, most of a run's
# per-job CPU); a price is a pure function of the tariff and the counts, and a workload repeats
# counts often (the same output cap, similar prompts), so recent ones are remembered.
@lru_cache(maxsize=4096)
def _genai_cost(
    tariff: GenaiTariff,
    input_tokens: int,
    cache_read_tokens: int,
    cache_write_tokens: int,
    output_tokens: int,
    batch: bool,
) -> Decimal:
    counts = {
        "input_tokens": input_tokens,
        "cache_read_tokens": cache_read_tokens,
        "cache_write_tokens": cache_write_tokens,
        "output_tokens": output_tokens,
    }
    return tariff._calc(counts, batch=batch)


@dataclass(frozen=True, slots=True)
class RateTariff:
    """Fixed per-million-token rates from the config."""

    input: Decimal
    output: Decimal
    cached: Decimal
    cache_write: Decimal
    batch_discount: Decimal
    source: str
    version: str | None

    @classmethod
    def from_config(
        cls, price: PriceConfig, *, batch_discount: Decimal, source: str, version: str
    ) -> RateTariff:
        cached = price.cached_input_per_mtok
        write = price.cache_write_per_mtok
        return cls(
            price.input_per_mtok,
            price.output_per_mtok,
            price.input_per_mtok if cached is None else cached,
            price.input_per_mtok if write is None else write,
            batch_discount,
            source,
            version,
        )

    def cost(self, usage: Usage, *, batch: bool, busy_s: float) -> Decimal:
        del busy_s  # token-priced
        # cached and cache-write tokens are part of input_tokens (tierline.jobs.Usage)
        plain = max(0, usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens)
        usd = (
            plain * self.input
            + usage.cached_tokens * self.cached
            + usage.cache_write_tokens * self.cache_write
            + usage.output_tokens * self.output
        ) / MTOK
        return usd * (1 - self.batch_discount) if batch else usd

    def worst_case(self, input_tokens: int, output_tokens: int, *, seconds: float) -> Decimal:
        del seconds
        dearest_input = max(self.input, self.cached, self.cache_write)
        return (input_tokens * dearest_input + output_tokens * self.output) / MTOK


@dataclass(frozen=True, slots=True)
class GpuHourTariff:
    """A self-hosted model: its hardware's hourly price times the call's busy time."""

    usd_per_hour: Decimal
    source: str
    version: str | None

    def cost(self, usage: Usage, *, batch: bool, busy_s: float) -> Decimal:
        del usage, batch
        return self.usd_per_hour * Decimal(repr(busy_s)) / SECONDS_PER_HOUR

    def worst_case(self, input_tokens: int, output_tokens: int, *, seconds: float) -> Decimal:
        del input_tokens, output_tokens
        return self.usd_per_hour * Decimal(repr(seconds)) / SECONDS_PER_HOUR


@dataclass(frozen=True, slots=True)
class FreeTariff:
    """The in-process model with no hardware price configured: it runs on this machine."""

    source: str = "local (in-process; set gpu_hour_usd to charge for it)"
    version: str | None = None

    def cost(self, usage: Usage, *, batch: bool, busy_s: float) -> Decimal:
        del usage, batch, busy_s
        return Decimal(0)

    def worst_case(self, input_tokens: int, output_tokens: int, *, seconds: float) -> Decimal:
        del input_tokens, output_tokens, seconds
        return Decimal(0)


@dataclass(frozen=True, slots=True)
class GenaiTariff:
    """A model in genai-prices' bundled snapshot (no network: the updater is never started)."""

    model_ref: str
    provider_id: str | None
    provider_api_url: str | None
    has_batch_price: bool
    batch_discount: Decimal
    source: str = "genai-prices"
    version: str | None = None

    @classmethod
    def find(
        cls,
        model_ref: str,
        *,
        provider_id: str | None = None,
        provider_api_url: str | None = None,
        batch_discount: Decimal,
    ) -> GenaiTariff | None:
        """The tariff for a model genai-prices knows, else None."""
        from genai_prices import data_snapshot

        snapshot = data_snapshot.get_snapshot()
        try:
            _, model = snapshot.find_provider_model(model_ref, None, provider_id, provider_api_url)
        except LookupError:
            return None
        has_batch = any(v.when == {"processing": "batch"} for v in model.price_variants or ())
        return cls(
            model_ref,
            provider_id,
            provider_api_url,
            has_batch,
            batch_discount,
            source=f"genai-prices:{model.id}",
            version=genai_prices_version(),
        )

    def _calc(self, usage: Mapping[str, int], *, batch: bool) -> Decimal:
        import genai_prices

        context = {"processing": "batch"} if batch and self.has_batch_price else None
        values = {key: n for key, n in usage.items() if n}
        kwargs: dict[str, Any] = (
            {"provider_id": self.provider_id}
            if self.provider_id
            else {"provider_api_url": self.provider_api_url}
        )
        result = genai_prices.calc_price(
            genai_prices.Usage(**values), self.model_ref, price_context=context, **kwargs
        )
        usd: Decimal = result.total_price
        if batch and not self.has_batch_price:
            usd *= 1 - self.batch_discount
        return usd

    def cost(self, usage: Usage, *, batch: bool, busy_s: float) -> Decimal:
        del busy_s
        return _genai_cost(
            self,
            usage.input_tokens,
            usage.cached_tokens,
            usage.cache_write_tokens,
            usage.output_tokens,  # reasoning tokens included
            batch,
        )

    def worst_case(self, input_tokens: int, output_tokens: int, *, seconds: float) -> Decimal:
        del seconds
        # Cache writes can cost more than plain input (Anthropic: 1.25x), so bound both ways.
        plain = {"input_tokens": input_tokens, "output_tokens": output_tokens}
        written = {**plain, "cache_write_tokens": input_tokens}
        return max(self._calc(plain, batch=False), self._calc(written, batch=False))


class Pricer:
    """Prices calls for one config; resolves and caches a tariff per (backend, model)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._tariffs: dict[tuple[str, str], Tariff | None] = {}
        self._baseline: Tariff | None = None
        # (backend, model) -> calls priced as unknown, for the run summary's warning
        self.unknown: dict[tuple[str, str], int] = {}

    @property
    def baseline(self) -> Tariff:
        """The baseline model's tariff; a ConfigError when nobody knows its price."""
        if self._baseline is None:
            b = self.config.baseline
            tariff = self._override(b.model) or GenaiTariff.find(
                b.model, provider_id=b.provider, batch_discount=self.config.pricing.batch_discount
            )
            if tariff is None:
                raise ConfigError(
                    f"{self.config.origin}: baseline.model: no price known for {b.model!r} "
                    f'({genai_prices_version()}); add [pricing.models."{b.model}"]'
                )
            self._baseline = tariff
        return self._baseline

    def _override(self, model: str) -> Tariff | None:
        price = self.config.pricing.models.get(model)
        if price is None:
            return None
        return RateTariff.from_config(
            price,
            batch_discount=self.config.pricing.batch_discount,
            source=f"config:pricing.models.{model}",
            version=self.config.origin,
        )

    def tariff(self, backend: str, model: str | None = None) -> Tariff | None:
        """How calls to `backend` answered by `model` are priced; None when unknown."""
        bc = self.config.backends[backend]
        model = model or _configured_model(bc)
        key = (backend, model)
        if key not in self._tariffs:
            self._tariffs[key] = self._resolve(backend, bc, model)
        return self._tariffs[key]

    def _resolve(self, name: str, bc: Any, model: str) -> Tariff | None:
        discount = self.config.pricing.batch_discount
        configured = _configured_model(bc)
        override = self._override(model) or self._override(configured)
        if override is not None:
            return override
        if bc.price is not None:
            return RateTariff.from_config(
                bc.price,
                batch_discount=discount,
                source=f"config:backends.{name}.price",
                version=self.config.origin,
            )
        gpu_hour = getattr(bc, "gpu_hour_usd", None)
        if gpu_hour is not None:
            return GpuHourTariff(gpu_hour, f"gpu-hour:backends.{name}", self.config.origin)
        key = bc.pricing_key
        if key.free:
            return FreeTariff()
        if key.provider_id is None and key.api_url is None:
            return None
        # A hosted API genai-prices knows by provider or URL; a self-hosted server is unknown
        # until the config prices it.
        where = {"provider_id": key.provider_id, "provider_api_url": key.api_url}
        return GenaiTariff.find(model, batch_discount=discount, **where) or GenaiTariff.find(
            configured, batch_discount=discount, **where
        )

    def price(
        self,
        backend: str,
        model: str,
        usage: Usage | None,
        *,
        batch: bool = False,
        busy_s: float = 0.0,
    ) -> CallPrice:
        """Price one call from the usage the provider reported (None: it never answered)."""
        tariff = self.tariff(backend, model)
        if usage is None and not isinstance(tariff, GpuHourTariff):
            return CallPrice(0, NOT_BILLED)
        usage = usage or Usage()
        baseline = self.baseline.cost(usage, batch=batch, busy_s=0.0)
        baseline_nanos = to_nanos(baseline)
        if tariff is None:
            self.unknown[(backend, model)] = self.unknown.get((backend, model), 0) + 1
            return CallPrice(None, "unknown", None, batch, baseline_nanos)
        usd = tariff.cost(usage, batch=batch, busy_s=busy_s)
        return CallPrice(to_nanos(usd), tariff.source, tariff.version, batch, baseline_nanos)

    def worst_case_micros(self, backend: str, input_tokens: int, output_tokens: int) -> int | None:
        """An upper bound on one call's cost (None when the price is unknown)."""
        tariff = self.tariff(backend)
        if tariff is None:
            return None
        bc = self.config.backends[backend]
        # A busy-time price is bounded by how long the call may run: every attempt to timeout.
        seconds = bc.timeout_s * bc.max_attempts
        # `n` / `best_of` in extra_body: every generated sequence is billed (tierline/extras.py)
        copies = int(getattr(bc, "output_copies", 1))
        usd = tariff.worst_case(input_tokens, output_tokens * copies, seconds=seconds)
        return to_micros(usd, ceiling=True)

    def unknown_warnings(self) -> list[str]:
        return [
            f"NO KNOWN PRICE for model {model!r} on backend {backend!r} ({n} call(s)): cost "
            f'recorded as NULL; set [pricing.models."{model}"] or backends.{backend}.price'
            + (" / gpu_hour_usd" if _self_hosted(self.config.backends[backend]) else "")
            for (backend, model), n in sorted(self.unknown.items())
        ]


def _configured_model(bc: Any) -> str:
    return str(bc.display_model)


def _self_hosted(bc: Any) -> bool:
    """Whether the backend can be priced by its hardware's time (it has `gpu_hour_usd`)."""
    return "gpu_hour_usd" in type(bc).model_fields
