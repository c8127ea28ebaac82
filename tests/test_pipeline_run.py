"""`seq2seq run` end to end: push, cache, bless against the served model, fail safely, resume.

Real Beam, real TensorFlow, the real seed corpus; one shared artifacts folder walks through the
scheduled-retraining story in order.
"""
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "data" / "raw" / "seed.tsv"
EMBEDDED = str(REPO / "pipeline" / "embedded.yaml")
SEED_PAIRS = dict(line.split("\t") for line in SEED.read_text(encoding="utf-8").splitlines())

pytestmark = pytest.mark.slow


def served_versions(artifacts):
    """The version folders of the seed's model name (embedded.yaml names the languages: en-ko)."""
    return sorted(os.listdir(artifacts / "serving" / "en-ko"))


def run(capsys, data, artifacts, *extra):
    code = main(["run", "--data", str(data), "--artifacts", str(artifacts), "--config", EMBEDDED, "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out.strip().splitlines()[-1]), out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    shutil.copy(SEED, folder / "seed.tsv")
    return folder


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")


def test_first_run_pushes_a_model_that_translates_the_seed(capsys, corpus, artifacts):
    code, result, out = run(capsys, corpus, artifacts)
    assert code == 0, out
    assert result["status"] == "pushed"
    assert result["serving_model"] == f"{artifacts}/serving/en-ko/1"
    assert result["metrics"]["exact_match"] == 100.0
    # Issue 23: blessed under beam search (the exported width), greedy scored beside it.
    assert (result["metrics"]["decoder"], result["metrics"]["beam_width"]) == ("beam", 4)
    assert {k: (v["blessing"], v["exact_match"]) for k, v in result["metrics"]["decoders"].items()} == {
        "beam": (True, 100.0), "greedy": (False, 100.0)}
    assert result["cached"] == []
    for source, target in SEED_PAIRS.items():
        assert f"{source}  ->  {target}" in out  # printed from the pushed model
    manifest = json.loads(Path(result["manifest"]).read_text())
    assert [manifest["components"][c]["status"] for c in ("preprocess", "train", "export", "evaluate", "push")] \
        == ["succeeded"] * 5
    assert manifest["inputs"]["corpus"] and manifest["versions"]["tensorflow"].startswith("2.21")
    assert manifest["config"]["trainer"]["epochs"] == 100
    blessing = json.loads((Path(manifest["components"]["evaluate"]["output"]) / "blessing.json").read_text())
    assert blessing["blessed"] and blessing["baseline_bleu"] is None
    assert (Path(manifest["components"]["evaluate"]["output"]) / "report.md").exists()


def test_second_run_on_the_same_corpus_reruns_nothing(capsys, corpus, artifacts):
    code, result, _ = run(capsys, corpus, artifacts)
    assert code == 0
    assert set(result["cached"]) == {"preprocess", "train", "export", "evaluate"}
    assert result["serving_model"] == f"{artifacts}/serving/en-ko/1"
    assert served_versions(artifacts) == ["1"]


def test_an_export_section_in_the_config_file_reaches_the_export(capsys, corpus, artifacts, tmp_path):
    """Only `export:` differs from the cached run: export re-runs with the file's value, not the
    training folder's snapshot (a bug when only `--set export.*` reached the exporter)."""
    import yaml

    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts, copy)  # the cached outputs stay where the manifests point
    config = yaml.safe_load(Path(EMBEDDED).read_text(encoding="utf-8"))
    config["export"] = {"max_decode_length": 7}
    config_file = tmp_path / "export.yaml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    code, result, out = run(capsys, corpus, copy, "--config", str(config_file))
    assert code == 0, out
    assert result["cached"] == ["preprocess", "train"]
    manifest = json.loads(Path(result["manifest"]).read_text())
    card = json.loads((Path(manifest["components"]["export"]["output"]) / "assets" / "model_card.json").read_text())
    assert card["decoding"]["max_decode_length"] == 7


def test_lost_manifests_do_not_turn_a_warm_start_into_the_served_model(capsys, caplog, corpus, artifacts, tmp_path):
    """With every run.json gone the cache is empty. The served model was trained on this very corpus
    and config, so it is this training's own result, not a starting point: training starts from
    scratch under the same key, instead of from the served weights under the key of a from-scratch
    run (which then claimed to be the served model)."""
    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts, copy)
    first = json.loads(next(copy.glob("runs/*/run.json")).read_text())
    for manifest in copy.glob("runs/*/run.json"):
        manifest.unlink()
    caplog.set_level("INFO")
    code, result, out = run(capsys, corpus, copy)
    assert code == 0, out
    assert "warm start" not in caplog.text
    train = json.loads(Path(result["manifest"]).read_text())["components"]["train"]
    assert "served" not in train["inputs"] and train["status"] == "succeeded"
    assert train["fingerprint"] == first["components"]["train"]["fingerprint"]


