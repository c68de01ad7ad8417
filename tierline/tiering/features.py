"""Feature extraction for the tier classifier, vectorised over a batch of prompts.

A prompt becomes two things:

* **hashed tokens**: word unigrams and bigrams (symbols count as words, digits fold to ``0``),
  each hashed into one of ``2**HASH_BITS`` buckets. Character n-grams were tried and dropped:
  they more than tripled the hashed tokens per job (and the time) for no measured gain. The classifier sums one weight row per token, so the hashed part of a
  score is a gather plus a segmented sum -- no per-token Python.
* **dense features**: a few dozen counts that describe the *shape* of a job (length, code, LaTeX,
  constraints, question form, task verbs). They are what carries over to prompt sources never seen
  in training, so the trainer regularises them far less than the hashed part.

Everything runs in numpy on the UTF-8 bytes of the whole batch at once. Word hashes come from a
prefix polynomial hash (mod 2**64, where every odd multiplier is invertible), so hashing a token
costs a few array operations whatever its length. Only a head and a tail window of a long prompt
are tokenised; its full length still reaches the dense features. That keeps the cost per job
bounded: the instruction sits at the start and the question at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "DENSE_NAMES",
    "HASH_BITS",
    "FeatureBatch",
    "featurize",
]

HASH_BITS = 18
HEAD_CHARS = 1200
TAIL_CHARS = 400

_P = np.uint64(0x100000001B3)  # FNV prime: odd, so invertible mod 2**64
_P_INV = np.uint64(pow(0x100000001B3, -1, 2**64))
_MIX = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier for multiply-shift bucketing
_BIGRAM = np.uint64(0xC2B2AE3D27D4EB4F)
_SHIFT = np.uint64(64 - HASH_BITS)
# A salt keeps bigrams from sharing buckets with unigrams systematically.
_SALT_BIGRAM = np.uint64(0x27D4EB2F165667C5)


def _byte_tables() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Byte -> normalised byte (digits fold to '0') and byte -> class (0 space, 1 word, 2 symbol)."""
    norm = np.arange(256, dtype=np.uint8)
    norm[ord("1") : ord("9") + 1] = ord("0")
    cls = np.full(256, 2, dtype=np.uint8)
    cls[[9, 10, 11, 12, 13, 32, 0]] = 0
    for lo, hi in (("a", "z"), ("0", "9")):
        cls[ord(lo) : ord(hi) + 1] = 1
    cls[ord("_")] = 1
    cls[128:] = 1  # UTF-8 continuation and lead bytes belong to words
    return norm, cls


_NORM, _CLASS = _byte_tables()

# Single bytes counted per document (on the normalised window); each becomes a dense feature.
_COUNTED = "$\\{}=^?`0;#*|-:"

# Word lists whose per-document counts are dense features. They name the job *type*, which is
# what transfers between prompt sources; the hashed n-grams learn the rest.
# Each value is a space-separated word list.
_LEXICONS: dict[str, str] = {
    "summarize": (
        "summarize summarise summary summarizing tldr tl headline gist recap shorten "
        "condense bullet"
    ),
    "classify": (
        "classify categorize categorise sentiment label category spam positive negative "
        "neutral tag rating topic"
    ),
    "extract": "extract fields json invoice parse table csv names dates address phone email list",
    "factoid": "what who when where which capital define meaning name does is are",
    "code": (
        "def return class function python javascript sql code implement bug api import "
        "const int void self script typescript rust java c regex query array string null"
    ),
    "math": (
        "integer integers compute real polynomial triangle probability equation sqrt frac "
        "prime modulo mod cdot sum number numbers circle area divisible positive digits "
        "left right"
    ),
    "proof": (
        "prove proof show theorem lemma rigorous rigorously conjecture derive bound "
        "asymptotic optimal complexity exists all infinitely iff suppose let"
    ),
    "research": (
        "novel research open unsolved frontier state art literature hypothesis formalize "
        "formalise framework design tradeoffs trade architecture propose"
    ),
    "science": (
        "energy mass velocity kg mol temperature pressure electron wavelength quantum "
        "joules force charge field reaction entropy frequency m s k j"
    ),
    "constraint": (
        "must should exactly least most words without only ensure format paragraphs tone "
        "style requirements each no not avoid include limit under constraints budget"
    ),
    "writing": (
        "write essay story poem blog article letter narrative character persuasive draft "
        "speech script novel chapter"
    ),
    "reasoning": (
        "explain why compare analyze analyse evaluate tradeoffs step steps plan strategy "
        "reason reasoning pros cons"
    ),
    "conversational": "i my me we our you your please thanks can could hi hey help pls",
    "choices": "a b c d options choose choices answer correct option yes true false",
    "hard": (
        "hardest difficult challenging olympiad competition advanced graduate phd expert "
        "nontrivial tricky edge cases"
    ),
}

