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
_NORM_TABLE, _CLASS_TABLE = _NORM.tobytes(), _CLASS.tobytes()  # for bytes.translate
# ASCII lower-casing (what str.lower does to ASCII) and then _NORM, as one table.
_LOWER_NORM_TABLE = _NORM_TABLE.lower()
_WINDOW_CHARS = HEAD_CHARS + TAIL_CHARS

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
    word_doc: npt.NDArray[np.int64]  # the document of each token of parts[0]

    def doc_ids(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """All buckets and the document each belongs to (for training)."""
        buckets, docs = [], []
        for bk, starts in self.parts:
            lens = np.diff(np.append(starts, len(bk)))
            buckets.append(bk)
            docs.append(np.repeat(np.arange(self.size, dtype=np.int64), lens))
        return np.concatenate(buckets), np.concatenate(docs)


_pow_cache: list[npt.NDArray[np.uint64]] = []


def _powers(
    n: int,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """P**i and P**-i mod 2**64 for i < n, and the sums of the first i powers for i <= n,
    grown on demand and kept for the next batch."""
    if not _pow_cache or len(_pow_cache[0]) < n:
        size = 1 << max(16, (n - 1).bit_length())  # doubling: batches vary a little in size
        pw = _pow_series(_P, size)
        sums = np.zeros(size + 1, dtype=np.uint64)
        with np.errstate(over="ignore"):
            np.cumsum(pw, out=sums[1:])
        _pow_cache[:] = [pw, _pow_series(_P_INV, size), sums]
    return _pow_cache[0][:n], _pow_cache[1][:n], _pow_cache[2][: n + 1]


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


def _tokens(
    data: bytes, b: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64], n_docs: int
) -> _Tokens:
    """Split at blanks, make every symbol byte its own token, and hash every token.

    ``data`` is ``b`` as bytes: the byte tables are applied with `bytes.translate`, a tenth of
    the cost of a numpy gather. A token's hash is its bytes' polynomial, read off one prefix
    sum over the batch (one uint64 pass per step, into one buffer: these arrays are the
    batch's largest, and fresh ones cost page faults). Each byte counts as its value plus
    one (so a NUL still counts); the "plus one" part of a prefix is a sum of powers alone,
    read from a table (`_powers`), which saves a pass over the batch.
    """
    cls = np.frombuffer(data.translate(_CLASS_TABLE), dtype=np.uint8)
    n = len(cls)
    edge = np.empty(n + 1, dtype=bool)  # edge[i]: bytes i-1 and i differ in class
    edge[0] = edge[n] = True
    np.not_equal(cls[1:], cls[:-1], out=edge[1:n])
    sym = cls == 2  # a symbol is a token of its own: both its sides are edges
    word = cls != 0
    first = np.flatnonzero(word & (edge[:n] | sym))
    last = np.flatnonzero(word & (edge[1:] | sym))
    pw, inv, pw_sums = _powers(n)
    prefix = np.empty(n + 1, dtype=np.uint64)  # prefix[i]: sum of b[j] * P**j for j < i
    prefix[0] = 0
    with np.errstate(over="ignore"):
        prefix[1:] = b  # widened in place: a mixed-type multiply casts slower
        np.multiply(prefix[1:], pw, out=prefix[1:])
        np.cumsum(prefix[1:], out=prefix[1:])
        end = last + 1
        # np.take rather than fancy indexing here and below: the same values, cheaper.
        take = np.take
        h = take(prefix, end) - take(prefix, first) + (take(pw_sums, end) - take(pw_sums, first))
        h *= take(inv, first)
    starts = np.searchsorted(first, offsets, side="left")
    doc = np.repeat(np.arange(n_docs, dtype=np.int64), np.diff(np.append(starts, len(first))))
    return _Tokens(h, first, last, doc, starts)


def _encode(
    texts: Sequence[str], chars: npt.NDArray[np.int64]
) -> tuple[bytes, npt.NDArray[np.int64]]:
    """Lower-case, window and join the batch into one byte string, and each document's offset.

    Only a head and a tail window of a long prompt are kept. Every document ends in a NUL byte,
    which is blank, so no token crosses two documents; four more NULs of padding at the end
    (for look-ahead) belong to no document. The batch is lower-cased and encoded as one string
    (NUL breaks the one context `str.lower` reads, a final sigma's neighbours), so only a
    non-ASCII window pays for a second encoding, to learn its length in bytes.
    """
    windows = list(texts)
    for i in np.flatnonzero(chars > _WINDOW_CHARS).tolist():
        t = windows[i]
        windows[i] = f"{t[:HEAD_CHARS]}\n{t[-TAIL_CHARS:]}"
    joined = "\0".join(windows)
    if joined.isascii():  # a byte per character, lower-cased with the one translate pass
        data = (joined + "\0\0\0\0\0").encode("ascii").translate(_LOWER_NORM_TABLE)
        lens = np.minimum(chars, _WINDOW_CHARS + 1)
    else:
        data = (joined.lower() + "\0\0\0\0\0").encode("utf-8", "replace").translate(_NORM_TABLE)
        lens = np.array(
            [len(w) if w.isascii() else len(w.lower().encode("utf-8", "replace")) for w in windows],
            dtype=np.int64,
        )
    offsets = np.zeros(len(windows), dtype=np.int64)
    np.cumsum(lens[:-1] + 1, out=offsets[1:])
    return data, offsets


def _text_tokens(text: str) -> _Tokens:
    """The tokens of one already normalised ASCII text (for the tables built at import)."""
    data = text.encode() + b"\0"
    return _tokens(data, np.frombuffer(data, dtype=np.uint8), np.zeros(1, dtype=np.int64), 1)


def _lexicon_table() -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64]]:
    """Sorted token hashes of every lexicon word and the lexicon each belongs to."""
    words = [(w, i) for i, ws in enumerate(_LEXICONS.values()) for w in ws.split()]
    h = _text_tokens(" ".join(w for w, _ in words)).hashes
    groups = np.array([i for _, i in words], dtype=np.int64)
    order = np.argsort(h, kind="stable")
    return h[order], groups[order]


