"""`tierline classify`'s fast path (tierline/run/classify.py) against the plain serial path.

The plain path is the one the command used before it had a fast one: `read_jobs` ->
`tiering.pipeline.classify` -> `ResultWriter.write`, one `Job` per line. The fast path
(plain prompt lines without a `Job`, worker processes for big inputs) must write the same
bytes for any input: decisions, reasons, errors and order. Killing it (Ctrl-C, a worker
killed from outside) must leave no output and no process behind.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tierline.config import Config, TieringRule, embedded_default
from tierline.jobs import MAX_LINE_BYTES, ResultWriter, read_jobs
from tierline.run.classify import PARALLEL_CHUNKS, Classified, classify_files
from tierline.tiering.pipeline import BATCH, Tierer, classify

WORDS = [
    "order",
    "refund",
    "invoice",
    "prove",
    "theorem",
    "integral",
    "python",
    "function",
    "essay",
    "budget",
]
ODD = ["héllo wörld", "日本語のテキスト", "ΑΣ ΟΔΟΣ Σ", "emoji 😀 done", "İstanbul", "a\u0000b"]


def _prompt(rng: random.Random) -> str:
    n = rng.choice((1, 3, 12, 60, 400))
    text = " ".join(rng.choice(WORDS) for _ in range(n))
    if rng.random() < 0.2:
        text += " " + rng.choice(ODD)
    if rng.random() < 0.1:
        text = "Let $x^2 + 3x = \\frac{1}{2}$. Prove that " + text + "?"
    return text


def _line(i: int, rng: random.Random) -> bytes:
    """One line of a varied input: mostly plain jobs, and every other kind the reader knows."""
    pick = rng.random()
    prompt = _prompt(rng)
    if pick < 0.55:
        return json.dumps(
            {"id": f"j{i}", "prompt": prompt}, ensure_ascii=rng.random() < 0.5
        ).encode()
    kinds: list[object] = [
        {"prompt": prompt},  # no id: the position is the id
        {"id": i, "prompt": prompt},  # an integer id
        {"id": f"j{i}", "prompt": prompt, "task": rng.choice(["classify", "proof", "code", "zz"])},
        {"id": f"j{i}", "prompt": prompt, "tier": rng.choice([1, 2, 3])},  # an override
        {"id": f"j{i}", "system": "Be brief.", "prompt": prompt},
        {"id": f"j{i}", "messages": [{"role": "user", "content": prompt}]},
        {"id": f"j{i}", "messages": [{"role": "assistant", "content": "x"}]},  # no user turn
        {"id": f"j{i}", "prompt": prompt, "metadata": {"k": i}, "max_tokens": 5},
        {"id": f"j{i}", "prompt": "   \t "},  # blank prompt: invalid
        {"id": f"j{i}", "prompt": "\u0000"},  # nothing the classifier can read
        {"id": f"j{i}", "prompt": prompt, "colour": "red"},  # unknown field
        {"id": f"j{i}", "prompt": 42},
        {"id": 1.5, "prompt": prompt},  # a float id
        {"id": 12345678901234567890123, "prompt": prompt},  # beyond 64 bits: kept exact
        {"id": "", "prompt": prompt},
        {
            "custom_id": f"b{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [{"role": "user", "content": prompt}]},
        },
        [1, 2],
        "just a string",
    ]
    choice = rng.randrange(len(kinds) + 6)
    if choice < len(kinds):
        return json.dumps(kinds[choice]).encode()
    return [
        b"{not json",
        b'{"id": "x\xff", "prompt": "bad utf-8"}',
        b"",  # blank lines are skipped
        b"  \t ",
        b'{"id": "dup", "prompt": "a duplicate id, again and again"}',
        json.dumps({"id": f"j{max(i - rng.randint(1, 3000), 0)}", "prompt": prompt}).encode(),
    ][choice - len(kinds)]


def varied(path: Path, n: int, seed: int, *, huge: bool = False) -> Path:
    """n lines of everything above; with `huge`, a long prompt, a line over MAX_LINE_BYTES and
    Windows line endings too."""
    rng = random.Random(seed)
    lines = [_line(i, rng) for i in range(n)]
    if huge:
        lines[n // 3] = json.dumps({"id": "long", "prompt": "word " * 200_000}).encode()
        lines[n // 2] = b'{"id": "too-long", "prompt": "' + b"x" * MAX_LINE_BYTES + b'"}'
        lines[n // 4] += b"\r"
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    return path


def plain_only(path: Path, n: int, seed: int) -> Path:
    """n lines of the commonest kind, an id and a prompt (whole chunks of it take a shortcut),
    with a few ids repeated from `varied`'s files and a few lines without an id."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        job = {"id": f"p{i}" if rng.random() < 0.98 else f"j{rng.randrange(3000)}"}
        if rng.random() < 0.02:
            job = {}
        lines.append(json.dumps({**job, "prompt": _prompt(rng)}, ensure_ascii=False).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def plain_path(inputs: list[str], out: Path, config: Config) -> bytes:
    """What `tierline classify` wrote before its fast path: one Job per line, tiered a batch
    of BATCH lines at a time, every record written on its own."""
    writer = ResultWriter(str(out), flush_each=False)
    for record in classify(read_jobs(inputs), Tierer.from_config(config.tiering)):
        writer.write(record)
    writer.commit()
    return out.read_bytes()


def with_rules(config: Config) -> Config:
    rules = [
        TieringRule(tier=3, pattern=r"theorem\s+\w+", name="theorems"),
        TieringRule(tier=2, keywords=["PYTHON"]),
        TieringRule(tier=1, task="zz"),
    ]
    tiering = config.tiering.model_copy(update={"rules": rules})
    return config.model_copy(update={"tiering": tiering})


def without_classifier(config: Config) -> Config:
    tiering = config.tiering.model_copy(update={"classifier": False})
    return config.model_copy(update={"tiering": tiering})


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("configure", [lambda c: c, with_rules, without_classifier])
def test_fast_path_writes_the_plain_paths_bytes(
    tmp_path: Path, workers: int, configure: object
) -> None:
    """Two files of varied lines (plain jobs, every other format, invalid lines, blank lines,
    non-ASCII, duplicate ids within and across chunks and files, a huge prompt, a line over
    the limit) and one of plain jobs only: in one process and with two workers, byte for byte
    the plain path's output, with the same counts."""
    assert callable(configure)
    config: Config = configure(embedded_default())
    a = varied(tmp_path / "a.jsonl", 3 * BATCH + 17, seed=1, huge=True)
    b = varied(tmp_path / "b.jsonl", BATCH + 300, seed=2)  # repeats a's ids: duplicates
    c = plain_only(tmp_path / "c.jsonl", 3 * BATCH, seed=3)
    inputs = [str(a), str(b), str(c)]
    expected = plain_path(inputs, tmp_path / "plain.jsonl", config)
    done = classify_files(inputs, str(tmp_path / "fast.jsonl"), config, workers=workers)
    assert (tmp_path / "fast.jsonl").read_bytes() == expected
    records = [json.loads(line) for line in expected.splitlines()]
    invalid = sum(r.get("status") == "invalid" for r in records)
    assert done == Classified(len(records), invalid, workers)
    # the input really holds what the test claims it does
    errors = " ".join(r["error"]["message"] for r in records if r.get("status") == "invalid")
    for reason in ("duplicate id", "invalid JSON", "invalid UTF-8", "longer than", "unknown field"):
        assert reason in errors
    stages = {r["why"].split(" ")[0] for r in records if r.get("why")}
    assert {"task", "set"} <= stages
    assert ("classifier" in stages) == config.tiering.classifier
    assert ("rule" in stages) == bool(config.tiering.rules)


def test_small_input_tiers_in_one_process(tmp_path: Path) -> None:
    """A shell loop calling classify on a few jobs never pays for worker processes."""
    jobs = varied(tmp_path / "j.jsonl", 50, seed=3)
    done = classify_files([str(jobs)], str(tmp_path / "o.jsonl"), embedded_default())
    assert done.workers == 0 and done.lines > 0


def test_a_prompt_without_a_token_is_classified(tmp_path: Path) -> None:
    """A prompt of NULs (not blank to str.strip, blank to the tokenizer) alone in its batch
    used to crash the featurizer; it gets a decision."""
    jobs = tmp_path / "j.jsonl"
    jobs.write_text('{"id": "nul", "prompt": "\\u0000\\u0000"}\n')
    classify_files([str(jobs)], str(tmp_path / "o.jsonl"), embedded_default())
    (record,) = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert record["tier"] in (1, 2, 3) and record["why"].startswith("classifier")


def test_the_chunkwise_id_set_finds_what_the_plain_one_does() -> None:
    """The set the command checks its workers' ids with (`_SeenIds`, a chunk at a time with
    numpy) reports the same duplicates as `jobs.IdSet`: repeats across chunks, within a chunk,
    lines without an id, over enough chunks to merge its runs many times."""
    from tierline.jobs import IdSet
    from tierline.run.classify import _SeenIds

    rng = random.Random(7)
    for pool in (40, 3000, 10**6):
        plain, chunkwise = IdSet(), _SeenIds()
        for _ in range(80):
            size = rng.choice((1, 5, BATCH))
            ids = [None if rng.random() < 0.05 else f"j{rng.randrange(pool)}" for _ in range(size)]
            assert chunkwise.seen_before(ids) == plain.seen_before(ids)


@pytest.mark.skipif(sys.platform != "linux", reason="worker processes are forked on Linux only")
def test_worker_pipes_hold_a_whole_chunk() -> None:
    """A worker's pipes are widened to PIPE_BYTES (the default 64 KiB made each side wait for
    the other at every chunk), within the 1 MiB an unprivileged user may set."""
    import fcntl

    from tierline.run.classify import PIPE_BYTES, _pipe

    read, write = _pipe()
    try:
        assert fcntl.fcntl(write, fcntl.F_GETPIPE_SZ) >= PIPE_BYTES >= 2**20
    finally:
        os.close(read)
        os.close(write)


# --- interrupted runs: a real `tierline classify` process and its workers ------------------------


def _big_input(path: Path) -> Path:
    """Enough lines that the command forks workers and is still busy when the test acts."""
    line = b'{"id": "j%d", "prompt": "Summarize the attached invoice and refund order, please."}'
    with path.open("wb") as fh:
        for start in range(0, 400_000, 10_000):
            fh.write(b"\n".join(line % i for i in range(start, start + 10_000)) + b"\n")
    assert PARALLEL_CHUNKS * BATCH < 400_000
    return path


def _group(pgid: int) -> list[int]:
    """The live processes of a process group (zombies are dead: they hold no resources)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def _start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], list[int]]:
    """`tierline classify` in its own process group, once its worker processes are running."""
    jobs = _big_input(tmp_path / "big.jsonl")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tierline", "classify", str(jobs), "-o", str(tmp_path / "o.jsonl")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own group, as a terminal's foreground job has
    )
    deadline = time.monotonic() + 120  # a bound for a loaded machine, not a speed check
    while time.monotonic() < deadline and proc.poll() is None:
        workers = [pid for pid in _group(proc.pid) if pid != proc.pid]
        if len(workers) >= 2:
            return proc, workers
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"no worker processes appeared (exit {proc.poll()})")


def _finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=60)  # a hang fails here instead of blocking the suite
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    deadline = time.monotonic() + 30
    while _group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group(proc.pid) == [], "a worker outlived the command"
    return proc.returncode, err.decode()


@pytest.mark.slow
def test_ctrl_c_leaves_no_output_and_no_process(tmp_path: Path) -> None:
    """SIGINT to the whole group (what Ctrl-C does) while workers are busy: exit 130, the
    output never appears, no worker is left running."""
    proc, _ = _start(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)
    code, err = _finish(proc)
    assert code == 130, err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.slow
def test_a_killed_worker_fails_the_command_without_output(tmp_path: Path) -> None:
    """A worker killed from outside (the OOM killer): the command says so and exits 70; the
    output never appears and the other worker is stopped."""
    proc, workers = _start(tmp_path)
    os.kill(workers[0], signal.SIGKILL)
    code, err = _finish(proc)
    assert code == 70, err
    assert "classify worker process died (killed by signal 9)" in err
    assert not (tmp_path / "o.jsonl").exists()