DENSE_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_tokens",
    "frac_symbols",
    "frac_digits",
    *(f"count[{c!r}]" for c in _COUNTED),
    *(f"lex[{k}]" for k in _LEXICONS),
    "starts_with_question_word",
    "ends_with_question",
)


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """The features of a batch of prompts, ready for a gather-and-sum scorer.

    Each of ``parts`` is ``(buckets, starts)``: the hashed tokens of one kind, grouped by document
    in order, and the index where each document's run begins (``np.add.reduceat`` segments).
    ``scale`` normalises a document's summed token weights by the square root of its token count;
    ``dense`` holds one row of unstandardised dense features per document.
    """

    parts: tuple[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]], ...]
    scale: npt.NDArray[np.float32]
    dense: npt.NDArray[np.float32]
    size: int
    window: npt.NDArray[np.uint8]  # the normalised bytes that were tokenised
    word_first: npt.NDArray[np.int64]  # byte span of each token of parts[0]
    word_last: npt.NDArray[np.int64]

    def doc_ids(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """All buckets and the document each belongs to (for training)."""
        buckets, docs = [], []
        for bk, starts in self.parts:
            lens = np.diff(np.append(starts, len(bk)))
            buckets.append(bk)
            docs.append(np.repeat(np.arange(self.size, dtype=np.int64), lens))
        return np.concatenate(buckets), np.concatenate(docs)


_pow_cache: list[npt.NDArray[np.uint64]] = []


def _powers(n: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """P**i and P**-i mod 2**64 for i < n, grown on demand and kept for the next batch."""
    if not _pow_cache or len(_pow_cache[0]) < n:
        size = max(n, 1 << 16)
        _pow_cache[:] = [_pow_series(_P, size), _pow_series(_P_INV, size)]
    return _pow_cache[0][:n], _pow_cache[1][:n]


def _pow_series(base: np.uint64, n: int) -> npt.NDArray[np.uint64]:
    """base**i for i < n (wrapping), by doubling: O(log n) numpy multiplies."""
    out = np.ones(n, dtype=np.uint64)
    step, span = base, 1
    while span < n:
        with np.errstate(over="ignore"):
            out[span : 2 * span] = out[: min(span, n - span)] * step
            step = step * step
        span *= 2
    return out


def _window(text: str) -> str:
    """The part of a prompt that is tokenised: all of it, or its head and tail."""
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]


def _mix(h: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    """Multiply-shift a 64-bit hash into a bucket index."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(31))
        out: npt.NDArray[np.int64] = ((h * _MIX) >> _SHIFT).astype(np.int64)
    return out


@dataclass(frozen=True, slots=True)
class _Tokens:
    """Tokens of a batch: 64-bit hashes, byte spans, document ids and per-document runs."""

    hashes: npt.NDArray[np.uint64]
    first: npt.NDArray[np.int64]  # offset of the first byte
    last: npt.NDArray[np.int64]  # offset of the last byte
    doc: npt.NDArray[np.int64]
    starts: npt.NDArray[np.int64]  # index of each document's first token


def _tokens(b: npt.NDArray[np.uint8], byte_doc: npt.NDArray[np.int64], n_docs: int) -> _Tokens:
    """Split at blanks, make every symbol byte its own token, and hash every token."""
    cls = _CLASS[b]
    prev = np.empty_like(cls)
    prev[0] = 0
    prev[1:] = cls[:-1]
    nxt = np.empty_like(cls)
    nxt[-1] = 0
    nxt[:-1] = cls[1:]
    sym = cls == 2
    first = np.flatnonzero((cls != 0) & ((cls != prev) | sym))
    last = np.flatnonzero((cls != 0) & ((cls != nxt) | sym))
    pw, inv = _powers(len(b))
    with np.errstate(over="ignore"):
        prefix = np.cumsum((b.astype(np.uint64) + np.uint64(1)) * pw)
        before = prefix[np.maximum(first - 1, 0)]
        before[first == 0] = 0
        h = (prefix[last] - before) * inv[first]
    doc = byte_doc[first]
    starts = np.searchsorted(doc, np.arange(n_docs), side="left")
    return _Tokens(h, first, last, doc, starts)


def _encode(
    texts: Sequence[str],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Lower-case, window and join the batch into one byte array.

    Returns the bytes, each document's offset, and each byte's document. Every document ends in
    a NUL byte, which is blank, so no token crosses two documents; four more NULs of padding at
    the end (for look-ahead) belong to no document.
    """
    parts = [_window(t).lower().encode("utf-8", "replace") for t in texts]
    lens = np.fromiter((len(p) + 1 for p in parts), dtype=np.int64, count=len(parts))
    offsets = np.zeros(len(parts), dtype=np.int64)
    np.cumsum(lens[:-1], out=offsets[1:])
    raw = np.frombuffer(b"\0".join(parts) + b"\0" * 5, dtype=np.uint8)
    byte_doc = np.repeat(np.arange(len(parts), dtype=np.int64), lens)
    return _NORM[raw], offsets, byte_doc


def _lexicon_table() -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """Sorted token hashes of every lexicon word and the lexicon each belongs to."""
    words = [(w, i) for i, ws in enumerate(_LEXICONS.values()) for w in ws.split()]
    text = " ".join(w for w, _ in words)
    b = np.frombuffer(text.encode(), dtype=np.uint8)
    h = _tokens(_NORM[b], np.zeros(len(b), dtype=np.int64), 1).hashes
    groups = np.array([i for _, i in words], dtype=np.int64)
    order = np.argsort(h, kind="stable")
    return h[order], groups[order]


_LEX_HASH, _LEX_GROUP = _lexicon_table()


def _lexicon_counts(tok: _Tokens, n_docs: int) -> npt.NDArray[np.float64]:
    """Per-document count of tokens in each lexicon (a word may be in several lexicons)."""
    n_lex = len(_LEXICONS)
    lo = np.searchsorted(_LEX_HASH, tok.hashes, side="left")
    hi = np.searchsorted(_LEX_HASH, tok.hashes, side="right")
    hit = np.flatnonzero(hi > lo)
    out = np.zeros(n_docs * n_lex, dtype=np.float64)
    # Most words are in one lexicon; loop over the (short) run of duplicates for the rest.
    for k in range(int((hi - lo).max(initial=0))):
        sel = hit[hi[hit] - lo[hit] > k]
        out += np.bincount(tok.doc[sel] * n_lex + _LEX_GROUP[lo[sel] + k], minlength=n_docs * n_lex)
    return out.reshape(n_docs, n_lex)


def featurize(texts: Sequence[str]) -> FeatureBatch:
    """Turn a batch of prompts into hashed tokens and dense features."""
    n_docs = len(texts)
    b, offsets, byte_doc = _encode(texts)
    tok = _tokens(b, byte_doc, n_docs)
    same = np.flatnonzero(tok.doc[1:] == tok.doc[:-1])
    with np.errstate(over="ignore"):
        bigram = (tok.hashes[same] * _BIGRAM + tok.hashes[same + 1]) ^ _SALT_BIGRAM
    bi_starts = np.searchsorted(tok.doc[same], np.arange(n_docs), side="left")
    parts: tuple[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]], ...] = (
        (_mix(tok.hashes), tok.starts),
        (_mix(bigram), bi_starts),
    )
    n_hashed = sum(np.diff(np.append(st, len(bk))) for bk, st in parts)
    scale = (1.0 / np.sqrt(np.maximum(n_hashed, 1))).astype(np.float32)
    dense = _dense(texts, b, offsets, byte_doc, tok)
    return FeatureBatch(parts, scale, dense, n_docs, b, tok.first, tok.last)


