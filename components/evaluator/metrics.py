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
    # "<path>: <reason>" when the served model could not be loaded or run and
    # evaluator.unloadable_baseline is "ignore" (with "fail" there is no verdict): judged on min_bleu alone.
    baseline_unloadable: Optional[str] = None
    # Percent of the eval sentences with protected spans whose output keeps them exactly (None: no
    # such sentence), and the floor evaluator.min_placeholder_fidelity (0 = no floor).
    placeholder_fidelity: Optional[float] = None
    min_placeholder_fidelity: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def decide(candidate_bleu: float, baseline_bleu: Optional[float], tolerance: float, min_bleu: float,
           non_finite: Optional[str] = None, baseline_unloadable: Optional[str] = None,
           placeholder_fidelity: Optional[float] = None, min_placeholder_fidelity: float = 0.0) -> Blessing:
    """Bless when the candidate is finite, BLEU >= min_bleu, its placeholder fidelity is not below
    min_placeholder_fidelity (when that is > 0 and there was a sentence to measure it on) and its
    BLEU not lower than the served model's by more than tolerance (a served model that could not
    be loaded, with evaluator.unloadable_baseline "ignore", counts as none)."""
    def blessing(blessed: bool, reason: str) -> Blessing:
        return Blessing(blessed, reason, candidate_bleu, baseline_bleu, tolerance, min_bleu,
                        non_finite, baseline_unloadable, placeholder_fidelity, min_placeholder_fidelity)

    if non_finite:
        return blessing(False, f"the candidate is not finite: {non_finite}")
    if not math.isfinite(candidate_bleu):
        return blessing(False, f"the candidate is not finite: BLEU {candidate_bleu}")
    if candidate_bleu < min_bleu:
        return blessing(False, f"BLEU {candidate_bleu:.2f} is below evaluator.min_bleu {min_bleu:.2f}")
    if min_placeholder_fidelity > 0 and placeholder_fidelity is not None \
            and placeholder_fidelity < min_placeholder_fidelity:
        floor = f"{min_placeholder_fidelity:.1f}" if round(min_placeholder_fidelity, 1) == min_placeholder_fidelity \
            else f"{min_placeholder_fidelity:g}"
        digits = 1  # enough digits that the two numbers read differently (99.95% is below 100.0%)
        while digits < 4 and round(placeholder_fidelity, digits) >= min_placeholder_fidelity:
            digits += 1
        return blessing(False, f"placeholder fidelity {placeholder_fidelity:.{digits}f}% is below "
                               f"evaluator.min_placeholder_fidelity {floor}%")
    if baseline_bleu is None and baseline_unloadable:
        return blessing(True, f"the served model could not be loaded ({baseline_unloadable}), so it is "
                              f"treated as absent (evaluator.unloadable_baseline: ignore); BLEU passes "
                              f"evaluator.min_bleu")
    if baseline_bleu is None:
        return blessing(True, "no model in service; BLEU passes evaluator.min_bleu")
    if candidate_bleu < baseline_bleu - tolerance:
        return blessing(False, f"BLEU {candidate_bleu:.2f} is worse than the served model's "
                               f"{baseline_bleu:.2f} by more than evaluator.tolerance {tolerance:.2f}")
    return blessing(True, f"BLEU {candidate_bleu:.2f} vs served {baseline_bleu:.2f} "
                          f"(tolerance {tolerance:.2f})")