def test_changing_a_trainer_setting_reuses_preprocessing_only(capsys, corpus, artifacts):
    # Two epochs cannot learn the seed: the candidate is worse than the served model, so it is not pushed.
    code, result, _ = run(capsys, corpus, artifacts, "--set", "trainer.epochs=2", "--set", "trainer.warm_start=never")
    assert result["cached"] == ["preprocess"]
    assert code == 3 and result["status"] == "not_blessed"
    assert "worse than the served model" in result["reason"]
    assert result["serving_model"] is None
    assert served_versions(artifacts) == ["1"]


def test_a_corrupt_corpus_fails_clearly_and_leaves_serving_alone(capsys, corpus, artifacts, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"no tab here\n\xff\xfe broken\tbytes\n\x00\t\x00\n")
    before = served_versions(artifacts)
    code, result, _ = run(capsys, bad, artifacts)
    assert code == 1 and result["status"] == "failed"
    assert "bad.tsv" in result["reason"] or "quarantine" in result["reason"]
    assert served_versions(artifacts) == before


def test_changing_one_corpus_line_reruns_from_preprocessing(capsys, corpus, artifacts):
    with open(corpus / "seed.tsv", "a", encoding="utf-8") as f:
        f.write("I feel very hungry\t나는 매우 배가 고프다\n")
    # The same 2-epoch config as above: only the corpus changed, yet nothing is reused.
    code, result, _ = run(capsys, corpus, artifacts, "--set", "trainer.epochs=2", "--set", "trainer.warm_start=never")
    assert result["cached"] == []
    assert code == 3


def test_reuse_served_vocabulary_makes_a_warm_start_possible(capsys, caplog, corpus, artifacts):
    with open(corpus / "seed.tsv", "a", encoding="utf-8") as f:
        f.write("I feel sleepy\t나는 졸리다\n")  # two words the served vocabularies do not have
    caplog.set_level("INFO")
    code, result, _ = run(capsys, corpus, artifacts, "--set", "preprocess.vocabulary=reuse_served",
                          "--set", "trainer.epochs=3", "--set", "evaluator.tolerance=100")
    assert "warm start: starting from the weights of the served model" in caplog.text
    manifest = json.loads(Path(result["manifest"]).read_text())
    assert manifest["components"]["train"]["inputs"]["served"] == f"{artifacts}/serving/en-ko/1"  # in the key too
    prep = Path(manifest["components"]["preprocess"]["output"])
    for side in ("source", "target"):
        assert (prep / f"{side}.vocab").read_bytes() == (artifacts / "serving" / "en-ko" / "1" / "assets" / f"{side}.vocab").read_bytes()
    # Three epochs from scratch translate nothing; from the served weights the four seed pairs survive.
    assert result["metrics"]["exact_match"] >= 4 / 6 * 100 - 1e-6
    assert code == 0 and result["serving_model"] == f"{artifacts}/serving/en-ko/2"


