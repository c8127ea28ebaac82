"""Evaluator: score the exported SavedModel (what is served is what is measured) and decide blessing.

Inputs: the SavedModel, the preprocess output (references) and the training folder (loss curve,
eval loss); optionally the SavedModel now in service. Outputs in OUT: evaluation.json,
blessing.json, report.md, and when there is something to plot loss_curve.png and attention.png.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from components.core import io
from components.core.artifacts import Evaluation, ExportedModel, PreprocessArtifact, TrainedModel
from components.core.config import EvaluatorConfig
from components.core.cpu import cpu_cores
from components.core.errors import ArtifactError
from components.evaluator.metrics import Blessing, Scores, decide, score
from components.evaluator.report import write_report
from components.serving import load_translator

logger = logging.getLogger(__name__)

TRANSLATE_BATCH = 64
PROGRESS_EVERY_BATCHES = 50


def load_references(examples_dir: str) -> tuple[str, list[str], list[str]]:
    """(split, sources, references) from the eval split, or the training split when there is none."""
    import tensorflow as tf

    artifact = PreprocessArtifact.load(examples_dir)
    split = "eval" if artifact.split_files("eval") else "train"
    files = artifact.split_files(split)
    if not files:
        raise ArtifactError(f"{examples_dir} has no train or eval TFRecords to evaluate on")
    spec = {k: v for k, v in artifact.feature_spec().items() if k in ("source_text", "target_text")}
    sources, references = [], []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1024):
        parsed = tf.io.parse_example(record, spec)
        sources += [s.decode("utf-8") for s in parsed["source_text"].numpy()]
        references += [s.decode("utf-8") for s in parsed["target_text"].numpy()]
    if not any(sources):
        raise ArtifactError(f"{examples_dir}: the examples carry no source_text/target_text to score against")
    return split, sources, references


def translate_all(model_dir: str, sources: list[str], batch_size: int = TRANSLATE_BATCH,
                  workers: Optional[int] = None) -> list[Any]:
    """Translate every source with the SavedModel's serving_default, as a downstream service would."""
    return translate_batches(load_translator(model_dir), sources, batch_size, workers)


def translate_batches(translator: Any, sources: list[str], batch_size: int = TRANSLATE_BATCH,
                      workers: Optional[int] = None) -> list[Any]:
    """`translator.translate` over `sources` in batches, `workers` batches at a time (default: one
    per core), results in the order of `sources`.

    A greedy decode is a chain of small ops that keeps about one core busy, and `seq2seq run` pins
    TensorFlow to one thread per op when the trainer's batch splits into sub-batches, so batches
    decode side by side (docs/export.md has the measurement).
    """
    batches = [sources[start:start + batch_size] for start in range(0, len(sources), batch_size)]
    workers = max(1, min(workers or cpu_cores(), len(batches)))
    results: list[Any] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="translate") as pool:
        for done, translations in enumerate(pool.map(translator.translate, batches), start=1):
            results += translations
            if done % PROGRESS_EVERY_BATCHES == 0:
                logger.info("translated %d/%d sentences", len(results), len(sources))
    return results


def _first_line(error: BaseException) -> str:
    lines = (str(error) or "").strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def non_finite_reason(saved_model: str, scores: Scores, train_metrics: dict[str, Any]) -> Optional[str]:
    """Why the candidate cannot be trusted: NaN or infinity in its SavedModel's variables (every
    floating-point tensor is read), in its scores, or in its training's eval loss; None when finite."""
    import math

    from components.core.checkpoint_files import READ_ERRORS, non_finite_tensors, variable_name

    prefix = ExportedModel(saved_model).variables_prefix
    try:
        broken = non_finite_tensors(prefix)
    except READ_ERRORS as e:
        raise ArtifactError(f"cannot read the candidate's variables {prefix}: {_first_line(e)}") from None
    problems = []
    if broken:
        names = ", ".join(variable_name(key) for key in broken[:5])
        problems.append(f"NaN or infinity in {len(broken)} of its variables ({names}{' ...' if len(broken) > 5 else ''})")
    problems += [f"{key} {value}" for key, value in scores.to_dict().items()
                 if isinstance(value, float) and not math.isfinite(value)]
    if train_metrics.get("history"):
        # metrics.json writes NaN/inf as null: trained epochs without a best eval loss had none finite.
        loss = train_metrics.get("best_eval_loss")
        if loss is None or not math.isfinite(float(loss)):
            problems.append("its training's eval loss is not finite (metrics.json best_eval_loss is null)")
    return "; ".join(problems) or None


