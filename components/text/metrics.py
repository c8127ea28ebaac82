"""Corpus-level translation metrics (sacrebleu): the evaluator scores the exported model with them,
and the trainer chooses its checkpoint with them (trainer.select_by)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import sacrebleu


@dataclass(frozen=True)
class Scores:
    bleu: float
    chrf: float
    exact_match: float
    count: int

    def to_dict(self) -> dict:
        return asdict(self)


def score(hypotheses: Sequence[str], references: Sequence[str]) -> Scores:
    """Corpus BLEU and chrF (sacrebleu defaults) and the exact-match rate, in percent."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not references:
        return Scores(bleu=0.0, chrf=0.0, exact_match=0.0, count=0)
    bleu = sacrebleu.corpus_bleu(list(hypotheses), [list(references)])
    chrf = sacrebleu.corpus_chrf(list(hypotheses), [list(references)])
    exact = sum(h.strip() == r.strip() for h, r in zip(hypotheses, references)) / len(references)
    return Scores(bleu=round(bleu.score, 4), chrf=round(chrf.score, 4),
                  exact_match=round(100.0 * exact, 4), count=len(references))
