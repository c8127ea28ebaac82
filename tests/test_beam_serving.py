"""Beam search in the exported SavedModel: the beam_search / beam_search_with_options signatures, the
Python client and `seq2seq translate --beam-width`, and the evaluator's `evaluator.decoder: beam`.

Reuses the session's tiny synthetic export (tests/export_fixtures.py); serving_default stays greedy.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from export_fixtures import synthetic_corpus, synthetic_run  # noqa: F401  (fixtures)
from test_export import VENV_BIN, clean_env, run_fresh_python

pytestmark = pytest.mark.slow

DEFAULTS = {"beam_width": -1, "length_penalty": -1.0, "max_length": 0, "n_best": -1, "no_repeat_ngram_size": -1}


def options(signatures, texts, **settings):
    values = {**DEFAULTS, **settings}
    dtypes = {"length_penalty": tf.float32}
    return signatures["beam_search_with_options"](
        text=tf.constant(texts), **{k: tf.constant(v, dtypes.get(k, tf.int32)) for k, v in values.items()})


@pytest.fixture(scope="module")
def loaded(synthetic_run):  # noqa: F811
    return tf.saved_model.load(synthetic_run["export"])


@pytest.fixture(scope="module")
def texts(synthetic_corpus):  # noqa: F811
    return [s for s, _ in synthetic_corpus[:100]] + ["", "   "]


def test_width_one_equals_serving_default(loaded, texts):
    greedy = {k: v.numpy() for k, v in loaded.signatures["serving_default"](text=tf.constant(texts)).items()}
    beam = {k: v.numpy() for k, v in options(loaded.signatures, texts, beam_width=1, n_best=1,
                                              length_penalty=0.0, no_repeat_ngram_size=0).items()}
    assert set(beam) == set(greedy) | {"translations", "scores"}
    for key in ("translation", "tokens", "token_ids", "length"):
        np.testing.assert_array_equal(beam[key], greedy[key], err_msg=key)
    np.testing.assert_array_equal(beam["score"], greedy["score"])
    np.testing.assert_allclose(beam["attention"], greedy["attention"], atol=1e-6)
    assert beam["translations"].shape == (len(texts), 1)
    np.testing.assert_array_equal(beam["translations"][:, 0], greedy["translation"])
    np.testing.assert_array_equal(beam["scores"][:, 0], greedy["score"])  # alpha 0: the raw score
    assert beam["length"][-2:].tolist() == [0, 0] and beam["scores"][-2:, 0].tolist() == [0.0, 0.0]


def test_beam_search_uses_the_exported_defaults_and_options_override_them(loaded, texts, synthetic_run):  # noqa: F811
    card = json.loads((Path(synthetic_run["export"]) / "assets" / "model_card.json").read_text(encoding="utf-8"))
    assert card["decoding"]["beam"]["beam_width"] == 4 and card["decoding"]["beam"]["n_best"] == 1
    assert {"beam_search", "beam_search_with_options"} <= set(card["signatures"])
    assert "beam_search_with_options" in (Path(synthetic_run["export"]) / "assets" / "README.md").read_text()

    plain = {k: v.numpy() for k, v in loaded.signatures["beam_search"](text=tf.constant(texts)).items()}
    default = {k: v.numpy() for k, v in options(loaded.signatures, texts).items()}
    explicit = {k: v.numpy() for k, v in options(loaded.signatures, texts, beam_width=4, length_penalty=0.6,
                                                  max_length=14, n_best=1, no_repeat_ngram_size=0).items()}
    for other in (default, explicit):
        for key in ("translation", "token_ids", "length", "translations"):
            np.testing.assert_array_equal(other[key], plain[key], err_msg=key)
        np.testing.assert_allclose(other["scores"], plain["scores"], rtol=1e-6)
    assert plain["translations"].shape == (len(texts), 1)

    short = options(loaded.signatures, texts, beam_width=3, n_best=3, max_length=4)
    assert short["token_ids"].shape[1] <= 4 and short["translations"].shape == (len(texts), 3)
    scores = short["scores"].numpy()[:-2]
    finite = np.where(np.isfinite(scores), scores, -np.inf)
    assert (np.diff(finite, axis=1) <= 1e-6).all()  # best first
    np.testing.assert_array_equal(short["translations"].numpy()[:, 0], short["translation"].numpy())
    assert any(len(set(row)) > 1 for row in short["translations"].numpy()[:-2].tolist())  # distinct hypotheses


def test_bad_requests_fail_with_clear_messages(loaded):
    with pytest.raises(tf.errors.InvalidArgumentError, match="n_best must be at most beam_width"):
        options(loaded.signatures, ["w1 w2"], beam_width=2, n_best=3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_length must be at most 1024"):
        options(loaded.signatures, ["w1 w2"], max_length=5000)
    with pytest.raises(tf.errors.InvalidArgumentError, match="beam_width must be at least 1"):
        options(loaded.signatures, ["w1 w2"], beam_width=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="n_best must be at least 1"):
        options(loaded.signatures, ["w1 w2"], n_best=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_length must not be negative"):
        options(loaded.signatures, ["w1 w2"], max_length=-3)
    # beam_width -1 is the default (4): n_best 3 fits it.
    assert options(loaded.signatures, ["w1 w2"], n_best=3)["scores"].shape == (1, 3)


def test_export_config_validates_the_beam_defaults():
    from components.core.config import ConfigError
    from pipeline.config import load_config

    config = load_config(None, ["export.beam_width=3", "export.n_best=2", "evaluator.decoder=beam"])
    assert (config.export.beam_width, config.export.n_best, config.evaluator.decoder) == (3, 2, "beam")
    for bad, message in (("export.beam_width=0", "export.beam_width: must be at least 1"),
                         ("export.n_best=5", "export.n_best: must be in [1, export.beam_width = 4]"),
                         ("export.length_penalty=-1", "export.length_penalty: must not be negative"),
                         ("export.no_repeat_ngram_size=-2", "export.no_repeat_ngram_size: must not be negative"),
                         ("evaluator.decoder=sampling", "evaluator.decoder")):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_config(None, [bad])


def test_fresh_process_and_saved_model_cli_run_beam_search(synthetic_run, tmp_path):  # noqa: F811
    out = run_fresh_python("""
        import json, sys
        import tensorflow as tf
        model = tf.saved_model.load(sys.argv[1])
        out = model.signatures["beam_search"](text=tf.constant(["w1 w2 w3", ""]))
        print(json.dumps({"translation": [t.decode() for t in out["translation"].numpy()],
                          "translations_shape": list(out["translations"].shape),
                          "loaded": sorted(m for m in ("components", "tensorflow_text") if m in sys.modules)}))
    """, tmp_path, synthetic_run["export"])
    assert out["translations_shape"] == [2, 1] and out["translation"][1] == "" and out["loaded"] == []

    cli = str(VENV_BIN / "saved_model_cli")
    common = [cli, "run", "--dir", synthetic_run["export"], "--tag_set", "serve"]
    plain = subprocess.run(common + ["--signature_def", "beam_search", "--input_exprs", 'text=["w1 w2 w3"]'],
                           capture_output=True, text=True, env=clean_env(), timeout=180)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "translations" in plain.stdout and "scores" in plain.stdout
    exprs = 'text=["w1 w2 w3"];beam_width=2;length_penalty=0.6;max_length=0;n_best=2;no_repeat_ngram_size=-1'
    opts = subprocess.run(common + ["--signature_def", "beam_search_with_options", "--input_exprs", exprs],
                          capture_output=True, text=True, env=clean_env(), timeout=180)
    assert opts.returncode == 0, opts.stderr[-2000:]
    assert re.search(r"translations:\n\[\[b'[^']*' b'[^']*'\]\]", opts.stdout), opts.stdout[-2000:]


def test_translate_cli_prints_the_n_best_list(synthetic_run, capsys):  # noqa: F811
    from pipeline.cli import main

    assert main(["translate", "--model", synthetic_run["export"], "--beam-width", "2", "--n-best", "2",
                 "w1 w2 w3", "w4"]) == 0
    blocks = capsys.readouterr().out.split("\n\n")
    assert len(blocks) == 3 and blocks[2] == ""
    for block in blocks[:2]:
        rows = [line.split("\t") for line in block.splitlines()]
        assert [r[0] for r in rows] == ["1", "2"] and float(rows[0][1]) >= float(rows[1][1])
    assert main(["translate", "--model", synthetic_run["export"], "--beam-width", "2", "--n-best", "2",
                 "--length-penalty", "0", "--json", "w1 w2 w3"]) == 0
    result = json.loads(capsys.readouterr().out.strip())
    assert [h["translation"] for h in result["n_best"]][0] == result["translation"]
    assert len(result["n_best"]) == 2
    # A bad request is a usage error, before the model is loaded.
    assert main(["translate", "--model", synthetic_run["export"], "--beam-width", "2", "--n-best", "3", "w1"]) == 2


def test_evaluator_records_the_beam_decoder_and_falls_back_for_an_old_baseline(
        synthetic_run, tmp_path, monkeypatch, caplog):  # noqa: F811
    from components.core.config import EvaluatorConfig
    from components.evaluator import beam_options, run_evaluation
    from components.serving.client import Translator, load_translator

    config = EvaluatorConfig(decoder="beam", beam_width=2, num_samples=2)
    result = run_evaluation(synthetic_run["export"], synthetic_run["examples"], str(tmp_path / "same"), config,
                            baseline_model=synthetic_run["export"])
    evaluation = result["evaluation"]
    assert (evaluation["decoder"], evaluation["beam_width"]) == ("beam", 2)
    assert evaluation["baseline_decoder"] == {"decoder": "beam", "beam_width": 2}
    assert evaluation["baseline"]["bleu"] == evaluation["bleu"]  # the same model, decoded the same way
    written = json.loads((tmp_path / "same" / "evaluation.json").read_text(encoding="utf-8"))
    assert written["decoder"] == "beam"
    assert "Decoder: beam search (width 2)" in (tmp_path / "same" / "report.md").read_text(encoding="utf-8")

    # A served model exported before the beam signatures: its translations are greedy, and recorded so.
    from components.evaluator import translate_baseline

    old = str(tmp_path / "old")
    shutil.copytree(synthetic_run["export"], old)
    monkeypatch.setattr(Translator, "has_beam_search", property(lambda self: self.directory != old))
    decoded: dict = {}
    sources = ["w1 w2 w3", "w4 w5"]
    translations, unloadable = translate_baseline(old, sources, beam_options(config), decoded)
    assert unloadable is None and decoded["decoder"] == "greedy" and "decoded greedily" in decoded["note"]
    assert translations == [t.translation for t in load_translator(old).translate(sources)]
    assert "has no beam_search_with_options signature" in caplog.text
