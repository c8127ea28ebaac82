"""Serving-side faults: NaN weights in a candidate, an unloadable served model, junk in serving/, a
model replaced after its evaluation, two pushes at once, unbounded decode lengths, non-UTF-8 lines
on `seq2seq translate`'s stdin. Real preprocessing, real SavedModels
(a tiny untrained model exported with the exporter's own functions), real subprocesses."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tensorflow as tf

from components.core.artifacts import Evaluation, PreprocessArtifact
from components.core.config import EvaluatorConfig
from components.core.errors import ArtifactError
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
def test_faults_an_unloadable_served_model_fails_the_evaluation_unless_ignored(tiny, tmp_path, cut):
    """Before: it was treated as absent without being asked, so a worse candidate was blessed on
    min_bleu alone. Now (evaluator.unloadable_baseline: fail) the evaluation fails naming it;
    `ignore` keeps judging the candidate alone, and says so."""
    from components.evaluator import run_evaluation

    served = tmp_path / "serving" / "1"
    shutil.copytree(tiny["finite"], served)
    data = (served / cut).read_bytes()
    (served / cut).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError) as failed:
        run_evaluation(tiny["finite"], tiny["examples"], str(tmp_path / "failed"), EvaluatorConfig(),
                       baseline_model=str(served))
    assert str(failed.value).startswith(f"the served model {served} cannot be loaded or run (")
    assert str(failed.value).endswith("): repair or remove that version, or set evaluator.unloadable_baseline=ignore "
                                      "to judge the candidate without it")
    assert not (tmp_path / "failed" / "blessing.json").exists()

    out = tmp_path / "eval"
    ignore = EvaluatorConfig(unloadable_baseline="ignore")
    run_evaluation(tiny["finite"], tiny["examples"], str(out), ignore, baseline_model=str(served))
    blessing = Evaluation(str(out)).blessing()
    assert blessing["blessed"] is True and blessing["baseline_bleu"] is None
    assert blessing["baseline_unloadable"].startswith(f"{served}: ")
    assert blessing["reason"].startswith(f"the served model could not be loaded ({served}: ")
    assert blessing["reason"].endswith("treated as absent (evaluator.unloadable_baseline: ignore); BLEU passes "
                                       "evaluator.min_bleu")
    evaluation = Evaluation(str(out)).evaluation()
    assert evaluation["baseline"] is None and evaluation["baseline_unloadable"] == blessing["baseline_unloadable"]
    assert "**The served model could not be loaded**" in (out / "report.md").read_text(encoding="utf-8")

    if cut == "saved_model.pb":  # once is enough: judged on min_bleu alone, a candidate under it is refused
        run_evaluation(tiny["finite"], tiny["examples"], str(tmp_path / "strict"),
                       EvaluatorConfig(min_bleu=100.0, unloadable_baseline="ignore"), baseline_model=str(served))
        assert Evaluation(str(tmp_path / "strict")).blessing()["blessed"] is False


# ---------------------------------------------------------------- 2b. the serving folder: what is a version


def _seq2seq(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "seq2seq"), *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def _errors(stderr: str) -> list[str]:
    """The ERROR lines of a `seq2seq` run's log, without their timestamp and logger prefix."""
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line.split(" ERROR seq2seq: ", 1)[1] for line in stderr.splitlines() if " ERROR seq2seq: " in line]


@pytest.fixture(scope="module")
def evaluated(tiny, tmp_path_factory) -> dict[str, str]:
    """A copy of the finite model, evaluated (blessed: nothing served, min_bleu 0). Tests push it
    but never change it."""
    from components.evaluator import run_evaluation

    root = tmp_path_factory.mktemp("evaluated")
    model = root / "model"
    shutil.copytree(tiny["finite"], model)
    run_evaluation(str(model), tiny["examples"], str(root / "evaluation"), EvaluatorConfig())
    return {"model": str(model), "evaluation": str(root / "evaluation")}


