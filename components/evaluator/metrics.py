"""Corpus-level translation metrics (sacrebleu) and the blessing rule."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

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


@dataclass(frozen=True)
class Blessing:
    blessed: bool
    reason: str
    candidate_bleu: float
    baseline_bleu: Optional[float]
    tolerance: float
    min_bleu: float
    # Why the candidate cannot be blessed whatever its BLEU: NaN/inf in its weights or metrics.
    non_finite: Optional[str] = None
    # "<path>: <reason>" when the served model could not be loaded or run: judged on min_bleu alone.
    baseline_unloadable: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


def decide(candidate_bleu: float, baseline_bleu: Optional[float], tolerance: float, min_bleu: float,
           non_finite: Optional[str] = None, baseline_unloadable: Optional[str] = None) -> Blessing:
    """Bless when the candidate is finite, BLEU >= min_bleu and not lower than the served model's by
    more than tolerance (an unloadable served model counts as none)."""
    def blessing(blessed: bool, reason: str) -> Blessing:
        return Blessing(blessed, reason, candidate_bleu, baseline_bleu, tolerance, min_bleu,
                        non_finite, baseline_unloadable)

    if non_finite:
        return blessing(False, f"the candidate is not finite: {non_finite}")
    if not math.isfinite(candidate_bleu):
        return blessing(False, f"the candidate is not finite: BLEU {candidate_bleu}")
    if candidate_bleu < min_bleu:
        return blessing(False, f"BLEU {candidate_bleu:.2f} is below evaluator.min_bleu {min_bleu:.2f}")
    if baseline_bleu is None and baseline_unloadable:
        return blessing(True, f"the served model could not be loaded ({baseline_unloadable}), so it is "
                              f"treated as absent; BLEU passes evaluator.min_bleu")
    if baseline_bleu is None:
        return blessing(True, "no model in service; BLEU passes evaluator.min_bleu")
    if candidate_bleu < baseline_bleu - tolerance:
        return blessing(False, f"BLEU {candidate_bleu:.2f} is worse than the served model's "
                               f"{baseline_bleu:.2f} by more than evaluator.tolerance {tolerance:.2f}")
    return blessing(True, f"BLEU {candidate_bleu:.2f} vs served {baseline_bleu:.2f} "
                          f"(tolerance {tolerance:.2f})")
