"""Serving-side faults: NaN weights in a candidate, an unloadable served model, unbounded decode
lengths, non-UTF-8 lines on `seq2seq translate`'s stdin. Real preprocessing, real SavedModels
(a tiny untrained model exported with the exporter's own functions), real subprocesses."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from components.core.artifacts import Evaluation, PreprocessArtifact
from components.core.config import EvaluatorConfig
from pipeline.cli import main
from tests.trainer_helpers import REPO, config, preprocess, synthetic_corpus

TOY = ("preprocess.eval_fraction=0.2", "preprocess.max_source_length=8", "preprocess.max_target_length=10",
       "model.units=16", "model.embedding_dim=8")
VENV_BIN = Path(sys.executable).parent
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    """A preprocess output, and two exports of one untrained tiny model: as built, and with a NaN."""
    from components.exporter.export import export_model
    from components.model import Seq2Seq

    root = tmp_path_factory.mktemp("tiny")
    cfg = config(*TOY)
    examples = preprocess(synthetic_corpus(root / "toy.tsv", 60), root / "prep", cfg)
    artifact = PreprocessArtifact.load(str(examples))
    model = Seq2Seq.from_config(cfg.model, len(artifact.vocabulary("source")), len(artifact.vocabulary("target")))
    finite = export_model(model, artifact, str(root / "finite"), cfg)
    model.output_bias[5].assign(float("nan"))
    nan = export_model(model, artifact, str(root / "nan"), cfg)
    return {"examples": str(examples), "finite": finite, "nan": nan}


# ---------------------------------------------------------------- 1. never bless a non-finite model


@pytest.mark.slow
def test_faults_the_evaluator_refuses_a_model_with_nan_variables(tiny, tmp_path):
    from components.evaluator import run_evaluation

    run_evaluation(tiny["finite"], tiny["examples"], str(tmp_path / "ok"), EvaluatorConfig())
    assert Evaluation(str(tmp_path / "ok")).blessing()["blessed"] is True  # min_bleu 0, nothing served

    run_evaluation(tiny["nan"], tiny["examples"], str(tmp_path / "nan"), EvaluatorConfig())
    blessing = Evaluation(str(tmp_path / "nan")).blessing()
    assert blessing["blessed"] is False
    assert blessing["non_finite"] == "NaN or infinity in 1 of its variables (model/output_bias)"
    assert blessing["reason"] == f"the candidate is not finite: {blessing['non_finite']}"
    assert "**Not finite**: NaN or infinity in 1 of its variables" in \
        (tmp_path / "nan" / "report.md").read_text(encoding="utf-8")


def test_faults_non_finite_scores_or_eval_loss_are_never_blessed():
    from components.evaluator.metrics import decide

    assert not decide(float("nan"), None, 0.0, 0.0).blessed
    blessing = decide(50.0, 10.0, 0.0, 0.0, non_finite="its training's eval loss is not finite")
    assert not blessing.blessed and "eval loss is not finite" in blessing.reason


# ---------------------------------------------------------------- 2. an unloadable served model


@pytest.mark.slow
@pytest.mark.parametrize("cut", ["saved_model.pb", "variables/variables.data-00000-of-00001"])
def test_faults_an_unloadable_served_model_is_reported_and_treated_as_absent(tiny, tmp_path, cut):
    """Before: evaluation failed on every run (DecodeError / IndexError), so nothing could be pushed."""
    from components.evaluator import run_evaluation

    served = tmp_path / "serving" / "1"
    shutil.copytree(tiny["finite"], served)
    data = (served / cut).read_bytes()
    (served / cut).write_bytes(data[: len(data) // 2])
    out = tmp_path / "eval"
    run_evaluation(tiny["finite"], tiny["examples"], str(out), EvaluatorConfig(), baseline_model=str(served))
    blessing = Evaluation(str(out)).blessing()
    assert blessing["blessed"] is True and blessing["baseline_bleu"] is None
    assert blessing["baseline_unloadable"].startswith(f"{served}: ")
    assert blessing["reason"].startswith(f"the served model could not be loaded ({served}: ")
    assert blessing["reason"].endswith("treated as absent; BLEU passes evaluator.min_bleu")
    evaluation = Evaluation(str(out)).evaluation()
    assert evaluation["baseline"] is None and evaluation["baseline_unloadable"] == blessing["baseline_unloadable"]
    assert "**The served model could not be loaded**" in (out / "report.md").read_text(encoding="utf-8")

    # Judged on min_bleu alone: a candidate under it is still refused.
    run_evaluation(tiny["finite"], tiny["examples"], str(tmp_path / "strict"), EvaluatorConfig(min_bleu=100.0),
                   baseline_model=str(served))
    assert Evaluation(str(tmp_path / "strict")).blessing()["blessed"] is False


# ---------------------------------------------------------------- 3. decode length


@pytest.mark.slow
def test_faults_decode_length_is_capped_in_the_graph(tiny):
    from components.serving.client import MAX_DECODE_LENGTH_LIMIT

    assert MAX_DECODE_LENGTH_LIMIT == 1024
    signature = tf.saved_model.load(tiny["finite"]).signatures["translate_with_max_length"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_length must be at most 1024"):
        signature(text=tf.constant(["w1 w2"]), max_length=tf.constant(MAX_DECODE_LENGTH_LIMIT + 1))
    out = signature(text=tf.constant(["w1 w2"]), max_length=tf.constant(MAX_DECODE_LENGTH_LIMIT))
    assert 1 <= int(out["length"].numpy()[0]) <= MAX_DECODE_LENGTH_LIMIT
    card = json.loads((Path(tiny["finite"]) / "assets" / "model_card.json").read_text(encoding="utf-8"))
    assert card["decoding"]["max_decode_length_limit"] == MAX_DECODE_LENGTH_LIMIT


@pytest.mark.slow
def test_faults_saved_model_cli_run_reports_the_decode_length_limit(tiny):
    run = subprocess.run([str(VENV_BIN / "saved_model_cli"), "run", "--dir", tiny["finite"], "--tag_set", "serve",
                          "--signature_def", "translate_with_max_length",
                          "--input_exprs", 'text=["w1 w2"];max_length=1025'],
                         capture_output=True, text=True, env=ENV, timeout=180)
    assert run.returncode != 0
    assert "max_length must be at most 1024" in run.stderr


@pytest.mark.slow
def test_faults_translate_refuses_a_max_length_above_the_limit(tiny):
    """Before: `--max-length 5000000` decoded on and on (here: until the 120 s timeout)."""
    run = subprocess.run([str(VENV_BIN / "seq2seq"), "translate", "--model", tiny["finite"], "--max-length",
                          "5000000", "w1 w2"], capture_output=True, text=True, env=ENV, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert "argument --max-length: must be at most 1024 (MAX_DECODE_LENGTH_LIMIT), got 5000000" in run.stderr


@pytest.mark.slow
def test_faults_decode_length_limit_in_config_and_the_python_client(tiny):
    from components.core.config import ConfigError
    from components.exporter.export import max_decode_length
    from components.serving import load_translator
    from components.serving.client import DecodeLengthError

    assert max_decode_length(config("export.max_decode_length=1024")) == 1024
    with pytest.raises(ConfigError, match=r"export\.max_decode_length: must be in \[1, 1024\]") as error:
        config("export.max_decode_length=5000")
    assert error.value.exit_code == 2
    assert max_decode_length(config("preprocess.max_target_length=5000")) == 1024  # the default is capped
    with pytest.raises(DecodeLengthError, match="at most 1024") as error:
        load_translator(tiny["finite"]).translate(["w1 w2"], max_length=5000)
    assert error.value.exit_code == 2


# ---------------------------------------------------------------- 5. translate: non-UTF-8 stdin lines


@pytest.mark.slow
def test_faults_translate_reports_a_bad_stdin_line_and_goes_on(tiny):
    """Before: the bad line aborted the stream (exit 1) and no line read with it was printed."""
    from components.serving import load_translator

    expected = [t.translation for t in load_translator(tiny["finite"]).translate(["w1 w2", "w3 w4 w5", "w6"])]
    assert all(expected)
    run = subprocess.run([str(VENV_BIN / "seq2seq"), "translate", "--model", tiny["finite"]],
                         input=b"w1 w2\n\xff\xfe bad\nw3 w4 w5\nw6", capture_output=True, env=ENV, timeout=180)
    assert run.returncode == 1
    assert run.stdout.decode("utf-8").split("\n") == [expected[0], "", expected[1], expected[2], ""]
    stderr = run.stderr.decode("utf-8", "replace")
    assert "stdin line 2: not valid UTF-8 (invalid start byte at byte 0); its output line is empty" in stderr
    assert "1 stdin line(s) were not valid UTF-8 (line 2); the other 3 were translated" in stderr


@pytest.mark.slow
def test_faults_translate_json_keeps_one_record_per_input_line(tiny, capsys, monkeypatch):
    from components.serving import load_translator

    expected = [t.translation for t in load_translator(tiny["finite"]).translate(["w1 w2", "w7"])]
    stdin = io.TextIOWrapper(io.BytesIO(b"w1 w2\nbad \xc3\nw7\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert main(["translate", "--model", tiny["finite"], "--json", "--batch-size", "2"]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["translation"] for r in records] == [expected[0], None, expected[1]]
    assert records[1] == {"source": None, "translation": None,
                          "error": "stdin line 2: not valid UTF-8 (unexpected end of data at byte 4)"}
    assert records[2]["source"] == "w7"


def test_faults_cli_max_length_bounds_are_usage_errors(capsys):
    for value in ("0", "1025", "x"):
        with pytest.raises(SystemExit) as stopped:
            main(["translate", "--model", str(REPO / "missing"), "--max-length", value, "w1"])
        assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "must be at least 1, got 0" in err and "must be at most 1024" in err and "expected an integer" in err
