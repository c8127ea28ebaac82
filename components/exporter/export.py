"""`seq2seq export`: training folder -> self-contained SavedModel, written to a temp dir and renamed."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Optional, Sequence

from components.core import io
from components.core.artifacts import ExportedModel, TrainedModel
from components.core.config import MAX_DECODE_LENGTH_LIMIT, ConfigError, ExportConfig, PipelineConfig, apply_overrides
from components.core.errors import ArtifactError
from components.text.artifacts import encoder_for, tokenizer_for

logger = logging.getLogger(__name__)

STAGING = "_staging"  # inside the temp export dir: card and README before the saver copies them to assets/


def export_config(train_dir: str, overrides: Sequence[str] = (),
                  export: Optional[ExportConfig] = None) -> PipelineConfig:
    """The training folder's config snapshot with the export section replaced: by EXPORT (a run's
    resolved section) or by `--set export.*` OVERRIDES. Every other section is fixed by the weights."""
    for text in overrides:
        section = text.split("=", 1)[0].strip().split(".")[0]
        if section != "export":
            raise ConfigError(
                f"--set {text!r}: export only takes export.* overrides; the other sections are fixed "
                f"by the trained checkpoint (retrain to change them)")
    training = TrainedModel(train_dir)
    config = training.config()
    if export is not None:
        config = dataclasses.replace(config, export=export)
    if overrides:
        config = apply_overrides(config, overrides)
    return config


def max_decode_length(config: PipelineConfig) -> int:
    """The exported default decode length: export.max_decode_length (which the config keeps within
    [1, MAX_DECODE_LENGTH_LIMIT]), else preprocess.max_target_length, capped at the limit."""
    length = config.export.max_decode_length
    if length is None:
        length = config.preprocess.max_target_length
        if length > MAX_DECODE_LENGTH_LIMIT:
            logger.warning("export: decoding at most %d tokens (MAX_DECODE_LENGTH_LIMIT), not "
                           "preprocess.max_target_length %d", MAX_DECODE_LENGTH_LIMIT, length)
        return min(int(length), MAX_DECODE_LENGTH_LIMIT)
    return int(length)


def count_lines(path: str) -> int:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read().count(b"\n")


def _restore(train_dir: str):
    """(model, preprocess artifact, checkpoint path) via the model library's restore helper, from the
    newest readable checkpoint (best/ first)."""
    from components.model.checkpoints import restore_model

    model, _, artifact = restore_model(train_dir)
    return model, artifact, getattr(model, "restored_from", None)

def build_module(model, artifact, max_length: int, extra_assets: Optional[dict[str, str]] = None,
                 replace_unknown: bool = True, export: Optional[ExportConfig] = None):
    """The `ServingModule` for a restored model and its preprocess output; `export` (default: the
    ExportConfig defaults) gives the beam_search signatures' defaults."""
    from components.exporter.module import ServingModule

    export = export or ExportConfig()
    return ServingModule(
        model=model,
        source_encoder=encoder_for(artifact, "source"),
        target_tokenizer=tokenizer_for(artifact, "target"),
        source_vocab_path=artifact.vocab_path("source"),
        target_vocab_path=artifact.vocab_path("target"),
        max_decode_length=max_length,
        extra_assets=extra_assets,
        replace_unknown=replace_unknown,
        beam_width=export.beam_width,
        length_penalty=export.length_penalty,
        n_best=export.n_best,
        no_repeat_ngram_size=export.no_repeat_ngram_size,
    )