def _bucket_mask(hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
    """True at the bucket of each hash: a token outside these buckets is not in the list, so
    only the few inside are looked up (one table read per token instead of a binary search)."""
    mask = np.zeros(1 << HASH_BITS, dtype=bool)
    mask[_mix(hashes)] = True
    return mask


_LEX_HASH, _LEX_GROUP = _lexicon_table()
_LEX_BUCKETS = _bucket_mask(_LEX_HASH)


def _lexicon_counts(
    tok: _Tokens, buckets: npt.NDArray[np.int64], n_docs: int
) -> npt.NDArray[np.float64]:
    """Per-document count of tokens in each lexicon (a word may be in several lexicons)."""
    n_lex = len(_LEXICONS)
    cand = np.flatnonzero(np.take(_LEX_BUCKETS, buckets))
    hashes = tok.hashes[cand]
    lo = np.searchsorted(_LEX_HASH, hashes, side="left")
    hi = np.searchsorted(_LEX_HASH, hashes, side="right")
    hit = np.flatnonzero(hi > lo)
    out = np.zeros(n_docs * n_lex, dtype=np.float64)
    # Most words are in one lexicon; loop over the (short) run of duplicates for the rest.
    for k in range(int((hi - lo).max(initial=0))):
        sel = hit[hi[hit] - lo[hit] > k]
        out += np.bincount(
            tok.doc[cand[sel]] * n_lex + _LEX_GROUP[lo[sel] + k], minlength=n_docs * n_lex
        )
    return out.reshape(n_docs, n_lex)


def featurize(texts: Sequence[str]) -> FeatureBatch:
    """Turn a batch of prompts into hashed tokens and dense features."""
    n_docs = len(texts)
    chars = np.array(list(map(len, texts)), dtype=np.int64)
    data, offsets = _encode(texts, chars)
    b = np.frombuffer(data, dtype=np.uint8)
    tok = _tokens(data, b, offsets, n_docs)
    # Bigrams pair each token with the next one of its document: every pair but the ones that
    # start at a document's last token.
    same = np.ones(max(len(tok.doc) - 1, 0), dtype=bool)
    ends = tok.starts[1:] - 1
    same[ends[(ends >= 0) & (ends < len(same))]] = False
    same = np.flatnonzero(same)
    with np.errstate(over="ignore"):
        bigram = np.take(tok.hashes, same) * _BIGRAM
        bigram += np.take(tok.hashes, same + 1)
        bigram ^= _SALT_BIGRAM
    bi_starts = np.searchsorted(same, tok.starts, side="left")
    unigrams = _mix(tok.hashes)
    parts: tuple[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]], ...] = (
        (unigrams, tok.starts),
        (_mix(bigram), bi_starts),
    )
    n_hashed = sum(np.diff(np.append(st, len(bk))) for bk, st in parts)
    scale = (1.0 / np.sqrt(np.maximum(n_hashed, 1))).astype(np.float32)
    dense = _dense(chars, data, b, offsets, tok, unigrams)
    return FeatureBatch(parts, scale, dense, n_docs, b, tok.first, tok.last, tok.doc)


