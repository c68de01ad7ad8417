"""The llama.cpp worker processes with the real llama-cpp-python and the real SmolLM2 model:
crash isolation, restarts, batched decoding, the chat template, bad model files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from tests.fakes import FakeLlamaServer
from tierline.config import LlamaCppBackendConfig, config_from_mapping
from tierline.dispatch.base import Request
from tierline.dispatch.llama_worker import PORTABLE_CMAKE_ARGS, build_problem
from tierline.dispatch.llamacpp import LlamaCppBackend, Worker, _Settings, crash_message
from tierline.dispatch.router import Router
from tierline.errors import BackendUnavailable
from tierline.jobs import Message

from .conftest import write_jsonl

pytestmark = pytest.mark.llama

PROMPTS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write one sentence about the sea.",
    "What is 12 times 12?",
    "Give a synonym for 'happy'.",
    "Translate 'good morning' into Spanish.",
]
STORY = "Write a long story about a dragon."
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}},
    "required": ["city"],
}


def ask(text: str, **fields: object) -> Request:
    fields.setdefault("max_tokens", 24)
    return Request(messages=(Message("user", text),), **fields)  # type: ignore[arg-type]


def local(**fields: object) -> LlamaCppBackend:
    fields.setdefault("workers", 1)
    config = LlamaCppBackendConfig(kind="llamacpp", n_ctx=1024, **fields)  # type: ignore[arg-type]
    return LlamaCppBackend("local", config)


async def wait_for_jobs(backend: LlamaCppBackend, n: int) -> int:
    """The pid of the worker that holds n jobs, whichever of the backend's workers it is (the
    router may give the job to any of them); fails, rather than hangs, if none ever does."""
    for _ in range(12_000):  # a hang guard of about two minutes, not a speed limit
        worker = next(
            (
                w
                for w in backend.workers
                if w is not None and w.alive and w.pid and len(w.pending) >= n
            ),
            None,
        )
        if worker is not None:
            return worker.pid
        await asyncio.sleep(0.01)
    raise AssertionError(f"no worker of {backend.name} ever held {n} job(s)")


async def test_batched_equals_unbatched_at_temperature_zero(smollm2: Path) -> None:
    """With a KV stream per sequence (kv_unified = false), six prompts decoded together give
    the same text, token for token, as each decoded alone, and as llama-cpp-python's own
    create_chat_completion on the shipped file: the worker formats the prompt with the
    model's chat template exactly as it does."""
    from llama_cpp import Llama

    batched = local(parallel=6, kv_unified=False, requantize="off")
    single = local(parallel=1, kv_unified=False, requantize="off")
    try:
        together = await asyncio.gather(
            *(batched.complete(ask(p, temperature=0.0)) for p in PROMPTS)
        )
        alone = [await single.complete(ask(p, temperature=0.0)) for p in PROMPTS]
    finally:
        await batched.aclose()
        await single.aclose()
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.usage.output_tokens for c in together] == [c.usage.output_tokens for c in alone]
    llama = Llama(model_path=str(smollm2), n_ctx=1024, verbose=False, seed=0)
    try:
        for prompt, mine in zip(PROMPTS[:3], alone[:3], strict=True):
            theirs = llama.create_chat_completion(
                messages=[{"role": "user", "content": prompt}], max_tokens=24, temperature=0.0
            )
            assert mine.usage.input_tokens == theirs["usage"]["prompt_tokens"]
            assert mine.text == theirs["choices"][0]["message"]["content"]
    finally:
        llama.close()


async def test_default_worker_alone_equals_llama_cpp_python(smollm2: Path) -> None:
    """The defaults (the embedded model requantized, one KV cache, flash attention): a job
    decoded alone is llama-cpp-python's create_chat_completion on the same file and kernels."""
    from llama_cpp import Llama

    single = local(parallel=1)
    try:
        alone = [await single.complete(ask(p, temperature=0.0)) for p in PROMPTS[:3]]
        loaded = next(w for w in single.workers if w is not None).info["model_path"]
    finally:
        await single.aclose()
    assert loaded != str(smollm2) and single.model.endswith("-as-Q8_0")
    llama = Llama(model_path=loaded, n_ctx=1024, verbose=False, seed=0, flash_attn=True)
    try:
        for prompt, mine in zip(PROMPTS[:3], alone, strict=True):
            theirs = llama.create_chat_completion(
                messages=[{"role": "user", "content": prompt}], max_tokens=24, temperature=0.0
            )
            assert mine.text == theirs["choices"][0]["message"]["content"]
    finally:
        llama.close()


