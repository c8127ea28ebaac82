"""Evaluator: score the exported SavedModel (what is served is what is measured) and decide blessing.

Inputs: the SavedModel, the preprocess output (references) and the training folder (loss curve,
eval loss); optionally the SavedModel now in service. Outputs in OUT: evaluation.json,
blessing.json, report.md, and when there is something to plot loss_curve.png and attention.png.
"""
from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from components.core import io
from components.core.artifacts import Evaluation, ExportedModel, PreprocessArtifact, TrainedModel
from components.core.config import ConfigError, EvaluatorConfig
from components.core.cpu import cpu_cores
from components.core.errors import ArtifactError
from components.core.spans import ALL_SPAN_KINDS, placeholder_items
from components.evaluator.metrics import Blessing, Scores, decide, score
from components.evaluator.report import write_report
from components.serving import BeamOptions, load_translator
from components.text.metrics import copy_rate, placeholder_fidelity, sacrebleu_signatures, span_difference

logger = logging.getLogger(__name__)

TRANSLATE_BATCH = 64
PROGRESS_EVERY_BATCHES = 50
MAX_OFFENDERS = 10  # placeholder offenders listed in report.md


SCORED_SPLITS = ("test", "eval")  # scored whenever the preprocess output has them


def blessing_split(examples_dir: str, bless_on: str = "auto") -> str:
    """The split the blessing judges (evaluator.bless_on): test (the fixed test set), eval, or, for
    auto, test when there is one, else eval; train when there is neither (eval or auto)."""
    artifact = PreprocessArtifact.load(examples_dir)
    has_test = bool(artifact.split_files("test"))
    if bless_on == "test" and not has_test:
        raise ConfigError(f"evaluator.bless_on=test: {examples_dir} has no test split; pass the test set "
                          f"with `seq2seq run --test FILE` (or `seq2seq preprocess --test FILE`)")
    if bless_on == "test" or (bless_on == "auto" and has_test):
        return "test"
    return "eval" if artifact.split_files("eval") else "train"


def other_splits(examples_dir: str, blessed: str) -> list[str]:
    """The scored splits other than the blessing's that the preprocess output has."""
    artifact = PreprocessArtifact.load(examples_dir)
    return [split for split in SCORED_SPLITS if split != blessed and artifact.split_files(split)]


def load_references(examples_dir: str, split: Optional[str] = None) -> tuple[str, list[str], list[str]]:
    """(split, sources, references) of SPLIT; by default the eval split, or the training split when
    there is none."""
    import tensorflow as tf

    artifact = PreprocessArtifact.load(examples_dir)
    if split is None:
        split = "eval" if artifact.split_files("eval") else "train"
    files = artifact.split_files(split)
    if not files:
        raise ArtifactError(f"{examples_dir} has no {split} TFRecords to evaluate on")
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
                  workers: Optional[int] = None, beam: Optional[BeamOptions] = None) -> list[Any]:
    """Translate every source with the SavedModel's serving_default (with `beam`, its
    beam_search_with_options), as a downstream service would."""
    return translate_batches(load_translator(model_dir), sources, batch_size, workers, beam)


def beam_options(config: EvaluatorConfig, candidate: Any = None) -> Optional[BeamOptions]:
    """evaluator.decoder's settings: None for greedy, else the width (other settings: the model's):
    evaluator.beam_width, or the `candidate` Translator's exported default. A candidate without beam
    signatures (exported before them) is decoded greedily, with a warning."""
    if config.decoder != "beam":
        return None
    if candidate is not None and not candidate.has_beam_search:
        logger.warning("%s has no beam_search_with_options signature (exported before beam search): the "
                       "blessing decodes it greedily, not with evaluator.decoder beam", candidate.directory)
        return None
    width = config.beam_width or (candidate.exported_beam_width if candidate is not None else None)
    return BeamOptions(beam_width=width, n_best=1)


def other_decoder(beam: Optional[BeamOptions], candidate: Any) -> Optional[tuple[str, Optional[BeamOptions]]]:
    """The decoder that the blessing does not use, scored beside it: (name, options), None when the
    candidate has only greedy search."""
    if beam is not None:
        return "greedy", None
    if not candidate.has_beam_search:
        return None
    return "beam", BeamOptions(beam_width=candidate.exported_beam_width, n_best=1)