@pytest.mark.slow
def test_faults_junk_in_serving_is_ignored_and_a_broken_version_fails_the_evaluation(tiny, tmp_path, caplog):
    """Before: `echo notes > serving/20261203` made the file the served model, "treated as absent", so
    the candidate was judged on min_bleu alone (and `²` made every evaluate raise ValueError)."""
    serving = tmp_path / "serving"
    shutil.copytree(tiny["finite"], serving / "1")
    (serving / "20261203").write_text("notes\n")
    shutil.copytree(tiny["finite"], serving / "007")
    (serving / "²").mkdir()
    evaluate = ["evaluate", "--model", tiny["finite"], "--examples", tiny["examples"], "--serving", str(serving)]
    with caplog.at_level(logging.WARNING):
        assert main([*evaluate, "--out", str(tmp_path / "ok")]) == 0
    blessing = Evaluation(str(tmp_path / "ok")).blessing()
    assert blessing["baseline_model"] == f"{serving}/1" and blessing["baseline_unloadable"] is None
    assert blessing["baseline_bleu"] == blessing["candidate_bleu"]  # the same model, really compared
    warnings = [r.getMessage() for r in caplog.records if "not versions" in r.getMessage()]
    assert warnings == [f"ignoring 3 entries of the serving folder {serving} that are not versions: '007' (not a "
                        "canonical version number); '20261203' (a file); '²' (not a canonical version number)"]

    # A real version that does not load fails the evaluation (exit 1), naming it.
    graph = serving / "1" / "saved_model.pb"
    graph.write_bytes(graph.read_bytes()[:100])
    run = _seq2seq(*evaluate, "--out", str(tmp_path / "failed"))
    assert run.returncode == 1, run.stderr[-3000:]
    errors = _errors(run.stderr)
    assert len(errors) == 1 and errors[0].startswith(f"the served model {serving}/1 cannot be loaded or run (")
    assert "set evaluator.unloadable_baseline=ignore" in errors[0]
    assert not (tmp_path / "failed").exists()


# ---------------------------------------------------------------- 2c. the push: only what was evaluated, one at a time


@pytest.mark.slow
def test_faults_push_refuses_a_model_replaced_after_its_evaluation(tiny, tmp_path):
    """Before: a NaN re-export in the evaluated folder was pushed as serving/1 (exit 0), and the push
    record said "export_fingerprint": null."""
    from components.core.artifacts import ExportedModel, PushedModel, ServingRoot
    from components.core.component import RunContext
    from components.core.config import PipelineConfig
    from components.evaluator import run_evaluation
    from components.pusher.executor import run as push_step

    model, evaluation, serving = tmp_path / "model", tmp_path / "evaluation", tmp_path / "serving"
    shutil.copytree(tiny["finite"], model)
    run_evaluation(str(model), tiny["examples"], str(evaluation), EvaluatorConfig())
    blessing = Evaluation(str(evaluation)).blessing()
    evaluated = ExportedModel(str(model)).content_fingerprint()
    assert blessing["blessed"] and blessing["content_fingerprint"] == evaluated
    shutil.rmtree(model)
    shutil.copytree(tiny["nan"], model)  # e.g. `seq2seq export --overwrite` of another training
    replaced = ExportedModel(str(model)).content_fingerprint()
    push = ["push", "--model", str(model), "--evaluation", str(evaluation), "--serving", str(serving)]
    run = _seq2seq(*push)
    assert run.returncode == 1, run.stderr[-3000:]
    assert _errors(run.stderr) == [f"{model} is not the model that was evaluated: its content fingerprint is "
                                   f"{replaced}, the blessing's is {evaluated}; evaluate it again, then push"]
    assert not serving.exists()
    # The push step of `seq2seq run` checks the same.
    inputs = {"model": ExportedModel(str(model), "export-key"), "evaluation": Evaluation(str(evaluation))}
    with pytest.raises(ArtifactError, match=f"its content fingerprint is {replaced}, the blessing's is {evaluated};"):
        push_step(inputs, PushedModel(str(tmp_path / "push")), PipelineConfig(),
                  RunContext("run-1", serving_root=ServingRoot(str(serving))))
    assert not serving.exists() or ServingRoot(str(serving)).versions() == []

    # The evaluated model back in place: pushed, and its record carries the fingerprint.
    shutil.rmtree(model)
    shutil.copytree(tiny["finite"], model)
    assert main(push) == 0
    record = json.loads((serving / "1" / "assets.extra" / "push.json").read_text(encoding="utf-8"))
    assert record["content_fingerprint"] == evaluated and "export_fingerprint" not in record