def test_warm_start_is_refused_with_a_reason_when_the_shape_differs_and_maps_a_rebuilt_vocabulary(artifacts):
    import dataclasses

    from components.core.artifacts import PreprocessArtifact
    from components.trainer.warm_start import incompatibility, mapping_summary, vocabulary_mapping
    from pipeline.config import load_config

    served = str(artifacts / "serving" / "en-ko" / "1")
    model = load_config(EMBEDDED).model
    runs = [json.loads(p.read_text()) for p in sorted(artifacts.glob("runs/*/run.json"))]
    same_vocab = next(r for r in runs if r["config"]["preprocess"]["vocabulary"] == "reuse_served")
    # The corpus-change run: vocabularies rebuilt from a grown corpus.
    rebuilt = next(r for r in runs if r["config"]["trainer"]["epochs"] == 2
                   and r["components"]["preprocess"]["status"] == "succeeded")
    assert incompatibility(served, PreprocessArtifact.load(same_vocab["components"]["preprocess"]["output"]),
                           model) is None
    # Rebuilt vocabularies no longer refuse a warm start: their rows are mapped by token (issue 25).
    rebuilt_artifact = PreprocessArtifact.load(rebuilt["components"]["preprocess"]["output"])
    assert incompatibility(served, rebuilt_artifact, model) is None
    mapping = vocabulary_mapping(served, rebuilt_artifact)
    # The added pair's words are all in the seed: no new rows, but their counts reorder the ids.
    assert {side: entry["new"] for side, entry in mapping_summary(mapping).items()} == {"source": 0, "target": 0}
    assert any(list(ids) != list(range(len(ids))) for ids in mapping.values())
    reason = incompatibility(served, PreprocessArtifact.load(same_vocab["components"]["preprocess"]["output"]),
                             dataclasses.replace(model, units=model.units + 1))
    assert reason == "model.units differs (served 32, now 33)"


def test_warm_start_loads_the_served_weights_and_refuses_another_layout(artifacts, tmp_path, caplog):
    """The served model warm-starts a new model; a copy whose output kernel is saved in another
    layout (as an earlier build stored it) is refused with the reason, and nothing is restored."""
    import numpy as np
    import tensorflow as tf

    from components.core.artifacts import PreprocessArtifact
    from components.model import Seq2Seq
    from components.model.checkpoints import vocabulary_sizes
    from components.trainer.warm_start import warm_start
    from pipeline.config import load_config

    served = artifacts / "serving" / "en-ko" / "1"
    runs = [json.loads(p.read_text()) for p in sorted(artifacts.glob("runs/*/run.json"))]
    same_vocab = next(r for r in runs if r["config"]["preprocess"]["vocabulary"] == "reuse_served")
    artifact = PreprocessArtifact.load(same_vocab["components"]["preprocess"]["output"])
    model_config = load_config(EMBEDDED).model

    def fresh() -> Seq2Seq:
        return Seq2Seq.from_config(model_config, *vocabulary_sizes(artifact), seed=99)

    model = fresh()
    assert warm_start(model, str(served), artifact, model_config)
    saved = tf.train.load_checkpoint(str(served / "variables" / "variables"))
    np.testing.assert_array_equal(model.output_kernel.numpy(),
                                  saved.get_tensor("model/output_kernel/.ATTRIBUTES/VARIABLE_VALUE"))

    old_layout = tmp_path / "served"
    shutil.copytree(served, old_layout)
    earlier = fresh()
    earlier.output_kernel = tf.Variable(tf.transpose(earlier.output_kernel), name="output_kernel")
    tf.train.Checkpoint(model=earlier).write(str(old_layout / "variables" / "variables"))
    model, untouched = fresh(), fresh()
    with caplog.at_level(logging.INFO, logger="components.trainer.warm_start"):
        assert not warm_start(model, str(old_layout), artifact, model_config)
    assert "training from scratch because its variables have other shapes" in caplog.text
    assert f"output_kernel saved [{model_config.units}, " in caplog.text
    for got, want in zip(model.variables, untouched.variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


# A run stopped during training and resumed by the next: tests/test_run_interrupts.py (SIGINT, real
# processes); a SIGKILLed `seq2seq train` resumed: tests/test_trainer_resume.py; which earlier attempt a
# run resumes (a SIGKILL leaves its entry `running`): tests/test_runner_units.py.

# A held lock and a missing corpus: tests/test_run_refusals.py (real subprocesses, exit codes 4 and 2).


# ---------------------------------------------------------------- one artifacts root, several models (issue 23)


def test_the_first_push_is_listed_in_models_config_with_its_languages(artifacts):
    """serving/<name>/<version>/ with a models.config TF Serving parses; the card and the push record
    carry the languages (embedded.yaml names them) and the push record the name."""
    from tf_serving_config import parse_models_config

    root = artifacts / "serving"
    assert sorted(p for p in os.listdir(root) if not p.startswith(".")) == ["en-ko", "models.config"]
    assert parse_models_config((root / "models.config").read_text()) == [
        ("en-ko", str(root / "en-ko"), "tensorflow")]
    card = json.loads((root / "en-ko" / "1" / "assets" / "model_card.json").read_text())
    assert card["training_data"]["languages"] == {"source": "en", "target": "ko", "from": "config"}
    record = json.loads((root / "en-ko" / "1" / "assets.extra" / "push.json").read_text())
    assert (record["model_name"], record["languages"]["source"], record["languages"]["target"]) == ("en-ko", "en", "ko")


def test_a_second_language_pair_is_served_beside_the_first_and_not_judged_against_it(capsys, corpus, artifacts,
                                                                                     tmp_path):
    from tf_serving_config import parse_models_config

    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts, copy)
    before = served_versions(copy)
    code, result, out = run(capsys, corpus, copy, "--set", "preprocess.target_language=de")
    assert code == 0, out
    assert (result["model_name"], result["serving_model"]) == ("en-de", f"{copy}/serving/en-de/1")
    manifest = json.loads(Path(result["manifest"]).read_text())
    assert manifest["baseline_model"] is None  # the en-ko model is no baseline for en-de
    assert "baseline" not in manifest["components"]["evaluate"]["inputs"]
    assert served_versions(copy) == before
    assert result["serving"] == {"en-de": 1, "en-ko": int(before[-1])}
    assert f"serving en-de: version 1 ({copy}/serving/en-de/1; pushed by this run)" in out
    assert f"also serving: en-ko version {before[-1]}" in out
    assert [entry[0] for entry in parse_models_config((copy / "serving" / "models.config").read_text())] == [
        "en-de", "en-ko"]