def _byte_codes() -> tuple[bytes, int]:
    """Byte -> dense-feature column: one per counted byte, then 'other symbol', then none."""
    code = np.full(256, len(_COUNTED) + 1, dtype=np.uint8)
    code[_CLASS == 2] = len(_COUNTED)
    for j, c in enumerate(_COUNTED):
        code[ord(c)] = j
    return code.tobytes(), len(_COUNTED) + 2


_BYTE_CODE, _N_CODES = _byte_codes()
_QMARK = ord("?")


def _dense(
    chars: npt.NDArray[np.int64],
    data: bytes,
    b: npt.NDArray[np.uint8],
    offsets: npt.NDArray[np.int64],
    tok: _Tokens,
    unigrams: npt.NDArray[np.int64],
) -> npt.NDArray[np.float32]:
    """Dense shape features: lengths, byte-class shares, counted bytes, lexicons, question form.

    Line structure (newline counts, "a) ..." choice lines, list lines) was tried and removed: it
    mostly identified the templates of the corpus's tier-1 sources (T0, MMLU), and dropping it
    raised leave-one-repository-out macro-F1 from 0.53 to 0.56 (docs/tiering.md).
    """
    n_docs = len(chars)
    n_bytes = np.diff(np.append(offsets, len(b) - 4)).astype(np.float64)
    # Histogram of the symbol bytes only (a minority), not of every byte; padding has no code.
    code = np.frombuffer(data.translate(_BYTE_CODE), dtype=np.uint8)
    pos = np.flatnonzero(code <= len(_COUNTED))
    doc = np.searchsorted(offsets, pos, side="right") - 1
    hist = np.bincount(doc * _N_CODES + np.take(code, pos), minlength=n_docs * _N_CODES)
    hist = hist.reshape(n_docs, _N_CODES).astype(np.float64)
    counted, other_sym = hist[:, : len(_COUNTED)], hist[:, len(_COUNTED)]
    per_byte = np.maximum(n_bytes, 1.0)
    n_tok = np.diff(np.append(tok.starts, len(tok.doc))).astype(np.float64)
    has_tok = n_tok > 0
    q_start = np.zeros(n_docs, dtype=bool)
    q_end = np.zeros(n_docs, dtype=bool)
    if len(tok.hashes):  # a batch may hold no token at all (a prompt of NULs)
        first_tok = np.minimum(tok.starts, len(tok.hashes) - 1)
        q_start = _is_question_word(tok.hashes[first_tok], unigrams[first_tok]) & has_tok
        last_tok = np.maximum(np.append(tok.starts[1:], len(tok.doc)) - 1, 0)
        q_end = (b[tok.last[last_tok]] == _QMARK) & has_tok
    dense = np.column_stack(
        [
            np.log1p(chars.astype(np.float64)),
            np.log1p(n_tok),
            (counted.sum(axis=1) - counted[:, _COUNTED.index("0")] + other_sym) / per_byte,
            counted[:, _COUNTED.index("0")] / per_byte,
            np.log1p(counted),
            np.log1p(_lexicon_counts(tok, unigrams, n_docs)),
            q_start,
            q_end,
        ]
    )
    return dense.astype(np.float32)


def _is_question_word(
    hashes: npt.NDArray[np.uint64], buckets: npt.NDArray[np.int64]
) -> npt.NDArray[np.bool_]:
    """Whether each token is one of the question words."""
    out = np.zeros(len(hashes), dtype=bool)
    cand = np.flatnonzero(_QUESTION_BUCKETS[buckets])
    at = np.minimum(np.searchsorted(_QUESTION_HASHES, hashes[cand]), len(_QUESTION_HASHES) - 1)
    out[cand] = _QUESTION_HASHES[at] == hashes[cand]
    return out


# Sorted, each once (np.sort and a run check: np.unique imports numpy.ma, 6 ms of start-up).
_QUESTION_HASHES = np.sort(
    _text_tokens("what who when where which how why is are does do can could should would").hashes
)
_QUESTION_HASHES = _QUESTION_HASHES[np.append(True, _QUESTION_HASHES[1:] != _QUESTION_HASHES[:-1])]
_QUESTION_BUCKETS = _bucket_mask(_QUESTION_HASHES)
