"""Feature extraction: deterministic, per-document, and bounded by the window."""

from __future__ import annotations

import numpy as np

from tierline.tiering.features import DENSE_NAMES, HEAD_CHARS, TAIL_CHARS, featurize


def _doc_buckets(texts: list[str], i: int) -> list[int]:
    fb = featurize(texts)
    out = []
    for buckets, starts in fb.parts:
        end = starts[i + 1] if i + 1 < len(starts) else len(buckets)
        out.extend(sorted(buckets[starts[i] : end].tolist()))
    return out


def test_same_text_same_features_in_any_batch() -> None:
    """A document's features do not depend on its neighbours in the batch."""
    a = "Summarize this email: the meeting moved to Friday."
    b = "Prove that there are infinitely many primes $p \\equiv 3 \\pmod 4$."
    alone = featurize([a])
    batched = featurize([b, a, "x"])
    assert _doc_buckets([a], 0) == _doc_buckets([b, a, "x"], 1)
    assert np.array_equal(alone.dense[0], batched.dense[1])
    assert alone.scale[0] == batched.scale[1]


def test_dense_features_see_math_and_code() -> None:
    """LaTeX and code markers land in the dense features that name them."""
    fb = featurize(["Let $x^2 = \\frac{1}{2}$.", "```python\ndef f(x):\n    return x\n```", "hi"])
    col = {name: i for i, name in enumerate(DENSE_NAMES)}
    assert fb.dense[0, col["count['$']"]] > 0 and fb.dense[2, col["count['$']"]] == 0
    assert fb.dense[1, col["count['`']"]] > 0 and fb.dense[1, col["lex[code]"]] > 0


def test_empty_and_blank_prompts() -> None:
    """Empty and whitespace-only prompts featurize without error and without tokens."""
    fb = featurize(["", "   \n", "word"])
    assert fb.size == 3
    counts = [np.diff(np.append(st, len(bk))) for bk, st in fb.parts]
    assert counts[0].tolist() == [0, 0, 1]


def test_long_prompt_tokenises_only_its_window() -> None:
    """Cost per job is bounded: a huge prompt yields no more tokens than its head and tail."""
    long = "word " * 100_000
    fb = featurize([long])
    n_tokens = len(fb.parts[0][0])
    assert n_tokens <= (HEAD_CHARS + TAIL_CHARS) // 2 + 2
    assert fb.dense[0, DENSE_NAMES.index("log_chars")] > np.log(400_000)
