"""Every example job file and config works: parsed, tiered, planned and run against fakes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from tests.docs.conftest import CONFIGS, FakeStack, read_jsonl, subset
from tierline.cli import main
from tierline.config import config_from_toml, load_config
from tierline.jobs import InvalidLine, Job, read_jobs

EXAMPLE_CONFIGS = sorted(p.name for p in CONFIGS.glob("*.toml"))
REMOTE_CONFIGS = ["hybrid.toml", "vllm-multi-gpu.toml"]


def test_there_are_three_example_configs() -> None:
    """The three documented configurations exist (a renamed file must update the docs)."""
    assert EXAMPLE_CONFIGS == ["hybrid.toml", "local.toml", "vllm-multi-gpu.toml"]


@pytest.mark.parametrize("name", EXAMPLE_CONFIGS)
def test_config_parses_as_written(name: str) -> None:
    """Each example config is valid exactly as committed."""
    config = load_config(str(CONFIGS / name))
    assert set(config.routes) == {1, 2, 3}


@pytest.mark.parametrize("name", EXAMPLE_CONFIGS)
def test_config_parses_with_fake_urls(name: str, fakes: FakeStack) -> None:
    """With every URL pointed at a fake, the config still validates and names the fakes."""
    config = load_config(str(fakes.config(name)))
    urls = [
        url
        for backend in config.backends.values()
        for url in (getattr(backend, "base_urls", None) or [getattr(backend, "base_url", None)])
        if url
    ]
    assert urls and all(url.startswith("http://127.0.0.1:") for url in urls)


def test_hybrid_uses_the_names_tierline_init_writes(tmp_path: Path) -> None:
    """hybrid.toml and `tierline init` with the same backends agree on names and kinds."""
    out = tmp_path / "starter.toml"
    args = ["init", "--llama-server", "http://127.0.0.1:8080/v1", "--vllm", "http://gpu-a:8000/v1"]
    assert main([*args, "--openai", "--anthropic", "--no-local", "-o", str(out)]) == 0
    starter = load_config(str(out))
    hybrid = load_config(str(CONFIGS / "hybrid.toml"))
    kinds = {name: b.kind for name, b in hybrid.backends.items()}
    assert kinds == {name: b.kind for name, b in starter.backends.items()}


def test_workload_files_are_generated_and_fresh() -> None:
    """workload.jsonl and openai-batch.jsonl are what make_workload.py writes today."""
    script = EXAMPLES / "make_workload.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_workload_is_a_few_hundred_valid_jobs() -> None:
    """Every workload line is a valid job with a unique id, in realistic variety."""
    items = list(read_jobs([str(EXAMPLES / "workload.jsonl")]))
    assert not [i for i in items if isinstance(i, InvalidLine)]
    jobs = [i for i in items if isinstance(i, Job)]
    assert 200 <= len(jobs) <= 500
    assert len({j.id for j in jobs}) == len(jobs)
    kinds = Counter(j.id.split("-")[0] for j in jobs)
    assert {"tkt", "rev", "inv", "mail", "qa", "code", "write", "reason", "hard"} <= set(kinds)
    assert any(j.response_format for j in jobs) and any(j.system for j in jobs)


def test_openai_batch_file_is_batch_format() -> None:
    """Every line of openai-batch.jsonl is an OpenAI Batch API request that tierline accepts."""
    raw = read_jsonl(EXAMPLES / "openai-batch.jsonl")
    assert all(set(r) == {"custom_id", "method", "url", "body"} for r in raw)
    jobs = list(read_jobs([str(EXAMPLES / "openai-batch.jsonl")]))
    assert all(isinstance(j, Job) and j.format == "openai-batch" for j in jobs)


def test_workload_classifies_to_a_production_mix(capsys: pytest.CaptureFixture[str]) -> None:
    """Classifying the workload gives every tier, with tier 1 the clear majority."""
    assert main(["classify", str(EXAMPLES / "workload.jsonl")]) == 0
    tiers = Counter(json.loads(line)["tier"] for line in capsys.readouterr().out.splitlines())
    total = sum(tiers.values())
    assert set(tiers) == {1, 2, 3}
    assert tiers[1] / total > 0.5 and tiers[3] / total < 0.2


@pytest.mark.parametrize("name", REMOTE_CONFIGS)
def test_plan_on_the_workload(
    name: str, fakes: FakeStack, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tierline plan --json` prices the whole workload on each remote config, all three tiers."""
    code = main(["plan", str(EXAMPLES / "workload.jsonl"), "-c", str(fakes.config(name)), "--json"])
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    assert {row["tier"] for row in plan["rows"]} == {1, 2, 3}
    assert sum(row["jobs"] for row in plan["rows"]) == 300