def test_a_name_that_serves_another_language_pair_is_refused_before_any_work(capsys, corpus, artifacts):
    runs_before = sorted(os.listdir(artifacts / "runs"))
    code, result, out = run(capsys, corpus, artifacts, "--set", "preprocess.target_language=de",
                            "--set", "pusher.model_name=en-ko")
    assert code == 2 and result["status"] == "failed"
    latest = served_versions(artifacts)[-1]
    assert result["reason"] == (
        f"{artifacts}/serving/en-ko/{latest} translates en→ko, and this run's corpus is en→de (from the config): "
        "serve it under another name (--set pusher.model_name=NAME), or set "
        "preprocess.source_language/target_language")
    new_run = set(os.listdir(artifacts / "runs")) - set(runs_before)
    assert json.loads((artifacts / "runs" / new_run.pop() / "run.json").read_text())["components"] == {}


def test_the_old_single_model_layout_is_moved_under_the_models_name_with_one_line(capsys, caplog, corpus,
                                                                                   artifacts, tmp_path):
    """serving/<version>/ (the layout before model names) keeps working: its versions move to
    serving/en-ko/ with one warning line, and the newest is this run's baseline."""
    from tf_serving_config import parse_models_config

    copy = tmp_path / "artifacts"
    shutil.copytree(artifacts, copy)
    versions = served_versions(copy)
    for version in versions:
        shutil.move(copy / "serving" / "en-ko" / version, copy / "serving" / version)
    (copy / "serving" / "en-ko").rmdir()
    (copy / "serving" / "models.config").unlink()
    caplog.set_level("INFO")
    code, result, out = run(capsys, corpus, copy)
    moved = [r.getMessage() for r in caplog.records if "moved the serving folder" in r.getMessage()]
    assert moved == [f"moved the serving folder's versions {', '.join(versions)} to {copy}/serving/en-ko/ (TF "
                     f"Serving's multi-model layout): start TF Serving with --model_config_file="
                     f"{copy}/serving/models.config instead of --model_base_path={copy}/serving"]
    assert sorted(p for p in os.listdir(copy / "serving") if not p.startswith(".")) == ["en-ko", "models.config"]
    manifest = json.loads(Path(result["manifest"]).read_text())
    assert manifest["baseline_model"] == f"{copy}/serving/en-ko/{versions[-1]}"  # judged against the moved model
    assert code in (0, 3), out
    following = str(int(versions[-1]) + 1)  # a pushed candidate is the next number; an already served one is not
    pushed = [following] if result["serving_model"] == f"{copy}/serving/en-ko/{following}" else []
    assert served_versions(copy) == versions + pushed
    assert parse_models_config((copy / "serving" / "models.config").read_text()) == [
        ("en-ko", str(copy / "serving" / "en-ko"), "tensorflow")]