def decoder_entry(beam: Optional[BeamOptions]) -> dict[str, Any]:
    """How a model was decoded, for evaluation.json: {decoder, beam_width}."""
    return {"decoder": "beam" if beam else "greedy", "beam_width": beam.beam_width if beam else None}


def translate_batches(translator: Any, sources: list[str], batch_size: int = TRANSLATE_BATCH,
                      workers: Optional[int] = None, beam: Optional[BeamOptions] = None) -> list[Any]:
    """`translator.translate` over `sources` in batches, `workers` batches at a time (default: one
    per core), results in the order of `sources`.

    A greedy decode is a chain of small ops that keeps about one core busy, and `seq2seq run` pins
    TensorFlow to one thread per op when the trainer's batch splits into sub-batches, so batches
    decode side by side (docs/export.md has the measurement). `beam`: beam search instead.
    """
    translate = translator.translate if beam is None else functools.partial(translator.translate, beam=beam)
    batches = [sources[start:start + batch_size] for start in range(0, len(sources), batch_size)]
    workers = max(1, min(workers or cpu_cores(), len(batches)))
    results: list[Any] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="translate") as pool:
        for done, translations in enumerate(pool.map(translate, batches), start=1):
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


def fidelity_spans(examples_dir: str) -> tuple[str, ...]:
    """The span kinds/regexes fidelity is measured with: the preprocess output's
    preprocess.protected_spans, or every kind when it protects none (the same yardstick for a model
    trained without protection)."""
    return placeholder_items(PreprocessArtifact.load(examples_dir).preprocess.protected_spans) or ALL_SPAN_KINDS


def fidelity_metrics(sources: list[str], hypotheses: list[str], references: list[str],
                     spans: tuple[str, ...], unprotected: Optional[list[Optional[int]]] = None
                     ) -> tuple[dict[str, Any], list[int]]:
    """({placeholder_fidelity, placeholder_fidelity_count, copy_rate, copy_rate_count,
    unprotected_span_sentences}, offender indices).

    `unprotected`: each translation's unprotected_spans (`Translation.unprotected_spans`; None for a
    model exported before that output). unprotected_span_sentences counts the sentences with spans no
    sentinel protected (None when the model does not say), and placeholder fidelity counts each of
    them as failed (`placeholder_fidelity`)."""
    known = None if unprotected is None or any(n is None for n in unprotected) else [int(n) for n in unprotected]
    fidelity, fidelity_count, offenders = placeholder_fidelity(sources, hypotheses, references, spans, known)
    copied, copy_count = copy_rate(sources, hypotheses, references, spans)
    return ({"placeholder_fidelity": fidelity, "placeholder_fidelity_count": fidelity_count,
             "copy_rate": copied, "copy_rate_count": copy_count,
             "unprotected_span_sentences": None if known is None else sum(n > 0 for n in known)}, offenders)


def worst_offenders(offenders: list[int], sources: list[str], hypotheses: list[str], references: list[str],
                    spans: tuple[str, ...], limit: int = MAX_OFFENDERS) -> list[dict[str, Any]]:
    """The `limit` offenders with the most spans missing plus extra (then in corpus order)."""
    rows = []
    for index in offenders:
        missing, extra = span_difference(sources[index], hypotheses[index], spans)
        rows.append({"index": index, "source": sources[index], "reference": references[index],
                     "translation": hypotheses[index], "missing": missing, "extra": extra})
    rows.sort(key=lambda row: (-(len(row["missing"]) + len(row["extra"])), row["index"]))
    return rows[:limit]


