"""The local llama.cpp backend: llama-cpp-python in worker processes (docs/local.md).

llama.cpp is native code: a build with instructions this CPU lacks dies of SIGILL, a bad model
file can segfault, a failed assert aborts, the OOM killer sends SIGKILL. Inside the tierline
process any of these would end the run with no result lines, so the model runs in child
processes (`llama_worker.py`), the way ollama runs its runners. When a worker dies, every job it
held fails with an error naming the signal and the likely fix (as BackendUnavailable, so the
route's next backend takes the job), the worker is restarted for later jobs up to
`max_restarts` times, and the run goes on.

Each worker decodes `parallel` sequences together in one context; `workers` such processes
share the backend's jobs (least in flight first). llama-cpp-python is never imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from ..config import LlamaCppBackendConfig
from ..embedded import EMBEDDED_MODEL_FILE, default_model_path
from ..errors import BackendError, BackendUnavailable
from .base import BaseBackend, Completion, Request
from .llama_worker import PORTABLE_CMAKE_ARGS, json_grammar, reinstall_command
from .openai_chat import parse_chat_completion
from .probe import CheckResult

__all__ = [
    "EMBEDDED_MODEL_FILE",
    "PORTABLE_CMAKE_ARGS",
    "LlamaCppBackend",
    "crash_message",
    "default_model_path",
    "json_grammar",
]

# What `requantize = "auto"` converts the embedded model to (docs/local.md has the measurements):
# ggml has no matrix-matrix kernel for Q4_1 on x86, so batched decoding of the shipped file
# saves little; this type has one.
EMBEDDED_REQUANTIZE = "Q8_0"
LINE_LIMIT = 64 * 1024 * 1024  # one answer line from a worker (a long text, JSON-escaped)
STDERR_TAIL = 20  # lines of a worker's stderr kept for the message when it dies


def check_gguf(path: Path) -> None:
    """Refuse a file llama.cpp cannot load, before a worker tries (and maybe crashes)."""
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        raise BackendUnavailable(f"model file not found: {path}") from None
    except OSError as exc:
        raise BackendUnavailable(f"cannot read model file {path}: {exc.strerror}") from None
    if magic != b"GGUF":
        raise BackendUnavailable(
            f"{path} is not a GGUF model file (it starts with {magic!r}, not b'GGUF'); "
            "llama.cpp loads only GGUF: convert the model with llama.cpp's convert_hf_to_gguf.py "
            "or download its .gguf release"
        )


def crash_message(returncode: int, stderr_tail: str = "") -> str:
    """What a dead worker's exit status means, and what to do about it."""
    last = stderr_tail.strip().splitlines()[-1:] if stderr_tail.strip() else []
    said = f" (its last words: {last[0][:300]!r})" if last else ""
    if returncode >= 0:
        return f"the llama.cpp worker exited with code {returncode}{said}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    if name == "SIGILL":
        return (
            "llama.cpp crashed with SIGILL: its build uses CPU instructions this host cannot "
            f"run; reinstall it portably: {reinstall_command()}"
        )
    if name in ("SIGSEGV", "SIGBUS"):
        return (
            f"llama.cpp crashed with {name} (a memory fault){said}: a damaged or unsupported "
            "model file, or a broken llama-cpp-python build; `tierline backends check` loads "
            f"the model alone, and {reinstall_command()} rebuilds llama.cpp"
        )
    if name == "SIGABRT":
        return f"llama.cpp aborted (SIGABRT){said}: an internal check failed"
    if name == "SIGKILL":
        return (
            "the llama.cpp worker was killed (SIGKILL), most likely by the kernel's "
            "out-of-memory killer: lower `parallel`, `n_ctx` or `workers`, or use a smaller model"
        )
    return f"the llama.cpp worker died of {name}{said}"


KV_BUDGET = 512 * 1024 * 1024  # per worker, when `parallel` is left to its default


@dataclass(frozen=True, slots=True)
class _Settings:
    """What a worker is started with (llama_worker.Settings, as JSON on its command line)."""

    model_path: str
    n_ctx: int
    parallel: int
    n_threads: int
    n_gpu_layers: int
    kv_budget: int | None = None
    requantize: str | None = None
    cache_dir: str | None = None
    kv_unified: bool = True
    flash_attn: bool = True


