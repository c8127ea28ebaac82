"""The blessing rule, over the corpus-level metrics of components/text/metrics.py."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

from components.text.metrics import Scores, score  # noqa: F401 (the evaluator's metrics)


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
