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
from components.core.artifacts import Evaluation, PreprocessArtifact, TrainedModel
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
    if baseline_model:
        baseline = translate_all(baseline_model, sources)
        baseline_scores = score([b.translation for b in baseline], references)
    blessing = decide(scores.bleu, baseline_scores.bleu if baseline_scores else None,
                      config.tolerance, config.min_bleu)
    train_metrics = TrainedModel(train_dir).metrics() if train_dir else {}
    evaluation = {
        "split": split,
        "examples": len(sources),
        **scores.to_dict(),
        "eval_loss": train_metrics.get("best_eval_loss", train_metrics.get("final_eval_loss")),
        "baseline_model": baseline_model,
        "baseline": baseline_scores.to_dict() if baseline_scores else None,
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