def _byte_codes() -> tuple[npt.NDArray[np.uint8], int]:
    """Byte -> dense-feature column: one per counted byte, then 'other symbol', then none."""
    code = np.full(256, len(_COUNTED) + 1, dtype=np.uint8)
    code[_CLASS == 2] = len(_COUNTED)
    for j, c in enumerate(_COUNTED):
        code[ord(c)] = j
    return code, len(_COUNTED) + 2


_BYTE_CODE, _N_CODES = _byte_codes()
_QMARK = ord("?")


def _dense(
    texts: Sequence[str],
    b: npt.NDArray[np.uint8],
    offsets: npt.NDArray[np.int64],
    byte_doc: npt.NDArray[np.int64],
    tok: _Tokens,
) -> npt.NDArray[np.float32]:
    """Dense shape features: lengths, byte-class shares, counted bytes, lexicons, question form.

    Line structure (newline counts, "a) ..." choice lines, list lines) was tried and removed: it
    mostly identified the templates of the corpus's tier-1 sources (T0, MMLU), and dropping it
    raised leave-one-repository-out macro-F1 from 0.53 to 0.56 (docs/tiering.md).
    """
    n_docs = len(texts)
    n_bytes = np.diff(np.append(offsets, len(b) - 4)).astype(np.float64)
    # Histogram of the symbol bytes only (a minority), not of every byte.
    code = _BYTE_CODE[b[: len(byte_doc)]]
    pos = np.flatnonzero(code <= len(_COUNTED))
    hist = np.bincount(byte_doc[pos] * _N_CODES + code[pos], minlength=n_docs * _N_CODES)
    hist = hist.reshape(n_docs, _N_CODES).astype(np.float64)
    counted, other_sym = hist[:, : len(_COUNTED)], hist[:, len(_COUNTED)]
    per_byte = np.maximum(n_bytes, 1.0)
    n_tok = np.diff(np.append(tok.starts, len(tok.doc))).astype(np.float64)
    has_tok = n_tok > 0
    first_tok = tok.hashes[np.minimum(tok.starts, len(tok.hashes) - 1)]
    q_start = np.isin(first_tok, _QUESTION_HASHES) & has_tok
    last_tok = np.maximum(np.append(tok.starts[1:], len(tok.doc)) - 1, 0)
    q_end = (b[tok.last[last_tok]] == _QMARK) & has_tok
    chars = np.fromiter((len(t) for t in texts), dtype=np.float64, count=n_docs)
    dense = np.column_stack(
        [
            np.log1p(chars),
            np.log1p(n_tok),
            (counted.sum(axis=1) - counted[:, _COUNTED.index("0")] + other_sym) / per_byte,
            counted[:, _COUNTED.index("0")] / per_byte,
            np.log1p(counted),
            np.log1p(_lexicon_counts(tok, n_docs)),
            q_start,
            q_end,
        ]
    )
    return dense.astype(np.float32)


def _question_hashes() -> npt.NDArray[np.uint64]:
    words = "what who when where which how why is are does do can could should would"
    b = np.frombuffer(words.encode(), dtype=np.uint8)
    return _tokens(_NORM[b], np.zeros(len(b), dtype=np.int64), 1).hashes


_QUESTION_HASHES = _question_hashes()
