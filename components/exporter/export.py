"""`seq2seq export`: training folder -> self-contained SavedModel, written to a temp dir and renamed."""
from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, Optional, Sequence

from pipeline.config import ConfigError, PipelineConfig, load_config
from pipeline.errors import ArtifactError

logger = logging.getLogger(__name__)

STAGING = "_staging"  # inside the temp export dir: card and README before the saver copies them to assets/


def export_config(train_dir: str, overrides: Sequence[str] = ()) -> PipelineConfig:
    """The training folder's config snapshot with `--set export.*` overrides applied."""
    import tensorflow as tf

    for text in overrides:
        section = text.split("=", 1)[0].strip().split(".")[0]
        if section != "export":
            raise ConfigError(
                f"--set {text!r}: export only takes export.* overrides; the other sections are fixed "
                f"by the trained checkpoint (retrain to change them)")
    snapshot = f"{train_dir}/config.yaml"
    if not tf.io.gfile.exists(snapshot):
        raise ArtifactError(f"{train_dir} is not a training folder: config.yaml is missing (run `seq2seq train`)")
    return load_config(snapshot, overrides)


def max_decode_length(config: PipelineConfig) -> int:
    length = config.export.max_decode_length
    if length is None:
        return config.preprocess.max_target_length
    if length < 1:
        raise ConfigError(f"export.max_decode_length: must be at least 1, got {length}")
    return int(length)


def read_metrics(train_dir: str) -> Optional[dict[str, Any]]:
    """The scalar entries of TRAIN_DIR/metrics.json (the per-epoch history stays there), or None."""
    import tensorflow as tf

    path = f"{train_dir}/metrics.json"
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        try:
            metrics = json.load(f)
        except ValueError as e:
            raise ArtifactError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(metrics, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    return {key: value for key, value in metrics.items() if not isinstance(value, (list, dict))}


def count_lines(path: str) -> int:
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read().count(b"\n")


def _restore(train_dir: str):
    """(model, preprocess artifact, checkpoint path) via the trainer's own restore helper."""
    from components.trainer.checkpoints import restore_model

    model, _, artifact = restore_model(train_dir)
    return model, artifact, getattr(model, "restored_from", None)


def build_module(model, artifact, max_length: int, extra_assets: Optional[dict[str, str]] = None):
    """The `ServingModule` for a restored model and its preprocess output."""
    from components.exporter.module import ServingModule

    return ServingModule(
        model=model,
        source_encoder=artifact.encoder("source"),
        target_tokenizer=artifact.tokenizer("target"),
        source_vocab_path=artifact.vocab_path("source"),
        target_vocab_path=artifact.vocab_path("target"),
        max_decode_length=max_length,
        extra_assets=extra_assets,
    )


def vocabulary_sizes(artifact) -> dict[str, int]:
    sizes = {side: count_lines(artifact.vocab_path(side)) for side in ("source", "target")}
    for side in ("source", "target"):
        path = artifact.wordpiece_vocab_path(side)
        if path:
            sizes[f"{side}_wordpiece"] = count_lines(path)
    return sizes


def save_module(module_factory, card: dict[str, Any], out: str, overwrite: bool = False) -> str:
    """Write card + README, save `module_factory(extra_assets)` to OUT.tmp-*, check it, rename to OUT."""
    import tensorflow as tf

    from components.exporter.card import CARD_NAME, README_NAME, render_readme

    out = out.rstrip("/")
    if tf.io.gfile.exists(out) and not overwrite:
        raise ArtifactError(f"export folder {out} already exists; remove it or choose another --out")
    parent = out.rsplit("/", 1)[0] if "/" in out else "."
    tf.io.gfile.makedirs(parent)
    tmp = f"{out}.tmp-{uuid.uuid4().hex[:12]}"
    staging = f"{tmp}/{STAGING}"
    tf.io.gfile.makedirs(staging)
    try:
        paths = {"model_card": f"{staging}/{CARD_NAME}", "readme": f"{staging}/{README_NAME}"}
        with tf.io.gfile.GFile(paths["model_card"], "w") as f:
            f.write(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
        with tf.io.gfile.GFile(paths["readme"], "w") as f:
            f.write(render_readme(card))
        module = module_factory(paths)
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        tf.io.gfile.rmtree(staging)
        if not tf.io.gfile.exists(f"{tmp}/assets/{CARD_NAME}"):
            raise ArtifactError(f"{tmp}: the saver did not copy {CARD_NAME} into assets/")
        _publish(tmp, out, overwrite)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        raise
    return out


def _publish(tmp: str, out: str, overwrite: bool) -> None:
    """Rename the finished temp dir to OUT; an old OUT is moved aside first and then deleted."""
    import tensorflow as tf

    old = None
    if tf.io.gfile.exists(out):
        if not overwrite:
            raise ArtifactError(f"export folder {out} appeared while exporting; not replacing it")
        old = f"{out}.old-{uuid.uuid4().hex[:12]}"
        tf.io.gfile.rename(out, old)
    tf.io.gfile.rename(tmp, out)
    if old:
        tf.io.gfile.rmtree(old)


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
    return save_module(lambda assets: build_module(model, artifact, max_length, assets), card, out, overwrite)


def run_export(model_dir: str, out: str, overrides: Sequence[str] = (), overwrite: bool = False) -> str:
    """Export the best (else latest) checkpoint in MODEL_DIR as a SavedModel at OUT; returns OUT."""
    started = time.monotonic()
    model_dir = model_dir.rstrip("/")
    config = export_config(model_dir, overrides)
    max_decode_length(config)  # a bad override fails before the (slow) restore
    logger.info("export: restoring the model from %s", model_dir)
    model, artifact, checkpoint = _restore(model_dir)
    path = export_model(model, artifact, out, config, checkpoint=str(checkpoint) if checkpoint else None,
                        metrics=read_metrics(model_dir), overwrite=overwrite)
    logger.info("export: wrote %s in %.1f s", path, time.monotonic() - started)
    return path