async def test_a_shared_prompt_prefix_is_computed_once(smollm2: Path) -> None:
    """Jobs with the same system prompt reuse its KV cache: the first computes it, the ones
    after it (in the same slot, or copied from another) report it as cached prompt tokens."""
    backend = local(parallel=4)
    system = "You are a careful assistant who answers in one short sentence."
    try:
        first = await backend.complete(ask("Name a colour.", system=system, max_tokens=4))
        together = await asyncio.gather(
            *(backend.complete(ask(p, system=system, max_tokens=4)) for p in PROMPTS[:4])
        )
    finally:
        await backend.aclose()
    assert first.usage.cached_tokens == 0
    # the template's head and the system prompt: about 20 tokens, never the user's question
    assert all(15 <= c.usage.cached_tokens < c.usage.input_tokens - 3 for c in together)


async def test_grammar_stop_and_max_tokens_hold_per_sequence(smollm2: Path) -> None:
    """Sequences decoded in one batch keep their own grammar, stop strings and max_tokens."""
    backend = local(parallel=4)
    rf = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA}}
    try:
        as_json, stopped, short, plain = await asyncio.gather(
            backend.complete(
                ask("Where is the Eiffel Tower? JSON.", max_tokens=40, response_format=rf)
            ),
            backend.complete(ask(STORY, max_tokens=30, temperature=0.0, stop=("dragon",))),
            backend.complete(ask(STORY, max_tokens=3)),
            backend.complete(ask(STORY, max_tokens=30, temperature=0.0)),
        )
    finally:
        await backend.aclose()
    jsonschema.validate(json.loads(as_json.text), SCHEMA)
    # The same prompt without the stop string goes on past it: the stop was this sequence's own.
    assert "dragon" in plain.text and plain.usage.output_tokens == 30 and "{" not in plain.text
    assert stopped.finish_reason == "stop" and plain.text.startswith(stopped.text)
    assert "dragon" not in stopped.text and stopped.text.strip()
    assert short.usage.output_tokens == 3 and short.finish_reason == "length"


@pytest.mark.parametrize("sig", [signal.SIGILL, signal.SIGSEGV])
async def test_worker_crash_fails_its_jobs_and_restarts(smollm2: Path, sig: signal.Signals) -> None:
    """A worker killed mid-run: each job it held gets an error naming the signal and the fix;
    the next job starts a new worker and is answered."""
    backend = local(parallel=4, max_restarts=1)
    try:
        held = [
            asyncio.ensure_future(
                backend.complete(ask(f"Tell a long story, part {i}.", max_tokens=400))
            )
            for i in range(4)
        ]
        pid = await wait_for_jobs(backend, 4)
        os.kill(pid, sig)
        outcomes = await asyncio.gather(*held, return_exceptions=True)
        after = await backend.complete(ask("Say hi.", max_tokens=4))
        new_pids = backend.worker_pids()
    finally:
        await backend.aclose()
    assert all(isinstance(o, BackendUnavailable) for o in outcomes), outcomes
    assert all(sig.name in str(o) for o in outcomes)
    if sig == signal.SIGILL:
        assert "reinstall it portably" in str(outcomes[0]) and "GGML_NATIVE=OFF" in str(outcomes[0])
    assert after.usage.output_tokens > 0 and backend.restarts == 1 and pid not in new_pids


