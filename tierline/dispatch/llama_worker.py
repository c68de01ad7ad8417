"""The llama.cpp worker: a child process that owns one model and one context.

`LlamaCppBackend` runs it as ``python -m tierline.dispatch.llama_worker SETTINGS_JSON``, the way
ollama runs its runners: llama.cpp is native code, and a crash in it (SIGILL from a build that
uses instructions this CPU lacks, SIGSEGV on a bad model file, an abort on a failed assert, the
OOM killer) must cost the jobs this process held, not the whole run.

The worker decodes up to `parallel` sequences together in one context, as `llama-server
--parallel N` does: each step is one `llama_decode` over a batch holding the next token of every
generating sequence plus prompt chunks of newly admitted ones, each token tagged with its
sequence id. Each sequence has its own sampler chain (grammar, temperature, seed), its own
`max_tokens` and `stop`, and its own share of the KV cache (the context holds `n_ctx` tokens per
sequence), which is cleared when it ends.

Protocol: JSON lines (orjson) on stdin (jobs) and on the original stdout (answers); fd 1 is
pointed at stderr first so that nothing llama.cpp prints can corrupt the channel. When stdin
closes (the parent is done, or died) the worker exits at once.

    parent -> worker  {"op": "job", "id", "messages", "max_tokens", "temperature", "stop",
                       "response_format", "seed"}
    worker -> parent  {"op": "ready", "n_ctx", "parallel", "threads", "system_info"}
                      {"op": "fatal", "error"}            then exit 3 (nothing loaded)
                      {"op": "done", "id", "response", "worker_s"}   response: a Chat
                                          Completions body (choices, usage)
                      {"op": "error", "id", "error"}      that job failed, the worker goes on

llama-cpp-python is imported only here, inside the worker, and only when the worker starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import orjson

from ..jobs import schema_of
from ..schemas import schema_errors

__all__ = ["PORTABLE_CMAKE_ARGS", "build_problem", "json_grammar", "main", "reinstall_command"]

# The build the README and CI install (docs/local.md says why): every x86-64 CPU with AVX2
# (Intel since 2013, AMD since 2015) runs it, and it never contains ggml's AMX kernels.
# LLAVA_BUILD=OFF skips the multimodal library, which tierline never loads.
PORTABLE_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF"
)
DEFAULT_TEMPERATURE = 0.2  # llama-cpp-python's create_chat_completion default, kept as it was


def reinstall_command(cmake_args: str = PORTABLE_CMAKE_ARGS) -> str:
    """The one command that replaces the installed llama.cpp build by a portable one."""
    return (
        f'CMAKE_ARGS="{cmake_args}" pip install --force-reinstall --no-cache-dir --no-deps '
        "llama-cpp-python"
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
    # schema_errors: never hand the converter a remote $ref (it can fetch https:// refs) or a
    # cycle (it recurses until the stack runs out); plain JSON is the fallback for both
    if not schema or schema_errors(schema) is not None:
        return str(llama_grammar.JSON_GBNF)
    try:
        gbnf = str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
    except Exception:  # an unsupported schema feature: any JSON is still better than none
        return str(llama_grammar.JSON_GBNF)
    return gbnf.replace(_LOOSE_CHAR, _JSON_CHAR)


_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'

# ggml's names for the instruction sets a CPU build was compiled with -> /proc/cpuinfo flags.
_CPU_FLAGS = {
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
}


def build_problem(system_info: str, cpu_flags: set[str] | None) -> str | None:
    """Why this llama.cpp build must not run on this CPU, or None.

    `system_info` is llama_print_system_info() ("CPU : AVX2 = 1 | ..."): the instruction sets
    the CPU backend was compiled for. A wheel built with -march=native on another machine and
    reused from pip's cache shows up here before it can die of SIGILL. AMX is refused on every
    host: ggml's AMX kernels run tile instructions without asking the kernel for tile-data
    permission on the worker threads (upstream llama.cpp PR #26954, open), so they fault.
    """
    used = {
        part.split("=")[0].strip()
        for part in system_info.split("|")
        if part.strip().endswith("= 1")
    }
    used = {name.split(":")[-1].strip() for name in used}
    if "AMX_INT8" in used:
        return "it contains ggml's AMX kernels, which crash on AMX CPUs (llama.cpp PR #26954)"
    if cpu_flags is None:
        return None
    missing = sorted(n for n, flag in _CPU_FLAGS.items() if n in used and flag not in cpu_flags)
    if missing:
        return f"it uses {', '.join(missing)}, which this CPU does not have"
    return None


def cpu_flags() -> set[str] | None:
    """This CPU's instruction-set flags (Linux on x86-64), or None where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


@dataclass(slots=True)
class Settings:
    model_path: str
    n_ctx: int = 2048  # per sequence
    parallel: int = 1
    n_threads: int = 1
    n_gpu_layers: int = 0
    n_batch: int = 512
    check_build: bool = True
    kv_unified: bool = True
    flash_attn: bool = True
    # Convert the model to this llama.cpp type first ("Q4_0", "Q8_0"), cached in cache_dir.
    requantize: str | None = None
    cache_dir: str | None = None
    # With `parallel` left to its default, fewer sequences if their KV cache would pass this
    # (a 7B model's 2048 cells take 1 GiB: it keeps one sequence, as before batching).
    kv_budget: int | None = None


@dataclass(slots=True)
class Sequence:
    """One job being decoded in its own slot (= sequence id) of the shared context."""

    job_id: int
    slot: int
    prompt: list[int]
    max_tokens: int
    stops: list[str]
    sampler: Any
    fed: int = 0  # prompt tokens already decoded
    pos: int = 0  # next position in this sequence
    last: int = -1  # the token sampled last, to be decoded next
    out: bytearray = field(default_factory=bytearray)
    n_out: int = 0
    received: float = 0.0  # when the job arrived (perf_counter)
    reused: int = 0  # prompt tokens whose KV came from an earlier prompt

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.prompt)


