"""Build `tierline/tiering/data/public-train.jsonl`: public rows that fill the corpus's gaps.

    python benchmarks/tiering_public_rows.py --agieval AGIEVAL/data/v1 --nq NQ-open.dev.jsonl \
        --gsm8k GSM8K/train.jsonl --corpus TIER-TRAIN.jsonl -o tierline/tiering/data/public-train.jsonl

Deterministic (no sampling: every k-th row). Three gaps, three public sources (commits and
licences in docs/tiering.md's model card):

* **Hard reasoning that is not competition math** (microsoft/AGIEval, ``data/v1``): LSAT
  analytical reasoning (``lsat-ar``, scheduling and grouping puzzles under many conditions) and
  LogiQA (``logiqa-en``) are tier 3: frontier models scored under 60% on them (GPT-4: 35.7% and
  58.8% in the AGIEval paper). LSAT logical reasoning (``lsat-lr``, GPT-4 83.7%) and AQuA-RAT
  (``aqua-rat``, algebra word problems with options) are tier 2. A prompt is the passage, the
  question and the lettered options, as a user would paste them.
* **Quick questions as people type them** (google-research-datasets/natural-questions,
  ``nq_open/NQ-open.dev.jsonl``): real, anonymised Google search questions, tier 1 (every
  other one of the 3,610).
* **Difficulty inside grade-school math** (openai/grade-school-math, the *train* split): the
  corpus labels all of GSM8K tier 2 and SVAMP/ASDiv/MAWPS ("one- or two-step arithmetic word
  problems") tier 1. By that definition a GSM8K problem whose reference solution takes at most
  two calculator steps (``<<...>>`` annotations) is tier 1, and more steps tier 2. The corpus's
  own GSM8K rows are repeated here with that label (training keeps the *last* label of a
  prompt that occurs twice, so this file must come after the corpus), and every third train
  problem not in the corpus is added the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

AGIEVAL = "microsoft/AGIEval:data/v1/{}.jsonl"
AGIEVAL_TIERS = {"lsat-ar": 3, "logiqa-en": 3, "lsat-lr": 2, "aqua-rat": 2}
NQ = "google-research-datasets/natural-questions:nq_open/NQ-open.dev.jsonl"
GSM8K = "openai/grade-school-math:grade_school_math/data/train.jsonl"


def _lines(path: Path) -> list[dict[str, object]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _agieval(root: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for name, tier in AGIEVAL_TIERS.items():
        for i, d in enumerate(_lines(root / f"{name}.jsonl")):
            parts = [str(d.get("passage") or "").strip(), str(d["question"]).strip()]
            options = d.get("options") or []
            assert isinstance(options, list)
            prompt = "\n".join(p for p in parts if p) + "\n" + "\n".join(map(str, options))
            out.append(
                {
                    "id": f"agieval-{name}-{i}",
                    "prompt": prompt.strip(),
                    "tier": tier,
                    "category": "hard_reasoning" if tier == 3 else "multistep_reasoning",
                    "source": AGIEVAL.format(name),
                }
            )
    return out


def _nq(path: Path) -> list[dict[str, object]]:
    rows = _lines(path)[::2]
    return [
        {
            "id": f"nq-open-dev-{2 * i}",
            "prompt": str(d["question"]),
            "tier": 1,
            "category": "open_qa",
            "source": NQ,
        }
        for i, d in enumerate(rows)
    ]


def _gsm8k(path: Path, corpus: Path) -> list[dict[str, object]]:
    in_corpus = {str(d["prompt"]) for d in _lines(corpus) if str(d["source"]).startswith(GSM8K)}
    out: list[dict[str, object]] = []
    extra = 0
    for i, d in enumerate(_lines(path)):
        question, steps = str(d["question"]), str(d["answer"]).count("<<")
        if question not in in_corpus:
            extra += 1
            if extra % 3:
                continue
        out.append(
            {
                "id": f"gsm8k-train-{i}",
                "prompt": question,
                "tier": 1 if steps <= 2 else 2,
                "category": "simple_math_qa" if steps <= 2 else "multistep_math_word_problem",
                "source": f"{GSM8K} (steps={steps})",
            }
        )
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agieval", type=Path, required=True, help="AGIEval's data/v1 directory")
    ap.add_argument("--nq", type=Path, required=True, help="NQ-open.dev.jsonl")
    ap.add_argument("--gsm8k", type=Path, required=True, help="GSM8K's train.jsonl")
    ap.add_argument("--corpus", type=Path, required=True, help="shared tier-train.jsonl")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    rows = _agieval(args.agieval) + _nq(args.nq) + _gsm8k(args.gsm8k, args.corpus)
    with args.output.open("w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    tiers = [sum(r["tier"] == t for r in rows) for t in (1, 2, 3)]
    print(f"{len(rows)} rows, tiers 1/2/3: {tiers[0]}/{tiers[1]}/{tiers[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
