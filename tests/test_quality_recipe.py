"""pipeline/default.yaml's recipe end to end on a small generated corpus: subword units in core TF
ops, a bidirectional encoder, dropout, word dropout, label smoothing, the cosine schedule and
checkpoint selection by chrF; then the export, loaded in-process, by plain TensorFlow in a fresh
process and by the real saved_model_cli.
"""
import random
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from export_fixtures import BEAM_ARGS, write_tsv
from test_export import VENV_BIN, clean_env, plain_tensorflow_translations

from pipeline.config import load_config

# default.yaml, shrunk to test size; everything the recipe switches on stays on, and word dropout
# (an option the recipe leaves off) is on too, so the export is checked with every kind of noise.
TINY = ["model.word_dropout=0.1", "model.embedding_dim=8", "model.units=16", "trainer.epochs=3", "trainer.max_minutes=null",
        "trainer.batch_size=16", "trainer.warmup_steps=5", "trainer.select_sample=24",
        "preprocess.vocab_pieces=300", "preprocess.eval_fraction=0.2", "trainer.log_every_steps=1000"]

WORDS = {"open": "열기", "file": "파일", "save": "저장", "user": "사용자", "delete": "삭제", "new": "새",
         "folder": "폴더", "error": "오류", "settings": "설정", "name": "이름"}
PLACEHOLDERS = ["%s", "%(name)s", "{count}", "<b>", "</b>", ""]


def corpus(count: int, seed: int = 5) -> list[tuple[str, str]]:
    """Short UI strings, some with a placeholder the target keeps verbatim."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        words = rng.sample(sorted(WORDS), rng.randint(1, 4))
        placeholder = rng.choice(PLACEHOLDERS)
        source, target = " ".join(words), " ".join(WORDS[w] for w in reversed(words))
        if placeholder:
            source, target = f"{source} {placeholder}", f"{placeholder} {target}"
        pairs.append((source, target))
    return pairs


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory) -> dict:
    from components.exporter import run_export
    from components.preprocess import run_preprocess
    from components.trainer import run_training

    root = tmp_path_factory.mktemp("recipe")
    config = load_config(None, TINY)
    examples, train, export = str(root / "preprocess"), str(root / "train"), str(root / "export")
    run_preprocess(str(write_tsv(root / "corpus.tsv", corpus(300))), examples, config, beam_args=BEAM_ARGS)
    metrics = run_training(examples, train, config)
    run_export(train, export)
    return {"config": config, "examples": examples, "train": train, "export": export, "metrics": metrics,
            "root": root}


def test_the_default_recipe_switches_the_new_elements_on(recipe_run):
    config = recipe_run["config"]
    assert config.preprocess.tokenizer == "subword"
    assert config.model.bidirectional and config.model.dropout > 0 and config.model.word_dropout == 0.1
    assert config.trainer.label_smoothing > 0 and config.trainer.lr_schedule == "cosine"
    assert config.trainer.bucket_by_length
    assert config.trainer.select_by == "chrf" and load_config(None, []).trainer.max_minutes == 10


def test_best_checkpoint_is_the_epoch_with_the_best_dev_chrf(recipe_run):
    from components.core.artifacts import TrainedModel
    from components.core.checkpoint_files import checkpoint_number, checkpoint_prefixes

    metrics = recipe_run["metrics"]
    history = metrics["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    chrf = [h["dev_chrf"] for h in history]
    assert all(0.0 <= c <= 100.0 for c in chrf) and all("dev_bleu" in h for h in history)
    best = history[int(np.argmax(chrf))]  # the first of equal scores: a later one must improve on it
    assert metrics["select_by"] == "chrf" and metrics["best_epoch"] == best["epoch"]
    assert metrics["best_dev_chrf"] == best["dev_chrf"]
    assert metrics["best_eval_loss"] == min(h["eval_loss"] for h in history)
    best_dir = TrainedModel(recipe_run["train"]).best_dir
    assert [checkpoint_number(p) for p in checkpoint_prefixes(best_dir)] == [best["step"]]


def test_dev_chrf_translations_are_the_exported_model_translations(recipe_run):
    """The trainer scores exactly what the SavedModel will serve: same decoder, same detokenizer."""
    from components.core.artifacts import PreprocessArtifact
    from components.model.checkpoints import restore_model
    from components.text.metrics import score
    from components.trainer.selection import DevScorer, read_sample

    model, config, _ = restore_model(recipe_run["train"])
    artifact = PreprocessArtifact.load(recipe_run["examples"])
    sample = read_sample(artifact.split_files("eval"), artifact, config.trainer.select_sample, 7)
    scorer = DevScorer(model, artifact, sample)
    assert len(scorer) == config.trainer.select_sample
    served = tf.saved_model.load(recipe_run["export"]).signatures["serving_default"]
    texts = tf.constant(_sample_sources(artifact, len(scorer)))
    translations = [t.decode("utf-8") for t in served(text=texts)["translation"].numpy()]
    assert scorer.translations() == translations
    best = max(recipe_run["metrics"]["history"], key=lambda h: h["dev_chrf"])
    assert scorer.score().chrf == best["dev_chrf"] == score(translations, scorer.references).chrf


def _sample_sources(artifact, count: int) -> list[str]:
    spec = {"source_text": artifact.feature_spec()["source_text"]}
    records = tf.data.TFRecordDataset(artifact.split_files("eval"), compression_type="GZIP").take(count)
    return [tf.io.parse_single_example(r, spec)["source_text"].numpy().decode("utf-8") for r in records]


def test_export_with_dropout_configured_is_deterministic(recipe_run):
    signature = tf.saved_model.load(recipe_run["export"]).signatures["translate_with_attention"]
    texts = tf.constant([s for s, _ in corpus(40, seed=9)])
    first, second = (signature(text=texts, max_length=tf.constant(0)) for _ in range(2))
    for key in ("translation", "token_ids", "score", "attention"):
        np.testing.assert_array_equal(first[key].numpy(), second[key].numpy())


def test_default_recipe_model_loads_and_translates_with_plain_tensorflow(recipe_run, tmp_path):
    texts = [s for s, _ in corpus(12, seed=13)] + ["open %(name)s", ""]
    served = tf.saved_model.load(recipe_run["export"]).signatures["serving_default"]
    expected = [t.decode("utf-8") for t in served(text=tf.constant(texts))["translation"].numpy()]
    out = plain_tensorflow_translations(recipe_run["export"], texts, tmp_path)
    assert out == {"translations": expected, "tensorflow_text_loaded": False}
    assert expected[-1] == ""


def test_default_recipe_model_runs_in_saved_model_cli(recipe_run):
    cli = str(VENV_BIN / "saved_model_cli")
    run = subprocess.run([cli, "run", "--dir", recipe_run["export"], "--tag_set", "serve",
                          "--signature_def", "serving_default", "--input_exprs", 'text=["open file %s"]'],
                         capture_output=True, text=True, env=clean_env(), timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "translation" in run.stdout