def sentencepiece_size(path: str) -> int:
    """The number of pieces of a SentencePiece model file."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=io.read_bytes(path)).get_piece_size()


def vocabulary_sizes(artifact) -> dict[str, int]:
    sizes = {side: count_lines(artifact.vocab_path(side)) for side in ("source", "target")}
    for side in ("source", "target"):
        path = artifact.wordpiece_vocab_path(side)
        if path:
            sizes[f"{side}_wordpiece"] = count_lines(path)
        path = artifact.sentencepiece_model_path(side)
        if path:
            sizes[f"{side}_sentencepiece"] = sentencepiece_size(path)
    return sizes


def save_module(module_factory, card: dict[str, Any], out: str, overwrite: bool = False) -> str:
    """Write card + README, save `module_factory(extra_assets)` to a temp folder, check it, rename to OUT."""
    import tensorflow as tf

    from components.exporter.card import render_readme

    out = out.rstrip("/")
    if io.exists(out) and not overwrite:
        raise ArtifactError(f"export folder {out} already exists; remove it or choose another --out")
    with io.atomic_dir(out, overwrite) as tmp:
        staging = f"{tmp}/{STAGING}"
        paths = {"model_card": f"{staging}/{ExportedModel.CARD}", "readme": f"{staging}/{ExportedModel.README}"}
        io.write_json_atomic(paths["model_card"], card)
        io.write_text_atomic(paths["readme"], render_readme(card))
        module = module_factory(paths)
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        io.gfile().rmtree(staging)
        if not io.exists(ExportedModel(tmp).card_path):
            raise ArtifactError(f"{tmp}: the saver did not copy {ExportedModel.CARD} into assets/")
    return out


def export_model(model, artifact, out: str, config: Optional[PipelineConfig] = None,
                 checkpoint: Optional[str] = None, metrics: Optional[dict[str, Any]] = None,
                 overwrite: bool = False) -> str:
    """Save an in-memory `Seq2Seq` built for `artifact` (a PreprocessArtifact) as a SavedModel at OUT.

    `config` defaults to the preprocess output's config; its `export` section sets the decode length.
    """
    from components.exporter.card import build_card

    config = config or artifact.config
    max_length = max_decode_length(config)
    card = build_card(config, artifact, vocabulary_sizes(artifact), max_length,
                      checkpoint=checkpoint, metrics=metrics)
    logger.info("export: tracing and saving (tokenizer %s, max decode length %d)",
                config.preprocess.tokenizer, max_length)
    pieces = piece_assets(artifact, config)
    return save_module(lambda assets: build_module(model, artifact, max_length, {**assets, **pieces},
                                                   config.export.replace_unknown, config.export),
                       card, out, overwrite)


def piece_assets(artifact, config: PipelineConfig) -> dict[str, str]:
    """The learned WordPiece files of the `subword` sides, as extra assets: the core-op segmenter
    holds its pieces as graph constants, so without them a retrain with
    `preprocess.vocabulary=reuse_served` would find no SIDE.wordpiece.vocab to reuse (`wordpiece`'s
    op reads its file, which the saver copies already)."""
    assets = {}
    for side in ("source", "target"):
        path = artifact.wordpiece_vocab_path(side)
        if path and config.preprocess.tokenizer_of(side) == "subword":
            assets[f"{side}_wordpiece_vocab"] = path
    return assets


def run_export(model_dir: str, out: str, overrides: Sequence[str] = (), overwrite: bool = False,
               export: Optional[ExportConfig] = None) -> str:
    """Export the best (else latest) checkpoint in MODEL_DIR as a SavedModel at OUT; returns OUT.

    EXPORT (a pipeline run's resolved section) or OVERRIDES (`--set export.*`) replace the export
    section of the training folder's config snapshot."""
    started = time.monotonic()
    model_dir = model_dir.rstrip("/")
    config = export_config(model_dir, overrides, export)
    max_decode_length(config)  # a bad override fails before the (slow) restore
    logger.info("export: restoring the model from %s", model_dir)
    model, artifact, checkpoint = _restore(model_dir)
    path = export_model(model, artifact, out, config, checkpoint=str(checkpoint) if checkpoint else None,
                        metrics=TrainedModel(model_dir).scalar_metrics(), overwrite=overwrite)
    logger.info("export: wrote %s in %.1f s", path, time.monotonic() - started)
    return path