def translate_baseline(baseline_model: str, sources: list[str], beam: Optional[BeamOptions] = None,
                       decoded: Optional[dict[str, Any]] = None, unloadable: str = "fail"
                       ) -> tuple[Optional[list[Any]], Optional[str]]:
    """(the served model's translations, `Translation`s, None). When it cannot be loaded or run (a cut
    saved_model.pb or variables file), `unloadable` (evaluator.unloadable_baseline) decides:
    "fail" raises ArtifactError naming it (a broken version must not let a worse candidate in
    silently), "ignore" returns (None, "<path>: <reason>") and the candidate is judged alone.

    With `beam`, a served model exported before the beam signatures is decoded greedily, with a
    warning; `decoded` (a dict) receives how it was decoded (`decoder_entry`, plus a note)."""
    try:
        translator = load_translator(baseline_model)
        if beam is not None and not translator.has_beam_search:
            logger.warning("the served model %s has no beam_search_with_options signature (exported before beam "
                           "search): its translations are greedy, the candidate's beam search (width %d)",
                           baseline_model, beam.beam_width)
            if decoded is not None:
                decoded["note"] = "no beam_search_with_options signature: decoded greedily"
            beam = None
        if decoded is not None:
            decoded.update(decoder_entry(beam))
        baseline = translate_batches(translator, sources, beam=beam)
    except Exception as e:  # noqa: BLE001 - whatever breaks the served model is reported the same way
        if unloadable == "fail":
            raise ArtifactError(f"the served model {baseline_model} cannot be loaded or run ({_first_line(e)}): "
                                "repair or remove that version, or set evaluator.unloadable_baseline=ignore "
                                "to judge the candidate without it") from e
        reason = f"{baseline_model}: {_first_line(e)}"
        logger.warning("the served model %s cannot be loaded or run (%s): evaluator.unloadable_baseline is ignore, "
                       "so it is treated as absent, and the candidate is judged on evaluator.min_bleu alone",
                       baseline_model, _first_line(e))
        return None, reason
    return baseline, None


def score_baseline(baseline_model: str, sources: list[str], references: list[str], unloadable: str = "fail"
                   ) -> tuple[Optional[Scores], Optional[str]]:
    """(the served model's scores, None), or (None, "<path>: <reason>") as `translate_baseline`."""
    results, reason = translate_baseline(baseline_model, sources, unloadable=unloadable)
    return (score([r.translation for r in results], references) if results is not None else None), reason


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
    split, sources, references = load_references(examples, blessing_split(examples, config.bless_on))
    logger.info("evaluating %s on the %s split (%d pairs)%s", saved_model, split, len(sources),
                "" if split != "train" else ": there is no eval split, so these are training pairs")
    spans = fidelity_spans(examples)
    # What the blessing judges, by content: the pusher publishes only a model with this fingerprint.
    content_fingerprint = ExportedModel(saved_model).content_fingerprint()
    candidate_model = load_translator(saved_model)
    beam = beam_options(config, candidate_model)
    logger.info("decoding with %s (the blessing's decoder, evaluator.decoder)", decoder_name(beam))
    candidate = translate_batches(candidate_model, sources, beam=beam)
    hypotheses = [c.translation for c in candidate]
    scores = score(hypotheses, references)
    decoders = {decoder_entry(beam)["decoder"]: {**scores.to_dict(), **decoder_entry(beam), "blessing": True}}
    other = other_decoder(beam, candidate_model)
    if other is not None:
        logger.info("decoding with %s too, for the report", decoder_name(other[1]))
        other_scores = score([c.translation for c in translate_batches(candidate_model, sources, beam=other[1])],
                             references)
        decoders[other[0]] = {**other_scores.to_dict(), **decoder_entry(other[1]), "blessing": False}
    fidelity, offenders = fidelity_metrics(sources, hypotheses, references, spans,
                                           [c.unprotected_spans for c in candidate])
    splits = {split: {**scores.to_dict(), "hypotheses": write_hypotheses(out, split, hypotheses), "blessing": True}}
    for other_split in other_splits(examples, split):
        _, other_sources, other_references = load_references(examples, other_split)
        logger.info("scoring the %s split too (%d pairs, %s)", other_split, len(other_sources), decoder_name(beam))
        other_hypotheses = [c.translation for c in translate_batches(candidate_model, other_sources, beam=beam)]
        splits[other_split] = {**score(other_hypotheses, other_references).to_dict(),
                               "hypotheses": write_hypotheses(out, other_split, other_hypotheses), "blessing": False}
    baseline_scores: Optional[Scores] = None
    baseline_fidelity: Optional[dict[str, Any]] = None
    baseline_unloadable: Optional[str] = None
    baseline_decoder: Optional[dict[str, Any]] = None
    if baseline_model:
        baseline_decoder = {}
        baseline_results, baseline_unloadable = translate_baseline(baseline_model, sources, beam, baseline_decoder,
                                                                   unloadable=config.unloadable_baseline)
        if baseline_results is not None:
            baseline_hypotheses = [b.translation for b in baseline_results]
            baseline_scores = score(baseline_hypotheses, references)
            baseline_fidelity, _ = fidelity_metrics(sources, baseline_hypotheses, references, spans,
                                                    [b.unprotected_spans for b in baseline_results])
    train_metrics = TrainedModel(train_dir).metrics() if train_dir else {}
    blessing = decide(scores.bleu, baseline_scores.bleu if baseline_scores else None,
                      config.tolerance, config.min_bleu, non_finite=non_finite_reason(saved_model, scores, train_metrics),
                      baseline_unloadable=baseline_unloadable,
                      placeholder_fidelity=fidelity["placeholder_fidelity"],
                      min_placeholder_fidelity=config.min_placeholder_fidelity)
    evaluation = {
        "split": split,
        "examples": len(sources),
        **scores.to_dict(),
        **fidelity,
        "fidelity_spans": list(spans),
        **decoder_entry(beam),
        "decoders": decoders,
        "splits": splits,
        "sacrebleu": sacrebleu_signatures(),
        "eval_loss": train_metrics.get("best_eval_loss", train_metrics.get("final_eval_loss")),
        "baseline_model": baseline_model,
        "baseline": {**baseline_scores.to_dict(), **baseline_fidelity} if baseline_scores else None,
        "baseline_unloadable": baseline_unloadable,
        "baseline_decoder": baseline_decoder or None,
        "seconds": round(time.time() - started, 3),
    }
    Evaluation(out).write(evaluation, {**blessing.to_dict(), "candidate_model": saved_model,
                                       Evaluation.CONTENT_FINGERPRINT: content_fingerprint,
                                       "baseline_model": baseline_model, "split": split})
    count = config.num_samples
    samples = [{"source": s, "reference": r, "translation": c.translation}
               for s, r, c in zip(sources[:count], references[:count], candidate[:count])]
    attention = candidate_model.translate(sources[:1], with_attention=True)
    write_report(out, evaluation, blessing, samples, train_metrics.get("history", []),
                 attention[0] if attention else None,
                 offenders=worst_offenders(offenders, sources, hypotheses, references, spans))
    _log_verdict(fidelity, blessing, decoders, splits)
    return {"evaluation": evaluation, "blessing": blessing.to_dict(), "samples": samples}


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def decoder_name(beam: Optional[BeamOptions]) -> str:
    return f"beam search (width {beam.beam_width})" if beam else "greedy search"