async def test_a_hung_worker_times_out_and_restarts(smollm2: Path) -> None:
    """A worker that stops answering (SIGSTOP) does not hang the run: after timeout_s it is
    killed, each job it held fails naming the timeout, and the next job gets a new worker."""
    backend = local(parallel=2, timeout_s=5.0, max_restarts=1)
    try:
        held = [
            asyncio.ensure_future(
                backend.complete(ask(f"Tell a long story, part {i}.", max_tokens=400))
            )
            for i in range(2)
        ]
        pid = await wait_for_jobs(backend, 2)
        os.kill(pid, signal.SIGSTOP)
        outcomes = await asyncio.gather(*held, return_exceptions=True)
        after = await backend.complete(ask("Say hi.", max_tokens=2))
        new_pids = backend.worker_pids()
    finally:
        await backend.aclose()
    assert all(isinstance(o, BackendUnavailable) for o in outcomes), outcomes
    assert all("did not answer a job within timeout_s = 5 s" in str(o) for o in outcomes)
    assert "out-of-memory" not in str(outcomes[0])  # the kill was ours, not the OOM killer's
    assert after.usage.output_tokens > 0 and backend.restarts == 1 and pid not in new_pids
    assert not _exists(Path(f"/proc/{pid}"))  # killed and reaped, not left stopped


async def test_restarts_are_bounded(smollm2: Path) -> None:
    """With max_restarts = 0 a crashed worker stays down: later jobs fail at once, saying why."""
    backend = local(parallel=2, max_restarts=0)
    try:
        first = asyncio.ensure_future(backend.complete(ask("Tell a long story.", max_tokens=400)))
        os.kill(await wait_for_jobs(backend, 1), signal.SIGSEGV)
        with pytest.raises(BackendUnavailable, match="SIGSEGV"):
            await first
        with pytest.raises(BackendUnavailable, match=r"not restarted again.*SIGSEGV"):
            await backend.complete(ask("Say hi."))
    finally:
        await backend.aclose()


async def test_crashed_jobs_fall_back_to_the_next_backend(smollm2: Path) -> None:
    """The route's next backend answers the jobs a dead worker held; the route shows both."""
    with FakeLlamaServer(n_parallel=4) as srv:
        config = config_from_mapping(
            {
                "backends": {
                    "local": {"kind": "llamacpp", "n_ctx": 1024, "parallel": 2},
                    "srv": {
                        "kind": "openai-compatible",
                        "model": srv.models[0],
                        "base_url": srv.base_url,
                        "flavor": "llama-server",
                    },
                },
                "routes": {"1": ["local", "srv"], "2": ["srv"], "3": ["srv"]},
            },
            origin="test",
        )
        router = Router(config)
        try:
            outcome = asyncio.ensure_future(
                router.dispatch(1, lambda n: ask("Tell a long story.", max_tokens=400))
            )
            backend = router.backend("local")
            assert isinstance(backend, LlamaCppBackend)
            os.kill(await wait_for_jobs(backend, 1), signal.SIGILL)
            result = await outcome
        finally:
            await router.aclose()
    assert [h.status for h in result.hops] == ["unavailable", "ok"]
    assert "SIGILL" in (result.hops[0].error or "") and result.final.backend == "srv"  # type: ignore[union-attr]


async def test_a_model_file_that_is_not_gguf_is_a_clear_error(tmp_path: Path) -> None:
    """A non-GGUF file and a damaged GGUF file both fail with a message that says so."""
    zip_file = tmp_path / "model.gguf"
    zip_file.write_bytes(b"PK\x03\x04" + b"\0" * 1000)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(2000))
    for path, message in ((zip_file, "not a GGUF model file"), (broken, "cannot load broken.gguf")):
        backend = local(model_path=str(path))
        try:
            with pytest.raises(BackendUnavailable, match=message):
                await backend.complete(ask("Hi"))
            with pytest.raises(BackendUnavailable, match=message):  # no second attempt to load
                await backend.complete(ask("Hi"))
            (row,) = await backend.check()
        finally:
            await backend.aclose()
        assert not row.usable and message in row.detail


