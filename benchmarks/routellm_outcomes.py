"""Outcomes files from RouteLLM's published router benchmark, for `tiering eval --outcomes`.

    python benchmarks/routellm_outcomes.py ROUTELLM_EVALS_DIR OUT_DIR [--exclude TRAIN.jsonl ...]

ROUTELLM_EVALS_DIR is ``routellm/evals`` of a checkout of lm-sys/RouteLLM (Apache-2.0; these
files are evaluation data: never train on them). Writes three files, weak =
Mixtral-8x7B-Instruct-v0.1, strong = gpt-4-1106-preview, each with the prompts RouteLLM itself
drops as contaminated (``contaminated_prompts.jsonl``) left out, as its evaluation does:

* ``mt-bench.jsonl``: the 80 MT-Bench questions (the "chat set"), routed on the first turn;
  a model's score is its GPT-4 grade (1-10) averaged over both turns, as in RouteLLM;
* ``mmlu.jsonl``: every MMLU question, score 1 if the model answered it correctly, else 0;
* ``gsm8k.jsonl``: the GSM8K test questions, likewise 0/1.

``--exclude`` drops prompts that also occur (same normalised text) in a training file, such as
the tier-train corpus, whose tier-1 MMLU rows are RouteLLM's Mixtral-correct questions: a
classifier trained on them would be scored on its own training rows. Prints the row counts.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"


def _norm(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def _contaminated(path: Path) -> set[str]:
    with path.open(encoding="utf-8") as fh:
        return {json.loads(line)["eval_prompt"] for line in fh if line.strip()}


def _truthy(value: str) -> float:
    return 1.0 if value.strip().lower() in ("true", "1", "1.0") else 0.0


def _csv_rows(paths: list[Path], bad: set[str]) -> list[dict[str, object]]:
    csv.field_size_limit(1 << 30)
    out: list[dict[str, object]] = []
    for path in paths:
        with path.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                if row["prompt"] in bad:
                    continue
                out.append(
                    {
                        "prompt": row["prompt"],
                        "weak_score": _truthy(row[WEAK]),
                        "strong_score": _truthy(row[STRONG]),
                    }
                )
    return out


def _mt_bench(evals: Path) -> list[dict[str, object]]:
    bad = _contaminated(evals / "mt_bench" / "contaminated_prompts.jsonl")
    scores: dict[tuple[int, str], list[float]] = defaultdict(list)
    with (evals / "mt_bench" / "judgements.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            d = json.loads(line)
            if d["model"] in (WEAK, STRONG) and d["score"] is not None and d["score"] >= 0:
                scores[(d["question_id"], d["model"])].append(float(d["score"]))
    out: list[dict[str, object]] = []
    with (evals / "mt_bench" / "question.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            q = json.loads(line)
            turns = q["turns"]
            if turns[0] in bad or turns[1] in bad:
                continue
            w, s = scores.get((q["question_id"], WEAK)), scores.get((q["question_id"], STRONG))
            if w and s:
                out.append(
                    {
                        "prompt": turns[0],
                        "weak_score": sum(w) / len(w),
                        "strong_score": sum(s) / len(s),
                    }
                )
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("evals", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--exclude", type=Path, nargs="*", default=[])
    args = ap.parse_args(argv)
    seen: set[str] = set()
    for path in args.exclude:
        with path.open(encoding="utf-8") as fh:
            seen.update(_norm(json.loads(line)["prompt"]) for line in fh if line.strip())
    sets = {
        "mt-bench": _mt_bench(args.evals),
        "mmlu": _csv_rows(
            sorted((args.evals / "mmlu" / "responses").glob("mmlu_*.csv")),
            _contaminated(args.evals / "mmlu" / "contaminated_prompts.jsonl"),
        ),
        "gsm8k": _csv_rows(
            [args.evals / "gsm8k" / "gsm8k_responses.csv"],
            _contaminated(args.evals / "gsm8k" / "contaminated_prompts.jsonl"),
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in sets.items():
        kept = [r for r in rows if _norm(str(r["prompt"])) not in seen]
        with (args.out / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in kept)
        print(f"{name}: {len(kept)} outcomes ({len(rows) - len(kept)} dropped as in training)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