def write_hypotheses(out: str, split: str, hypotheses: list[str]) -> str:
    """OUT/hypotheses.SPLIT.txt: one translation per line, in the split's order (a newline inside a
    translation becomes a space, so that line i stays pair i); returns the file name."""
    name = f"hypotheses.{split}.txt"
    io.write_text_atomic(f"{out}/{name}", "".join(h.replace("\n", " ").replace("\r", " ") + "\n" for h in hypotheses))
    return name


def _log_verdict(fidelity: dict[str, Any], blessing: Blessing, decoders: dict[str, dict[str, Any]],
                 splits: dict[str, dict[str, Any]]) -> None:
    for name, entry in splits.items():
        if not entry["blessing"]:
            logger.info("%s split: BLEU %.2f  chrF %.2f  exact match %.1f%% on %d pairs", name, entry["bleu"],
                        entry["chrf"], entry["exact_match"], entry["count"])
    judged = next(name for name, entry in splits.items() if entry["blessing"])
    for entry in sorted(decoders.values(), key=lambda e: not e["blessing"]):
        name = decoder_name(BeamOptions(beam_width=entry["beam_width"]) if entry["decoder"] == "beam" else None)
        logger.info("%s split: BLEU %.2f  chrF %.2f  exact match %.1f%% on %d pairs, %s%s", judged, entry["bleu"],
                    entry["chrf"], entry["exact_match"], entry["count"], name,
                    " (the blessing's)" if entry["blessing"] else "")
    logger.info("placeholder fidelity %s on %d sentences with spans  copy rate %s of %d identifiers",
                _percent(fidelity["placeholder_fidelity"]), fidelity["placeholder_fidelity_count"],
                _percent(fidelity["copy_rate"]), fidelity["copy_rate_count"])
    if fidelity.get("unprotected_span_sentences"):
        logger.warning("%d sentences have protected spans the model could not protect (more than its sentinels, "
                       "or sentinels its vocabularies lack): fidelity counts them as failed",
                       fidelity["unprotected_span_sentences"])
    logger.info("%s: %s", "BLESSED" if blessing.blessed else "NOT BLESSED", blessing.reason)