@pytest.mark.parametrize("name", REMOTE_CONFIGS)
def test_run_workload_subset(name: str, fakes: FakeStack, tmp_path: Path) -> None:
    """A slice of the workload covering all tiers runs on each config; every job ok."""
    jobs = subset(EXAMPLES / "workload.jsonl", tmp_path / "jobs.jsonl", count=16)
    out = tmp_path / "results.jsonl"
    assert main(["run", str(jobs), "-c", str(fakes.config(name)), "-o", str(out), "-q"]) == 0
    results = read_jsonl(out)
    assert len(results) == 16 and {r["status"] for r in results} == {"ok"}
    assert {r["tier"] for r in results} == {1, 2, 3}
    config = load_config(str(CONFIGS / name))
    assert all(r["backend"] == config.routes[r["tier"]][0] for r in results)


@pytest.mark.parametrize("name", REMOTE_CONFIGS)
def test_run_openai_batch_file(name: str, fakes: FakeStack, tmp_path: Path) -> None:
    """The OpenAI Batch file runs unchanged; results carry each line's custom_id as id."""
    out = tmp_path / "results.jsonl"
    batch = EXAMPLES / "openai-batch.jsonl"
    assert main(["run", str(batch), "-c", str(fakes.config(name)), "-o", str(out), "-q"]) == 0
    results = read_jsonl(out)
    assert sorted(r["id"] for r in results) == sorted(r["custom_id"] for r in read_jsonl(batch))
    assert {r["status"] for r in results} == {"ok"}


def test_local_config_tier2_on_llama_server(fakes: FakeStack, tmp_path: Path) -> None:
    """local.toml sends tier 2 and 3 to llama-server (faked); no in-process model is loaded."""
    jobs = subset(EXAMPLES / "workload.jsonl", tmp_path / "jobs.jsonl", count=16)
    lines = [json.loads(line) for line in jobs.read_text(encoding="utf-8").splitlines()]
    hard = [json.dumps({**j, "tier": 2}) for j in lines[:3]]
    jobs.write_text("\n".join(hard) + "\n", encoding="utf-8")
    out = tmp_path / "results.jsonl"
    assert main(["run", str(jobs), "-c", str(fakes.config("local.toml")), "-o", str(out)]) == 0
    assert {r["backend"] for r in read_jsonl(out)} == {"llama_server"}


@pytest.mark.llama
def test_local_config_tier1_on_the_embedded_model(
    fakes: FakeStack, tmp_path: Path, smollm2: Path
) -> None:
    """local.toml runs tier-1 jobs on the real embedded model (two short ones: cheap)."""
    del smollm2
    jobs = tmp_path / "jobs.jsonl"
    short = [
        {"id": "c1", "task": "classify", "prompt": "Is 'great product' positive?", "max_tokens": 4},
        {
            "id": "c2",
            "task": "classify",
            "prompt": "Is 'broken on arrival' negative?",
            "max_tokens": 4,
        },
    ]
    jobs.write_text("".join(json.dumps(j) + "\n" for j in short), encoding="utf-8")
    out = tmp_path / "results.jsonl"
    assert (
        main(["run", str(jobs), "-c", str(fakes.config("local.toml")), "-o", str(out), "-q"]) == 0
    )
    results = read_jsonl(out)
    assert {r["backend"] for r in results} == {"local"} and all(r["output"] for r in results)


def test_starter_commented_keys_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    """Every commented-out key in `tierline init`'s output is a valid key once uncommented."""
    flags = ["--vllm", "http://gpu-a:8000/v1", "--llama-server", "http://127.0.0.1:8080/v1"]
    assert main(["init", *flags, "--openai", "--anthropic", "-o", "-"]) == 0
    text = capsys.readouterr().out
    uncommented = re.sub(r"(?m)^# (\[[a-z.]+\]$|[a-z_]+ = )", r"\1", text)
    assert uncommented.count("\n# ") < text.count("\n# ")
    config = config_from_toml(uncommented, origin="uncommented starter")
    assert config.backends["openai"].mode == "batch"  # type: ignore[union-attr]
    assert config.ledger.path == "ledger.db"
