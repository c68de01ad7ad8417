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


def _reference_buckets(text: str) -> list[int]:
    """Each unigram's bucket, computed the slow way from the definition in features.py: lower
    case, digits folded to '0', words split at blanks, every symbol byte a token of its own,
    a token's hash the sum of (byte + 1) * P**offset mod 2**64, then multiply-shift."""
    data = text.lower().encode("utf-8", "replace")
    data = bytes(ord("0") if 0x31 <= c <= 0x39 else c for c in data)
    blank = {0, 9, 10, 11, 12, 13, 32}

    def is_word(c: int) -> bool:
        return c >= 128 or c == ord("_") or chr(c).isdigit() or "a" <= chr(c) <= "z"

    tokens: list[bytes] = []
    word = bytearray()
    for c in data:
        if is_word(c):
            word.append(c)
            continue
        if word:
            tokens.append(bytes(word))
            word.clear()
        if c not in blank:
            tokens.append(bytes([c]))
    if word:
        tokens.append(bytes(word))
    p, mix, mask = 0x100000001B3, 0x9E3779B97F4A7C15, 2**64 - 1
    out = []
    for token in tokens:
        h = sum((c + 1) * pow(p, j, 2**64) for j, c in enumerate(token)) & mask
        h ^= h >> 31
        out.append(((h * mix) & mask) >> (64 - 18))
    return out


def test_token_buckets_follow_their_definition() -> None:
    """The vectorised hashing (prefix sums, power tables, the ASCII fast path) gives every
    token the bucket its definition does: mixed case, digits, symbols, NULs, non-ASCII."""
    texts = [
        "Summarize THIS e-mail: order #4521 ships Friday (2 boxes)!",
        "naïve café Σ ΟΔΟΣ 日本語 x_y",
        "a\u0000b  \t tabs\nand\rreturns; {braces} $x^2$",
        "",
        "9 8 7 100 0",
    ]
    for batch in (texts, texts[:1], [texts[0], texts[4]]):  # with and without non-ASCII
        fb = featurize(batch)
        buckets, starts = fb.parts[0]
        ends = [*starts[1:].tolist(), len(buckets)]
        for i, text in enumerate(batch):
            assert buckets[starts[i] : ends[i]].tolist() == _reference_buckets(text), text


def test_an_ascii_batch_featurizes_as_a_mixed_one() -> None:
    """An all-ASCII batch takes a shortcut (one translate lower-cases it); its documents get
    the features they get in a batch that does not (a non-ASCII neighbour)."""
    a = "Write a PYTHON Function that Parses 12 CSV rows; return {'total': 3}?"
    ascii_only = featurize([a, "plain words"])
    mixed = featurize([a, "café"])
    assert _doc_buckets([a, "plain words"], 0) == _doc_buckets([a, "café"], 0)
    assert np.array_equal(ascii_only.dense[0], mixed.dense[0])
    assert ascii_only.scale[0] == mixed.scale[0]