async def test_default_parallel_fits_the_kv_budget(smollm2: Path) -> None:
    """Left to its default, `parallel` shrinks to what the KV budget holds for the model
    loaded (a big model keeps one sequence); set explicitly, it is kept."""
    settings = _Settings(str(smollm2), 1024, 8, 1, 0, kv_budget=1)
    squeezed = Worker("local: worker 1", settings)
    kept = Worker("local: worker 2", replace(settings, kv_budget=None))
    try:
        await squeezed.start()
        await kept.start()
    finally:
        await squeezed.stop()
        await kept.stop()
    assert squeezed.info["parallel"] == 1 and kept.info["parallel"] == 8
    backend = local()
    assert backend._settings(8).kv_budget and not local(parallel=8)._settings(8).kv_budget


async def test_check_loads_the_model_and_generates_a_token(smollm2: Path) -> None:
    """`backends check` proves the build and the model work, in a throwaway worker."""
    backend = local()
    try:
        (row,) = await backend.check()
    finally:
        await backend.aclose()
    assert row.usable and "1 token generated" in row.detail and "AVX2" in row.detail
    assert backend.worker_pids() == []


def test_build_problem_names_what_the_cpu_lacks() -> None:
    """A wheel built elsewhere (-march=native, cached by pip) is caught before it runs."""
    portable = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 |"
    host = {"ssse3", "avx", "avx2", "f16c", "fma", "bmi2"}
    assert build_problem(portable, host) is None
    avx512 = portable + " AVX512 = 1 | AVX512_VNNI = 1 |"
    assert (
        build_problem(avx512, host) == "it uses AVX512, AVX512_VNNI, which this CPU does not have"
    )
    amx = avx512 + " AMX_INT8 = 1 |"
    assert "AMX" in (build_problem(amx, host | {"avx512f", "avx512_vnni", "amx_int8"}) or "")


def test_crash_messages_name_signal_and_fix() -> None:
    assert "out-of-memory" in crash_message(-signal.SIGKILL)
    assert "SIGABRT" in crash_message(-signal.SIGABRT, "GGML_ASSERT(x) failed\n")
    assert "GGML_ASSERT" in crash_message(-signal.SIGABRT, "GGML_ASSERT(x) failed\n")
    assert "code 3" in crash_message(3)


def _worker_of(pid: int) -> int | None:
    """The pid of a llama worker child of `pid`, if one runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"llama_worker" in cmdline:
            return int(entry.name)
    return None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "says"), [(signal.SIGILL, "SIGILL"), (signal.SIGSTOP, "timeout_s = 20 s")]
)
def test_run_goes_on_after_the_worker_dies(tmp_path: Path, sig: signal.Signals, says: str) -> None:
    """`tierline run` whose worker is killed with SIGILL, or stopped with SIGSTOP, mid-run: one
    result per job, the jobs the worker held fail naming SIGILL or the timeout, every other job
    is answered, exit code 1."""
    config = tmp_path / "tierline.toml"
    config.write_text(
        '[backends.local]\nkind = "llamacpp"\nn_ctx = 1024\nworkers = 1\nparallel = 3\n'
        "timeout_s = 20\n"
        '[routes]\n1 = ["local"]\n2 = ["local"]\n3 = ["local"]\n'
    )
    jobs = write_jsonl(
        tmp_path / "jobs.jsonl",
        [
            json.dumps(
                {"id": f"j{i}", "prompt": f"Say the number {i}.", "max_tokens": 60, "tier": 1}
            )
            for i in range(12)
        ],
    )
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "TIERLINE_HOME": str(tmp_path)}
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tierline",
            "run",
            str(jobs),
            "-o",
            str(out),
            "-q",
            "--config",
            str(config),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    partial = tmp_path / "out.jsonl.partial"
    killed = None
    while killed is None and run.poll() is None:
        # Mid-run: the first answers have reached the results file, others are in the worker.
        pid = _worker_of(run.pid)
        if pid is not None and partial.exists() and partial.read_bytes().count(b"\n") >= 1:
            os.kill(pid, sig)
            killed = pid
        time.sleep(0.02)
    _, err = run.communicate(timeout=600)
    assert killed is not None, "the run ended before its worker could be killed"
    results = [json.loads(line) for line in out.read_text().splitlines()]
    failed = [r for r in results if r["status"] != "ok"]
    assert len(results) == 12 and run.returncode == 1, err
    assert 1 <= len(failed) <= 3
    assert all(says in r["error"]["message"] for r in failed), failed


def test_readme_and_ci_install_the_portable_build() -> None:
    """The install lines people and CI copy carry the build flags the crash message names."""
    root = Path(__file__).resolve().parent.parent
    for name in ("README.md", ".ci/run"):
        text = (root / name).read_text()
        assert f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}"' in text and "--no-cache-dir" in text, name


def _exists(path: Path) -> bool:
    return path.exists()


def _stat(path: Path) -> os.stat_result:
    return path.stat()


def _read(path: Path) -> bytes:
    return path.read_bytes()


def _copy(source: Path, target: Path) -> None:
    target.write_bytes(source.read_bytes())


def _loaded(backend: LlamaCppBackend) -> dict[str, object]:
    """The ready message of the backend's (first) worker: the file it loaded, any note."""
    return next(w for w in backend.workers if w is not None).info


