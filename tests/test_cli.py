"""The CLI end to end: exit codes, stdin, stdout for data, stderr for people, fast start-up."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tierline.cli import main

from .conftest import EXAMPLES, write_jsonl


def results(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def feed_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


class TestClassify:
    def test_examples_all_classified(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Every example job comes back with a tier, a why and a confidence; exit 0."""
        assert main(["classify", str(EXAMPLES / "jobs.jsonl")]) == 0
        out = results(capsys.readouterr().out)
        assert len(out) == len((EXAMPLES / "jobs.jsonl").read_text().splitlines()) >= 25
        assert {o["tier"] for o in out} == {1, 2, 3}
        assert all(isinstance(o["why"], str) and o["why"] for o in out)

    def test_stdin_and_bad_lines(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """'-' reads stdin; a bad line is reported in place and the exit code is 1."""
        feed_stdin(
            monkeypatch,
            b'{"id": "a", "prompt": "Summarize: hi"}\n{"id": 3.5}\n{"id": "b", "prompt": "x", "tier": 3}\n',
        )
        assert main(["classify", "-"]) == 1
        captured = capsys.readouterr()
        out = results(captured.out)
        assert [o.get("tier") for o in out] == [1, None, 3]
        assert out[1]["status"] == "invalid" and "-:2" in out[1]["error"]["message"]  # type: ignore[index]
        assert "1 invalid line" in captured.err

    def test_output_file_is_written_atomically(self, tmp_path: Path) -> None:
        """-o writes the file and leaves no .partial behind."""
        jobs = write_jsonl(tmp_path / "j.jsonl", ['{"id": "a", "prompt": "What is 2+2?"}'])
        assert main(["classify", str(jobs), "-o", str(tmp_path / "out.jsonl"), "-q"]) == 0
        assert len(results((tmp_path / "out.jsonl").read_text())) == 1
        assert not (tmp_path / "out.jsonl.partial").exists()

    def test_classify_output_feeds_run_as_override(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """classify's output is valid input: its tier field parses as an override."""
        from tierline.jobs import Job, read_jobs

        jobs = write_jsonl(
            tmp_path / "j.jsonl", ['{"id": "a", "prompt": "Prove that sqrt(2) is irrational."}']
        )
        main(["classify", str(jobs), "-o", str(tmp_path / "c.jsonl")])
        [job] = list(read_jobs([str(tmp_path / "c.jsonl")]))
        assert isinstance(job, Job) and job.tier == 3

    def test_a_config_file_s_tiering_is_used(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """With a config file classify tiers as its [tiering] says (here a rule and no
        classifier); without one, as the embedded default does (the classifier)."""
        jobs = write_jsonl(
            tmp_path / "j.jsonl",
            ['{"id": "a", "prompt": "Refund order 42"}', '{"id": "b", "prompt": "Hello there"}'],
        )
        config = tmp_path / "c.toml"
        config.write_text(
            '[backends.local]\nkind = "llamacpp"\n[routes]\n1 = "local"\n2 = "local"\n'
            '3 = "local"\n[tiering]\nclassifier = false\n'
            'rules = [{tier = 3, keywords = ["refund"]}]\n'
        )
        assert main(["classify", str(jobs), "--config", str(config)]) == 0
        tiered = results(capsys.readouterr().out)
        assert [o["tier"] for o in tiered] == [3, 1]
        assert str(tiered[0]["why"]).startswith("rule") and "classifier" not in str(tiered[1])
        assert main(["classify", str(jobs)]) == 0
        assert all(str(o["why"]).startswith("classifier") for o in results(capsys.readouterr().out))


class TestErrors:
    def test_missing_input_file_is_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unreadable input is exit 2 with the path in a one-line message."""
        assert main(["classify", "nope.jsonl"]) == 2
        assert "cannot read nope.jsonl" in capsys.readouterr().err

    def test_bad_config_is_exit_2_naming_file_and_key(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A config error stops before anything runs and says where."""
        bad = tmp_path / "t.toml"
        bad.write_text(
            '[backends.x]\nkind = "llamacpp"\n[routes]\n1 = ["x"]\n2 = ["x"]\n3 = ["y"]\n',
            encoding="utf-8",
        )
        jobs = write_jsonl(tmp_path / "j.jsonl", ['{"prompt": "x"}'])
        assert main(["run", str(jobs), "--config", str(bad)]) == 2
        err = capsys.readouterr().err
        assert str(bad) in err and "routes.3: unknown backend 'y'" in err

    def test_unknown_option_is_exit_2(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A usage error is exit 2."""
        assert main(["run", "--no-such-flag", "x"]) == 2

    def test_no_arguments_shows_help(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Bare `tierline` explains itself on stdout and exits 2 (a usage error: nothing ran)."""
        assert main([]) == 2
        assert "classify" in capsys.readouterr().out


@pytest.mark.parametrize("command", [[], ["run"], ["classify"]])
def test_help_is_useful(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Every command's --help describes it and its options."""
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage" in out and ("--output" in out or "classify" in out)


# What a shell loop pays per call: `tierline --help` imports no command, `classify` only the
# config and the classifier (timed in benchmarks/bench_startup.py).
HEAVY = (
    "openai",
    "anthropic",
    "llama_cpp",
    "asyncio",
    "rich.table",
    "rich.progress",
    "tierline.dispatch",
    "tierline.ledger",
    "typer.rich_utils",
)
NOT_FOR_HELP = (
    *HEAVY,
    "pydantic",
    "numpy",
    "rich.console",
    "tierline.config",
    "tierline.tiering",
    "tierline.jobs",
)


def _imported(tmp_path: Path, argv: list[str], watch: tuple[str, ...]) -> list[str]:
    code = (
        "import sys, contextlib, io, json\n"
        "from tierline.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(sys.argv[2:])\n"
        "print(json.dumps(sorted({m for m in sys.modules for w in sys.argv[1].split(',') "
        "if m == w or m.startswith(w + '.')})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, ",".join(watch), *argv],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_startup_does_not_import_sdks(tmp_path: Path) -> None:
    """--help loads no command module (no pydantic, numpy, SDK, llama.cpp, asyncio, rich
    tables); classify loads the config and the classifier but no SDK, dispatch or ledger."""
    jobs = write_jsonl(tmp_path / "j.jsonl", ['{"prompt": "Summarize: a b c"}'])
    assert _imported(tmp_path, ["--help"], NOT_FOR_HELP) == []
    assert (
        _imported(tmp_path, ["classify", "-o", str(tmp_path / "o.jsonl"), str(jobs)], HEAVY) == []
    )
    # the probe sees imports: `run --help` loads the run command and its dispatch layer
    assert "tierline.dispatch" in _imported(tmp_path, ["run", "--help"], HEAVY)


def test_help_lists_the_commands_own_summaries() -> None:
    """The root --help lists commands from summaries kept in tierline.cli (so it imports none
    of them): each must be the first paragraph of that command's own help."""
    import typer.core

    from tierline.cli import COMMANDS, load_command

    for name, (_module, _attribute, summary) in COMMANDS.items():
        command = load_command(name)
        assert isinstance(command, (typer.core.TyperCommand, typer.core.TyperGroup))
        assert (command.help or "").split("\n\n")[0].strip() == summary, name


def test_python_dash_m_works() -> None:
    """`python -m tierline` is the same CLI."""
    out = subprocess.run(
        [sys.executable, "-m", "tierline", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "classify" in out.stdout