MIN_SHARED = 8  # shared prompt tokens that make a KV copy from another slot worth it


def _common(a: list[int], b: list[int]) -> int:
    """Length of the common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Engine:
    """The model, one context of `parallel` sequences, and the chat formatter."""

    def __init__(self, settings: Settings, llama_cpp: Any) -> None:
        self.s = settings
        self.ll = llama_cpp
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = settings.n_gpu_layers
        self.model = llama_cpp.llama_model_load_from_file(settings.model_path.encode(), mparams)
        if not self.model:
            raise LoadError(f"llama.cpp cannot load {os.path.basename(settings.model_path)}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        if settings.n_ctx <= 0:
            settings.n_ctx = llama_cpp.llama_model_n_ctx_train(self.model)
        if settings.kv_budget:
            fit = settings.kv_budget // (settings.n_ctx * self.kv_bytes_per_cell())
            settings.parallel = max(1, min(settings.parallel, fit))
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = settings.n_ctx * settings.parallel
        cparams.n_seq_max = settings.parallel
        # kv_unified (the default): one KV stream for all sequences, n_ctx cells per sequence.
        # llama.cpp then decodes any mix of sequences in one ubatch, and a shared prompt
        # prefix is a metadata copy; but a sequence's attention runs over the whole cache,
        # masked, so its rounding, and at temperature 0 sometimes its later tokens, depend on
        # what else is in the batch (docs/local.md). Without it each sequence has its own
        # stream, and answers do not depend on the batch: step() pads the batch so that
        # llama.cpp still decodes it in one graph (it groups only consecutive sequence ids).
        cparams.kv_unified = settings.kv_unified
        cparams.n_batch = cparams.n_ubatch = settings.n_batch
        cparams.n_threads = cparams.n_threads_batch = settings.n_threads
        # Flash attention skips the other sequences' (masked) cells of a unified cache; off,
        # as llama_cpp.Llama sets it, with a stream per sequence: then the numbers are
        # create_chat_completion's, token for token (tests/test_llama_worker.py).
        cparams.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            if settings.flash_attn
            else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise LoadError(f"llama.cpp cannot create a context of {cparams.n_ctx} tokens")
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx) // settings.parallel
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(settings.n_batch, 0, 1)
        self.formatter = chat_formatter(self.metadata(), self.token_text)
        self._piece = ctypes.create_string_buffer(256)
        # The tokens whose KV each slot (= sequence id = KV stream) holds, for place().
        self.cached: list[list[int]] = [[] for _ in range(settings.parallel)]

    # -- model facts -------------------------------------------------------------------

    def kv_bytes_per_cell(self) -> int:
        """Bytes of f16 K and V cache per token cell, all layers."""
        ll, m = self.ll, self.model
        head_dim = ll.llama_model_n_embd(m) // max(1, ll.llama_model_n_head(m))
        return int(2 * 2 * ll.llama_model_n_layer(m) * head_dim * ll.llama_model_n_head_kv(m))

    def metadata(self) -> dict[str, str]:
        ll, out = self.ll, {}
        size = 4096
        buf = ctypes.create_string_buffer(size)
        for i in range(ll.llama_model_meta_count(self.model)):
            parts = []
            for getter in (ll.llama_model_meta_key_by_index, ll.llama_model_meta_val_str_by_index):
                n = getter(self.model, i, buf, size)
                if n >= size:
                    size = n + 1
                    buf = ctypes.create_string_buffer(size)
                    n = getter(self.model, i, buf, size)
                parts.append(buf.value.decode("utf-8", errors="replace"))
            out[parts[0]] = parts[1]
        return out

    def token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return bytes(self.ll.llama_vocab_get_text(self.vocab, token)).decode("utf-8", "replace")

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        raw = text.encode("utf-8")
        n_max = len(raw) + 16
        buf = (self.ll.llama_token * n_max)()
        n = self.ll.llama_tokenize(self.vocab, raw, len(raw), buf, n_max, add_special, True)
        if n < 0:  # the buffer was too small: -n is the size needed
            n_max = -n
            buf = (self.ll.llama_token * n_max)()
            n = self.ll.llama_tokenize(self.vocab, raw, len(raw), buf, n_max, add_special, True)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The token's text as bytes (special tokens render as nothing, as in
        llama-cpp-python's detokenize)."""
        n = self.ll.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False)
        if n < 0:  # -n: the size it needs
            self._piece = ctypes.create_string_buffer(-n)
            n = self.ll.llama_token_to_piece(
                self.vocab, token, self._piece, len(self._piece), 0, False
            )
        return self._piece.raw[:n]

    # -- jobs ------------------------------------------------------------------------------

    def sampler(self, grammar: str | None, temperature: float, seed: int) -> Any:
        """The chain llama-cpp-python builds for create_chat_completion, for one sequence."""
        ll = self.ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if grammar is not None:
            g = ll.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
            if not g:
                ll.llama_sampler_free(chain)
                raise JobFailed("llama.cpp rejected the JSON grammar built for response_format")
            ll.llama_sampler_chain_add(chain, g)
        if temperature <= 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
            return chain
        for s in (
            ll.llama_sampler_init_top_k(40),
            ll.llama_sampler_init_typical(1.0, 1),
            ll.llama_sampler_init_top_p(0.95, 1),
            ll.llama_sampler_init_min_p(0.05, 1),
            ll.llama_sampler_init_temp(temperature),
            ll.llama_sampler_init_dist(seed & 0xFFFFFFFF),
        ):
            ll.llama_sampler_chain_add(chain, s)
        return chain

    def admit(self, job: Mapping[str, Any]) -> Sequence:
        """Format, tokenize and check one job; raise JobFailed when it cannot run. The
        sequence gets its slot from place()."""
        formatted = self.formatter(messages=job["messages"])
        prompt = self.tokenize(formatted.prompt, add_special=not formatted.added_special)
        if len(prompt) >= self.n_ctx:
            # llama-cpp-python's wording, kept: users and tests know it.
            raise JobFailed(
                f"Requested tokens ({len(prompt)}) exceed context window of {self.n_ctx}"
            )
        stops = [s for s in job.get("stop") or [] if s]
        extra = formatted.stop
        stops += [s for s in ([extra] if isinstance(extra, str) else extra or []) if s]
        temperature = job.get("temperature")
        grammar = json_grammar(job.get("response_format"))
        sampler = self.sampler(
            grammar,
            DEFAULT_TEMPERATURE if temperature is None else float(temperature),
            int(job.get("seed") or 0),
        )
        max_tokens = min(int(job["max_tokens"]), self.n_ctx - len(prompt))
        seq = Sequence(int(job["id"]), -1, prompt, max_tokens, stops, sampler)
        seq.received = float(job.get("received", time.perf_counter()))
        return seq

    def place(self, seq: Sequence, free: list[int], active: list[Sequence]) -> bool:
        """Put seq in a free slot, reusing the KV cache of the longest prompt prefix any slot
        holds; False: leave it waiting one step, because a sequence being prefilled now shares
        more of its prompt than any slot holds yet.

        Chat prompts share a long head (SmolLM2's template adds a 25-token system prompt to
        every job): computing it once per worker instead of once per job is a third of the
        work on short jobs. llama-cpp-python's `Llama.__call__` loop reuses its previous
        prompt's prefix the same way. A slot's own cache is trimmed in place; another slot's
        is copied (across KV streams llama.cpp copies the whole stream, n_ctx cells: worth
        it from MIN_SHARED tokens on).
        """
        prompt, limit = seq.prompt, len(seq.prompt) - 1  # the last token must be decoded
        # the lowest of the best free slots: busy slots stay together (see step())
        slot = max(free, key=lambda s: (_common(self.cached[s], prompt), -s))
        own = min(_common(self.cached[slot], prompt), limit)
        source, shared = -1, own
        for other, tokens in enumerate(self.cached):
            n = min(_common(tokens, prompt), limit) if other != slot else 0
            if n > shared:
                source, shared = other, n
        coming = max((_common(a.prompt, prompt) for a in active if a.prefilling), default=0)
        if min(coming, limit) >= max(own, shared) + MIN_SHARED:
            return False
        ll = self.ll
        if source >= 0 and shared >= own + MIN_SHARED:
            if self.s.kv_unified:  # the cells just gain this sequence id
                ll.llama_memory_seq_rm(self.mem, slot, -1, -1)
                ll.llama_memory_seq_cp(self.mem, source, slot, 0, shared)
            else:  # the whole stream's buffer is copied
                ll.llama_memory_seq_cp(self.mem, source, slot, -1, -1)
            self.cached[slot] = self.cached[source][:shared]
        else:
            shared = own
            del self.cached[slot][shared:]
        ll.llama_memory_seq_rm(self.mem, slot, shared, -1)
        seq.slot, seq.fed, seq.pos = slot, shared, shared
        seq.reused = shared
        free.remove(slot)
        return True

    def release(self, seq: Sequence) -> None:
        """The sequence is done; its slot keeps its KV cache for the next prompt to reuse."""
        self.ll.llama_sampler_free(seq.sampler)

    def forget(self) -> None:
        """Drop every slot's cache (after a failed decode its contents are unknown)."""
        self.ll.llama_memory_clear(self.mem, True)
        self.cached = [[] for _ in self.cached]

    def step(self, active: list[Sequence]) -> list[tuple[Sequence, int]]:
        """One llama_decode over every active sequence; returns (sequence, batch index) pairs
        whose logits are ready to sample."""
        b = self.batch
        n = 0
        ready: list[tuple[Sequence, int]] = []
        cached = self.cached

        def put(slot: int, token: int, pos: int, logits: bool) -> None:
            nonlocal n
            b.token[n] = token
            b.pos[n] = pos
            b.n_seq_id[n] = 1
            b.seq_id[n][0] = slot
            b.logits[n] = logits
            n += 1

        def add(seq: Sequence, token: int, logits: bool) -> None:
            if logits:
                ready.append((seq, n))
            put(seq.slot, token, seq.pos, logits)
            cached[seq.slot].append(token)
            seq.pos += 1

        # With a KV stream per sequence, llama.cpp decodes together only sequences of
        # consecutive ids with the same number of tokens (llama_batch_allocr::split_equal):
        # slots 0, 1, 3 would be two graphs. So the first round holds one token of every slot
        # from the lowest busy one to the highest, a free slot in between getting a throwaway
        # token (one row of work, removed after the step) to keep the run unbroken.
        by_slot = {seq.slot: seq for seq in sorted(active, key=lambda q: q.slot)}
        if not self.s.kv_unified:
            # A prompt alone in its graph, as if decoded alone: split across ubatches with
            # other sequences, its attention would be computed in other shapes, with other
            # rounding, and its answer could change.
            first = next((q for q in by_slot.values() if q.prefilling), None)
            if first is not None:
                by_slot = {first.slot: first}
        pads: list[int] = []
        # One stream (kv_unified) takes any mix of sequences in one ubatch: no padding.
        run = by_slot if self.s.kv_unified else range(min(by_slot), max(by_slot) + 1)
        for slot in run:
            seq = by_slot.get(slot)
            if seq is None:
                pads.append(slot)
                put(slot, 0, len(cached[slot]), False)
            elif seq.prefilling:
                seq.fed += 1
                add(seq, seq.prompt[seq.fed - 1], not seq.prefilling)
            else:
                add(seq, seq.last, True)
        for seq in by_slot.values():  # then the rest of the prompts, as much as fits
            while seq.prefilling and n < self.s.n_batch:
                seq.fed += 1
                add(seq, seq.prompt[seq.fed - 1], not seq.prefilling)
        b.n_tokens = n
        rc = self.ll.llama_decode(self.ctx, b)
        for slot in pads:
            self.ll.llama_memory_seq_rm(self.mem, slot, len(cached[slot]), -1)
        if rc != 0:
            raise DecodeFailed(f"llama_decode failed with code {rc}")
        return ready

    def sample(self, seq: Sequence, index: int) -> str | None:
        """Sample seq's next token; return its finish reason when it is done."""
        token = self.ll.llama_sampler_sample(seq.sampler, self.ctx, index)
        if self.ll.llama_vocab_is_eog(self.vocab, token):
            return "stop"
        seq.last = token
        seq.n_out += 1
        seq.out += self.piece(token)
        if seq.stops:
            text = seq.out.decode("utf-8", errors="ignore")
            if any(s in text for s in seq.stops):
                return "stop"
        return "length" if seq.n_out >= seq.max_tokens else None

    def response(self, seq: Sequence, finish_reason: str) -> dict[str, Any]:
        """The answer in the Chat Completions shape (as llama-cpp-python's
        create_chat_completion returns it), which the parent reads with the HTTP backends'
        parser."""
        return {
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text_of(seq)},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                # as OpenAI reports a prompt-cache hit: the prompt tokens not computed again
                "prompt_tokens_details": {"cached_tokens": seq.reused},
                "prompt_tokens": len(seq.prompt),
                "completion_tokens": seq.n_out,
                "total_tokens": len(seq.prompt) + seq.n_out,
            },
        }

    def text_of(self, seq: Sequence) -> str:
        text = seq.out.decode("utf-8", errors="ignore")
        cut = min((i for i in (text.find(s) for s in seq.stops) if i >= 0), default=-1)
        return text[:cut] if cut >= 0 else text