async def test_the_embedded_model_is_requantized_once_into_the_user_cache(
    smollm2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The embedded model is converted into the XDG cache, under a name keyed by the source's
    hash, the type and the llama-cpp-python version; later workers reuse that file."""
    import hashlib

    import llama_cpp

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = local()
    try:
        await first.complete(ask("Hi", max_tokens=1))
        made = Path(str(_loaded(first)["model_path"]))
    finally:
        await first.aclose()
    stat = _stat(made)
    second = local(workers=2)
    try:
        await asyncio.gather(*(second.complete(ask("Hi", max_tokens=1)) for _ in range(4)))
        reused = [Path(str(w.info["model_path"])) for w in second.workers if w is not None]
    finally:
        await second.aclose()
    assert made.parent == tmp_path / "cache" / "tierline" / "models"
    digest = hashlib.sha256(_read(smollm2)).hexdigest()[:16]
    assert made.name == (
        f"SmolLM2-135M-Instruct.Q4_1.{digest}.Q8_0.llama-cpp-python-{llama_cpp.__version__}.gguf"
    )
    assert reused and all(p == made for p in reused)
    assert (_stat(made).st_mtime_ns, _stat(made).st_ino) == (stat.st_mtime_ns, stat.st_ino)
    assert not [name for name in os.listdir(made.parent) if name.endswith(".tmp")]


async def test_a_users_model_is_used_as_given_unless_they_opt_in(
    smollm2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """requantize = "auto" leaves a model_path alone; naming a type converts it (cached)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    own = tmp_path / "mine.gguf"
    _copy(smollm2, own)
    as_given = local(model_path=str(own))
    opted = local(model_path=str(own), requantize="q4_0")
    try:
        await as_given.complete(ask("Hi", max_tokens=1))
        await opted.complete(ask("Hi", max_tokens=1))
        given, converted = _loaded(as_given), _loaded(opted)
    finally:
        await as_given.aclose()
        await opted.aclose()
    assert given["model_path"] == str(own) and as_given.model == "mine"
    assert Path(str(converted["model_path"])).parent == tmp_path / "cache" / "tierline" / "models"
    assert ".Q4_0.llama-cpp-python-" in str(converted["model_path"])
    assert opted.model == "mine-as-Q4_0"


async def test_an_unusable_cache_loads_the_model_as_given(
    smollm2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache directory that cannot be created costs the speed-up, not the run."""
    _copy(Path(__file__), tmp_path / "tierline")  # a file where the cache dir should be
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    backend = local()
    try:
        answer = await backend.complete(ask("Hi", max_tokens=2))
        info = _loaded(backend)
        (row,) = await backend.check()
    finally:
        await backend.aclose()
    assert answer.usage.output_tokens > 0 and info["model_path"] == str(smollm2)
    assert "not requantized to Q8_0" in str(info["note"]) and "loaded as given" in row.detail