def score_baseline(baseline_model: str, sources: list[str], references: list[str]
                   ) -> tuple[Optional[Scores], Optional[str]]:
    """(the served model's scores, None), or (None, "<path>: <reason>") when it cannot be loaded or
    run: a cut saved_model.pb or variables file must not block every later candidate."""
    try:
        baseline = translate_all(baseline_model, sources)
    except Exception as e:  # noqa: BLE001 - whatever breaks the served model, the candidate is judged alone
        reason = f"{baseline_model}: {_first_line(e)}"
        logger.warning("the served model %s cannot be loaded or run (%s): it is treated as absent, and the "
                       "candidate is judged on evaluator.min_bleu alone", baseline_model, _first_line(e))
        return None, reason
    return score([b.translation for b in baseline], references), None


def run_evaluation(
    saved_model: str,
    examples: str,
    out: str,
    config: EvaluatorConfig,
    train_dir: Optional[str] = None,
    baseline_model: Optional[str] = None,
) -> dict[str, Any]:
    """Score the candidate (and the served baseline on the same examples); write the verdict."""
    started = time.time()
    io.gfile().makedirs(out)
    split, sources, references = load_references(examples)
    logger.info("evaluating %s on the %s split (%d pairs)%s", saved_model, split, len(sources),
                "" if split == "eval" else ": there is no eval split, so these are training pairs")
    candidate_model = load_translator(saved_model)
    candidate = translate_batches(candidate_model, sources)
    scores = score([c.translation for c in candidate], references)
    baseline_scores: Optional[Scores] = None
    baseline_unloadable: Optional[str] = None
    if baseline_model:
        baseline_scores, baseline_unloadable = score_baseline(baseline_model, sources, references)
    train_metrics = TrainedModel(train_dir).metrics() if train_dir else {}
    blessing = decide(scores.bleu, baseline_scores.bleu if baseline_scores else None,
                      config.tolerance, config.min_bleu, non_finite=non_finite_reason(saved_model, scores, train_metrics),
                      baseline_unloadable=baseline_unloadable)
    evaluation = {
        "split": split,
        "examples": len(sources),
        **scores.to_dict(),
        "eval_loss": train_metrics.get("best_eval_loss", train_metrics.get("final_eval_loss")),
        "baseline_model": baseline_model,
        "baseline": baseline_scores.to_dict() if baseline_scores else None,
        "baseline_unloadable": baseline_unloadable,
        "seconds": round(time.time() - started, 3),
    }
    Evaluation(out).write(evaluation, {**blessing.to_dict(), "candidate_model": saved_model,
                                       "baseline_model": baseline_model, "split": split})
    count = config.num_samples
    samples = [{"source": s, "reference": r, "translation": c.translation}
               for s, r, c in zip(sources[:count], references[:count], candidate[:count])]
    attention = candidate_model.translate(sources[:1], with_attention=True)
    write_report(out, evaluation, blessing, samples, train_metrics.get("history", []),
                 attention[0] if attention else None)
    _log_verdict(scores, blessing)
    return {"evaluation": evaluation, "blessing": blessing.to_dict(), "samples": samples}


def _log_verdict(scores: Scores, blessing: Blessing) -> None:
    logger.info("BLEU %.2f  chrF %.2f  exact match %.1f%% on %d pairs", scores.bleu, scores.chrf,
                scores.exact_match, scores.count)
    logger.info("%s: %s", "BLESSED" if blessing.blessed else "NOT BLESSED", blessing.reason)