def chat_formatter(metadata: Mapping[str, str], token_text: Any) -> Any:
    """The formatter create_chat_completion would use for this model, chosen the same way as
    llama_cpp.Llama.__init__ does, so prompts are the same text token for token."""
    from llama_cpp import llama_chat_format as cf

    named = {
        "chatml": cf.format_chatml,
        "mistral-instruct": cf.format_mistral_instruct,
        "llama-3": cf.format_llama3,
    }
    guessed = cf.guess_chat_format_from_gguf_metadata(dict(metadata))
    if guessed in named:
        return named[guessed]
    template = metadata.get("tokenizer.chat_template")
    if not template:
        return cf.format_llama2  # llama-cpp-python's fallback
    eos = int(metadata.get("tokenizer.ggml.eos_token_id", -1))
    bos = int(metadata.get("tokenizer.ggml.bos_token_id", -1))
    return cf.Jinja2ChatFormatter(
        template=template,
        eos_token=token_text(eos),
        bos_token=token_text(bos),
        stop_token_ids=[eos],
    )


def requantized(source: str, type_name: str, cache_dir: str, llama_cpp: Any) -> str:
    """The model file `source` converted to llama.cpp's `type_name` ("Q4_0", "Q8_0"): from the
    cache, or made now (llama_model_quantize: well under a second for the embedded model).

    The cache key is the source's content hash, the type and the llama-cpp-python version (a
    new llama.cpp may quantize differently), so an edited or replaced source, or an upgrade,
    never picks up a stale file. The file is written under a temporary name and renamed into
    place, under a lock: workers starting together make it once, and a crash mid-write leaves
    no half file behind.
    """
    digest = _file_sha256(source)
    stem = os.path.basename(source).removesuffix(".gguf")
    name = f"{stem}.{digest[:16]}.{type_name}.llama-cpp-python-{llama_cpp.__version__}.gguf"
    target = os.path.join(cache_dir, name)
    if os.path.isfile(target):
        return target
    os.makedirs(cache_dir, exist_ok=True)
    with open(target + ".lock", "w") as lock:
        with contextlib.suppress(ImportError):  # no fcntl on Windows: at worst done twice
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(target):  # another worker made it while this one waited
            return target
        tmp = os.path.join(cache_dir, f".{name}.{os.getpid()}.tmp")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{type_name}")
        params.allow_requantize = True
        try:
            rc = llama_cpp.llama_model_quantize(source.encode(), tmp.encode(), ctypes.byref(params))
            if rc != 0:
                raise LoadError(f"llama_model_quantize failed with code {rc}")
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return target