@pytest.mark.slow
def test_faults_a_file_named_as_the_serving_folder_is_a_usage_error(tiny, evaluated, tmp_path):
    """Before: a traceback (push), and evaluate went on as if nothing were served."""
    serving = tmp_path / "serving"
    serving.write_text("not a folder")
    expected = f"the serving folder {serving} is a file, not a folder; name a folder (it is created if missing)"
    run = _seq2seq("push", "--model", evaluated["model"], "--evaluation", evaluated["evaluation"],
                   "--serving", str(serving))
    assert run.returncode == 2 and _errors(run.stderr) == [expected]
    assert main(["evaluate", "--model", tiny["finite"], "--examples", tiny["examples"], "--serving", str(serving),
                 "--out", str(tmp_path / "evaluation")]) == 2
    assert not (tmp_path / "evaluation").exists() and serving.read_text() == "not a folder"


def test_faults_the_multi_model_root_as_serving_folder_is_a_usage_error(tiny, evaluated, tmp_path):
    """ARTIFACTS/serving holds model names, not versions: taken as one model's folder it would have
    no baseline (every name ignored as junk), so a worse model would be blessed and pushed beside them."""
    root = tmp_path / "serving"
    shutil.copytree(tiny["finite"], root / "en-ko" / "1")
    expected = (f"--serving {root} holds the folders of served models (en-ko), not one model's versions: name "
                f"one model's folder, e.g. --serving {root}/en-ko")
    run = _seq2seq("push", "--model", evaluated["model"], "--evaluation", evaluated["evaluation"],
                   "--serving", str(root))
    assert run.returncode == 2 and _errors(run.stderr) == [expected]
    assert main(["evaluate", "--model", tiny["finite"], "--examples", tiny["examples"], "--serving", str(root),
                 "--out", str(tmp_path / "evaluation")]) == 2
    assert not (tmp_path / "evaluation").exists() and sorted(os.listdir(root)) == ["en-ko"]


@pytest.mark.slow
def test_faults_a_second_push_at_once_exits_4_and_leaves_the_first_alone(evaluated, tmp_path):
    """Before: the second push removed the first's copy as "left by an interrupted push"; the first
    then failed with "does not load and translate"."""
    from components.core.artifacts import ExportedModel, PushedModel, ServingRoot
    from components.core.component import RunContext
    from components.core.config import PipelineConfig
    from components.core.lock import LockedError
    from components.pusher.executor import run as push_step

    serving, paused, resume = tmp_path / "serving", tmp_path / "paused", tmp_path / "resume"
    script = textwrap.dedent(f"""
        import pathlib, time
        from components.core.artifacts import Evaluation
        from components.pusher import run_push
        def pause(partial):
            pathlib.Path({str(paused)!r}).write_text(partial)
            while not pathlib.Path({str(resume)!r}).exists():
                time.sleep(0.05)
        blessing = Evaluation({evaluated["evaluation"]!r}).blessing()
        print(run_push({evaluated["model"]!r}, {str(serving)!r}, blessing, keep=5, before_publish=pause))
    """)
    first = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=ENV)
    try:
        deadline = time.monotonic() + 240
        while not paused.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
            time.sleep(0.1)
        partial = Path(paused.read_text())
        second = _seq2seq("push", "--model", evaluated["model"], "--evaluation", evaluated["evaluation"],
                          "--serving", str(serving))
        assert second.returncode == 4, second.stderr[-3000:]
        errors = _errors(second.stderr)
        holder = f"another push holds {serving}/.push.lock: pid {first.pid} on "
        assert len(errors) == 1 and errors[0].startswith(holder)
        assert f"(pushing {evaluated['model']}); wait for it to finish" in errors[0]
        # The push step of `seq2seq run` takes the same lock.
        inputs = {"model": ExportedModel(evaluated["model"], "export-key"),
                  "evaluation": Evaluation(evaluated["evaluation"])}
        with pytest.raises(LockedError, match=re.escape(holder)):
            push_step(inputs, PushedModel(str(tmp_path / "push")), PipelineConfig(),
                      RunContext("run-2", serving_root=ServingRoot(str(serving))))
        assert partial.is_dir() and sorted(os.listdir(serving)) == sorted([".push.lock", partial.name])
        resume.touch()
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == f"{serving}/1" and sorted(os.listdir(serving)) == ["1"]


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
