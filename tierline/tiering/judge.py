"""The optional judge: a local GGUF model asked to tier the jobs the classifier is unsure of.

Off by default. On the hand-written realistic set the embedded SmolLM2-135M-Instruct judge made
low-confidence decisions worse, not better (docs/tiering.md has the numbers); a bigger local
model named in ``[tiering.judge] model_path`` may do better, and `tierline tiering eval` with a
config that enables it measures exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .vote import TierVote

if TYPE_CHECKING:
    from ..config import JudgeConfig

__all__ = ["JUDGE_PROMPT", "LlamaJudge"]

JUDGE_PROMPT = (
    "You sort requests sent to an AI assistant into three tiers by how capable a model must "
    "be to answer well.\n"
    "1 = simple: summarise, classify, extract fields, translate, short factual question.\n"
    "2 = substantial: write or debug real code, nuanced or long writing, multi-step reasoning.\n"
    "3 = frontier: research-level or olympiad problems, hard proofs, hard algorithms, "
    "ambiguous tasks with many conflicting constraints.\n"
    "Answer with the digit only."
)

# A one-character answer from the allowed set: no parsing, no refusals.
_GRAMMAR = "root ::= [123]"


class LlamaJudge:
    """Asks an in-process llama.cpp model for a tier, one job at a time (Llama is not thread-safe)."""

    def __init__(self, llama: Any, name: str, max_prompt_chars: int) -> None:
        self.llama = llama
        self.name = name
        self.max_prompt_chars = max_prompt_chars
        from llama_cpp.llama_grammar import LlamaGrammar

        self.grammar = LlamaGrammar.from_string(_GRAMMAR, verbose=False)

    @classmethod
    def from_config(cls, config: JudgeConfig) -> LlamaJudge:
        """Load the configured GGUF (default: the embedded SmolLM2) with llama-cpp-python."""
        from pathlib import Path

        from ..embedded import default_model_path

        try:
            from llama_cpp import Llama
        except ImportError as exc:  # the judge is optional; say how to get it
            from ..errors import ConfigError

            raise ConfigError(
                "[tiering.judge] needs llama-cpp-python: pip install 'tierline[local]'"
            ) from exc
        path = Path(config.model_path) if config.model_path else default_model_path()
        llama = Llama(model_path=str(path), n_ctx=config.n_ctx, verbose=False, seed=0)
        return cls(llama, path.name, config.max_prompt_chars)

    def ask(self, text: str) -> int:
        """The judge's tier for one prompt."""
        body = text if len(text) <= self.max_prompt_chars else text[: self.max_prompt_chars] + " …"
        out = self.llama.create_chat_completion(
            messages=[
                {"role": "system", "content": JUDGE_PROMPT},
                {"role": "user", "content": f"Request:\n{body}\n\nTier (1, 2 or 3)?"},
            ],
            max_tokens=1,
            temperature=0.0,
            grammar=self.grammar,
        )
        answer = str(out["choices"][0]["message"]["content"]).strip()
        return int(answer) if answer in ("1", "2", "3") else 0

    def review(self, texts: Sequence[str], votes: Sequence[TierVote]) -> list[TierVote]:
        """The judge's decision for each unsure vote, keeping the classifier's evidence."""
        out = []
        for text, vote in zip(texts, votes, strict=True):
            tier = self.ask(text)
            if tier == 0:  # unusable answer: keep the classifier's decision
                out.append(vote)
                continue
            why = f"judge {self.name}: tier {tier} (classifier unsure, {vote.why})"
            out.append(TierVote(tier, why, vote.confidence, "judge"))
        return out