def _file_sha256(path: str) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class LoadError(Exception):
    """The model or its context could not be created: nothing will run in this worker."""


class JobFailed(Exception):
    """One job cannot run (too long for the context, a grammar llama.cpp rejects)."""


class DecodeFailed(Exception):
    """llama_decode returned an error for a batch."""


class Channel:
    """JSON lines on the original stdout; fd 1 itself now goes to stderr."""

    def __init__(self) -> None:
        self._out: IO[bytes] = os.fdopen(os.dup(1), "wb")
        os.dup2(2, 1)

    def send(self, **msg: Any) -> None:
        self._out.write(orjson.dumps(msg) + b"\n")
        self._out.flush()


def _reader(inbox: queue.Queue[dict[str, Any] | None]) -> None:
    for line in sys.stdin.buffer:
        if line.strip():
            job = orjson.loads(line)
            job["received"] = time.perf_counter()  # for worker_s in its answer
            inbox.put(job)
    # The parent closed stdin: it is done with this worker, or it died. Nobody will read what
    # is still being decoded, so stop now rather than burn the CPU on it (the main thread may
    # be inside llama_decode; the process holds nothing worth saving).
    os._exit(0)


def serve(engine: Engine, channel: Channel, inbox: queue.Queue[dict[str, Any] | None]) -> None:
    """Admit jobs into free slots, decode all active sequences together, answer as they end."""
    free = list(range(engine.s.parallel))
    active: list[Sequence] = []
    waiting: list[Sequence] = []
    while True:
        try:  # block only when there is nothing to decode
            msg = inbox.get(block=not (active or waiting))
            while msg is not None:
                try:
                    waiting.append(engine.admit(msg))
                except JobFailed as exc:
                    channel.send(op="error", id=msg["id"], error=str(exc))
                msg = inbox.get_nowait()
        except queue.Empty:
            pass
        for seq in list(waiting):  # in arrival order; a deferred one waits one step
            if not free:
                break
            if engine.place(seq, free, active):
                waiting.remove(seq)
                active.append(seq)
        if not active:
            continue
        try:
            ready = engine.step(active)
        except DecodeFailed as exc:
            for seq in active:
                channel.send(op="error", id=seq.job_id, error=str(exc))
                engine.release(seq)
                free.append(seq.slot)
            active = []
            engine.forget()
            continue
        for seq, index in ready:
            reason = engine.sample(seq, index)
            if reason is None:
                continue
            channel.send(
                op="done",
                id=seq.job_id,
                response=engine.response(seq, reason),
                # Time in the worker: the rest of a job's latency is the pipe, JSON, asyncio.
                worker_s=time.perf_counter() - seq.received,
            )
            engine.release(seq)
            active.remove(seq)
            free.append(seq.slot)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    settings = Settings(**orjson.loads(args[0]))
    with contextlib.suppress(Exception):  # a crash must not leave a core file in the user's cwd
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    channel = Channel()
    import logging

    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    try:
        import llama_cpp
    except ImportError as exc:
        channel.send(op="fatal", error=f"llama-cpp-python is not installed ({exc})")
        return 3
    llama_cpp.llama_backend_init()
    info = bytes(llama_cpp.llama_print_system_info()).decode("utf-8", "replace")
    problem = build_problem(info, cpu_flags()) if settings.check_build else None
    if problem:
        channel.send(
            op="fatal",
            error=f"the installed llama.cpp build cannot run on this CPU: {problem}. "
            f"Reinstall it portably: {reinstall_command()}",
        )
        return 3
    note = None
    if settings.requantize and settings.cache_dir:
        try:
            settings.model_path = requantized(
                settings.model_path, settings.requantize, settings.cache_dir, llama_cpp
            )
        except (OSError, LoadError) as exc:  # a read-only cache: the model as given still runs
            note = f"not requantized to {settings.requantize} ({exc}); loaded as given"
    try:
        engine = Engine(settings, llama_cpp)
    except LoadError as exc:
        channel.send(op="fatal", error=str(exc))
        return 3
    channel.send(
        op="ready",
        n_ctx=engine.n_ctx,
        parallel=settings.parallel,
        threads=settings.n_threads,
        system_info=info.strip(),
        model_path=settings.model_path,
        note=note,
    )
    inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
    threading.Thread(target=_reader, args=(inbox,), daemon=True).start()
    serve(engine, channel, inbox)  # returns only by the reader's exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