def cache_dir() -> Path:
    """Where requantized models are kept: the platform's per-user cache directory, never the
    installed package (site-packages may be read-only, shared, or wiped by a reinstall)."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "tierline" / "models"
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "tierline" / "cache" / "models"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tierline" / "models"


def _worker_env() -> dict[str, str]:
    """The worker's environment. OpenMP threads that spin while waiting for work take the cores
    from everything else on a busy machine, and a descheduled spinner stalls ggml's barriers:
    on 2 shared cores, 2 spinning threads generated an order of magnitude fewer tokens/s than
    passive ones (docs/local.md). A value the user set wins."""
    return {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


class WorkerDied(Exception):
    """A worker process ended; the message says how and what to do."""


class Worker:
    """One worker process and the jobs it holds."""

    def __init__(self, label: str, settings: _Settings) -> None:
        self.label = label
        self.settings = settings
        self.proc: asyncio.subprocess.Process | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.info: dict[str, Any] = {}
        self.death: str | None = None  # set when the process ended
        self.killed_for: str | None = None  # why tierline killed it (a timeout), if it did
        self.eof = False  # its answers' pipe closed
        self._stderr: deque[str] = deque(maxlen=STDERR_TAIL)
        self._tasks: list[asyncio.Task[None]] = []
        self._stderr_task: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.death is None and not self.eof

    async def start(self) -> None:
        """Spawn the worker and wait until its model is loaded (or it fails to)."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tierline.dispatch.llama_worker",
            orjson.dumps(asdict(self.settings)).decode(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
            start_new_session=True,  # a Ctrl-C in the terminal is the parent's to handle
            env=_worker_env(),
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._stderr_task = asyncio.create_task(self._drain_stderr(self.proc.stderr))
        self._tasks.append(self._stderr_task)
        first = await self.proc.stdout.readline()
        msg = orjson.loads(first) if first.strip() else None
        if msg is None or msg.get("op") != "ready":
            await self._reap()
            if msg is not None and msg.get("op") == "fatal":
                raise BackendUnavailable(f"{self.label}: {msg['error']}")
            raise WorkerDied(f"{self.label}: while loading the model, {self.death}")
        self.info = msg
        self._tasks.append(asyncio.create_task(self._read(self.proc.stdout)))

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            self._stderr.append(line.decode("utf-8", "replace").rstrip())

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for line in stream:
            try:
                msg = orjson.loads(line)
            except orjson.JSONDecodeError:  # not the protocol: keep it for the death message
                self._stderr.append(line.decode("utf-8", "replace").rstrip())
                continue
            fut = self.pending.pop(msg.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        self.eof = True  # no new jobs from here on: it is dead or dying
        await self._reap()
        error = WorkerDied(f"{self.label}: {self.death}")
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(error)
        self.pending.clear()

    async def _reap(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        if self._stderr_task is not None:  # its last lines say why (a GGML_ASSERT, ...)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._stderr_task), 1.0)
        self.death = self.killed_for or crash_message(code, "\n".join(self._stderr))

    def kill(self, reason: str) -> None:
        """Kill a hung worker (SIGKILL ends a stopped process too); `reason` becomes the error
        of every job it held, instead of the SIGKILL's usual out-of-memory guess."""
        if self.proc is not None and self.proc.returncode is None and self.killed_for is None:
            self.killed_for = reason
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def submit(self, job: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        """Send one job; its answer, or WorkerDied if the process ends first or does not answer
        within timeout_s (then it is killed: a hung worker must not hang the run)."""
        if not self.alive or self.proc is None or self.proc.stdin is None:
            raise WorkerDied(f"{self.label}: {self.death or 'it is stopping'}")
        job_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[job_id] = fut
        try:
            self.proc.stdin.write(orjson.dumps({**job, "op": "job", "id": job_id}) + b"\n")
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died; _read fails the future with the reason
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except asyncio.TimeoutError:
            # A stopped (SIGSTOP), deadlocked or hopelessly slow worker: whatever it still holds
            # would wait forever. Killing it fails them all with this reason (through _read) and
            # the next job restarts it, within max_restarts.
            self.kill(
                f"the llama.cpp worker did not answer a job within timeout_s = {timeout_s:g} s "
                "(hung, or too slow for the job's max_tokens); it was killed"
            )
            return await fut

    async def stop(self, grace_s: float = 5.0) -> None:
        """Close its stdin (it exits at once, dropping unfinished jobs), kill it if it lingers."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            if proc.stdin is not None:
                with contextlib.suppress(Exception):
                    proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class LlamaCppBackend(BaseBackend):
    """A GGUF model served by `workers` worker processes of `parallel` sequences each."""

    def __init__(self, name: str, config: LlamaCppBackendConfig) -> None:
        self.name = name
        self.config = config
        self._path = Path(config.model_path) if config.model_path else None
        self.model = config.model_name or (
            self._path.stem if self._path else EMBEDDED_MODEL_FILE.removesuffix(".gguf")
        )
        self.requantize = _requantize_to(config)
        if self.requantize and not config.model_name:  # say what answers: not the file as is
            self.model += f"-as-{self.requantize}"
        self.n_ctx = config.n_ctx
        self.parallel = config.sequences
        self.workers: list[Worker | None] = [None] * config.processes
        self.restarts = 0  # restarts after crashes, across all workers
        self._fatal: BackendUnavailable | None = None  # a load failure: every job gets it
        self._starting: dict[int, asyncio.Task[Worker]] = {}

    def _settings(self, parallel: int) -> _Settings:
        path = self._path or default_model_path()
        check_gguf(path)
        threads = self.config.n_threads or max(1, (os.cpu_count() or 1) // self.config.processes)
        budget = None if self.config.parallel else KV_BUDGET
        return _Settings(
            str(path),
            self.config.n_ctx,
            parallel,
            threads,
            self.config.n_gpu_layers,
            budget,
            self.requantize,
            str(cache_dir()) if self.requantize else None,
            self.config.kv_unified,
            self.config.kv_unified,  # flash attention with the unified cache only
        )

    async def _spawn(self, slot: int) -> Worker:
        worker = Worker(f"{self.name}: worker {slot + 1}", self._settings(self.parallel))
        try:
            await worker.start()
        except BackendUnavailable as exc:  # the model cannot load: no restart will help
            self._fatal = exc
            raise
        except WorkerDied as exc:
            self.workers[slot] = worker  # died while loading: a crash like any other
            raise BackendUnavailable(str(exc)) from None
        finally:
            self._starting.pop(slot, None)
        self.n_ctx = int(worker.info.get("n_ctx", self.n_ctx))
        self.parallel = int(worker.info.get("parallel", self.parallel))
        self.workers[slot] = worker
        return worker

    async def _worker(self) -> Worker:
        """The live worker with the fewest jobs; (re)starts missing ones, within max_restarts."""
        if self._fatal is not None:
            raise self._fatal
        for slot, old in enumerate(self.workers):
            if (old is not None and old.alive) or slot in self._starting:
                continue
            if old is not None:  # it died: restarting it is bounded
                if self.restarts >= self.config.max_restarts:
                    continue
                self.restarts += 1
            task = self._starting[slot] = asyncio.create_task(self._spawn(slot))
            task.add_done_callback(_retrieve)
        live = [w for w in self.workers if w is not None and w.alive]
        if live:  # a worker still loading takes jobs once it is ready
            return min(live, key=lambda w: len(w.pending))
        if not self._starting:
            last = next((w.death for w in self.workers if w is not None and w.death), None)
            raise BackendUnavailable(
                f"{self.name}: the llama.cpp worker died {self.restarts + 1} times and is not "
                f"restarted again (max_restarts = {self.config.max_restarts}); last: {last}"
            )
        pending = set(self._starting.values())
        error: BaseException = BackendUnavailable(f"{self.name}: no worker started")
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                failure = task.exception()
                if failure is None:
                    return task.result()
                error = failure
        raise error

    async def complete(self, request: Request) -> Completion:
        worker = await self._worker()
        job = {
            "messages": request.openai_messages(),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stop": list(request.stop),
            "response_format": request.response_format,
            "seed": self.config.seed,
        }
        try:
            answer = await worker.submit(job, self.config.timeout_s)
        except WorkerDied as exc:
            raise BackendUnavailable(str(exc)) from None
        if answer["op"] == "error":
            # e.g. "Requested tokens (3000) exceed context window of 2048": no retry can help.
            raise BackendError(f"{self.name}: {answer['error']}")
        # The worker answers in the Chat Completions shape: one parser for it, the HTTP one.
        completion = parse_chat_completion(answer["response"], self.model)
        return replace(completion, model=self.model, extra={"worker_s": answer.get("worker_s")})

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for `kill` in tests, `ps` for people)."""
        return [w.pid for w in self.workers if w is not None and w.alive and w.pid]

    async def check(self) -> list[CheckResult]:
        """Load the model in a fresh worker and generate one token: a broken build or model
        file shows up here, not in the middle of a night's run."""
        base = CheckResult(self.name, self.config.kind, "worker process", self.model, False)
        try:
            settings = self._settings(parallel=1)
        except BackendUnavailable as exc:
            present = False if "model file" in str(exc) or "GGUF" in str(exc) else None
            return [replace(base, model_present=present, detail=str(exc))]
        worker = Worker(f"{self.name}: check", settings)
        started = time.perf_counter()
        try:
            await worker.start()
            await worker.submit(
                {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "stop": []},
                self.config.timeout_s,
            )
        except (BackendUnavailable, WorkerDied) as exc:
            return [replace(base, model_present=None, detail=str(exc))]
        finally:
            await worker.stop()
        loaded = str(worker.info.get("model_path") or settings.model_path)
        build = str(worker.info.get("system_info", "")).split("|")
        features = [p.split("=")[0].strip() for p in build if p.strip().endswith("= 1")]
        return [
            replace(
                base,
                reachable=True,
                model_present=True,
                latency_s=time.perf_counter() - started,
                detail=f"{loaded.rsplit('/', 1)[-1]}: loaded, 1 token generated; "
                f"build: {' '.join(f.split(':')[-1].strip() for f in features)}"
                + (f"; {worker.info['note']}" if worker.info.get("note") else ""),
            )
        ]

    async def aclose(self) -> None:
        for task in list(self._starting.values()):
            with contextlib.suppress(BaseException):
                await task
        workers, self.workers = self.workers, [None] * self.config.processes
        await asyncio.gather(*(w.stop() for w in workers if w is not None))


def _requantize_to(config: LlamaCppBackendConfig) -> str | None:
    """The type the model is converted to, or None: the embedded model by default, a user's
    own file only when they name a type."""
    if config.requantize == "off":
        return None
    if config.requantize == "auto":
        return None if config.model_path else EMBEDDED_REQUANTIZE
    return config.requantize.upper()


def _retrieve(task: asyncio.Task[Any]) -> None:
    # Callers see a failed start through _worker(); this keeps asyncio from also logging it.
    if not task.cancelled():
        task.exception()
