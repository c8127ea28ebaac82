"""Runner building blocks: blessing rule, metrics, fingerprints, the run lock."""
import json
import os
import subprocess
import sys

import pytest

from components.core.io import digest
from components.evaluator.metrics import decide, score
from pipeline.fingerprint import corpus_fingerprint, resolve_corpus
from pipeline.lock import LockedError, RunLock


def test_blessing_rule():
    assert decide(10.0, None, tolerance=0.0, min_bleu=0.0).blessed
    assert not decide(10.0, None, tolerance=0.0, min_bleu=20.0).blessed
    assert decide(9.5, 10.0, tolerance=1.0, min_bleu=0.0).blessed
    assert not decide(8.9, 10.0, tolerance=1.0, min_bleu=0.0).blessed
    assert decide(10.0, 10.0, tolerance=0.0, min_bleu=0.0).blessed  # not worse is enough
    assert "worse than the served model" in decide(5.0, 10.0, 0.0, 0.0).reason


def test_scores_use_sacrebleu_and_exact_match():
    refs = ["텐서플로우는 딥러닝을 위한 프레임워크이다", "텐서플로우는 매우 빠르게 변화한다"]
    perfect = score(refs, refs)
    assert perfect.bleu == pytest.approx(100.0)
    assert perfect.chrf == pytest.approx(100.0)
    assert perfect.exact_match == 100.0
    half = score(["텐서플로우는 딥러닝을 위한 프레임워크이다", "완전히 다른 문장"], refs)
    assert half.exact_match == 50.0
    assert 0.0 < half.chrf < 100.0


def test_corpus_fingerprint_follows_content(tmp_path):
    (tmp_path / "a.tsv").write_text("x\ty\n")
    files = resolve_corpus(str(tmp_path))
    assert files == [f"{tmp_path}/a.tsv"]
    before = corpus_fingerprint(files)
    (tmp_path / "a.tsv").write_text("x\tz\n")
    assert corpus_fingerprint(files) != before
    assert resolve_corpus(str(tmp_path / "*.csv")) == []
    assert resolve_corpus(str(tmp_path / "missing.tsv")) == []
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})


def test_second_holder_fails_naming_pid_and_start_time(tmp_path):
    with RunLock(str(tmp_path), "first") as held:
        with pytest.raises(LockedError) as info:
            RunLock(str(tmp_path), "second").acquire()
        message = str(info.value)
        assert f"pid {os.getpid()}" in message and held.info["started_at"] in message
    assert not (tmp_path / ".lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    import socket
    (tmp_path / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                                "started_at": "2020-01-01T00:00:00Z"}))
    with RunLock(str(tmp_path), "mine"):
        assert json.loads((tmp_path / ".lock").read_text())["run_id"] == "mine"
    assert "stale lock" in caplog.text


@pytest.fixture(autouse=False)
def forget_probe():
    """Each test imports its own `probe` package from its own tmp_path."""
    def forget():
        for name in [n for n in sys.modules if n == "probe" or n.startswith("probe.")]:
            del sys.modules[name]
    forget()
    yield
    forget()


def _write_probe_package(root):
    package = root / "probe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "executor.py").write_text(
        "import json\n\n\ndef run():\n    from probe.helper import twice  # a lazy import counts too\n"
        "    return json.dumps(twice(1))\n")
    (package / "helper.py").write_text("def twice(x):\n    return 2 * x\n")
    (package / "unrelated.py").write_text("X = 1\n\n\ndef run():\n    return X\n")
    return package


def test_code_digest_follows_the_component_and_the_modules_it_imports(tmp_path, monkeypatch, forget_probe):
    import importlib

    from pipeline.fingerprint import code_digest, module_closure

    package = _write_probe_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert set(module_closure("probe.executor", ("probe",))) == {"probe", "probe.executor", "probe.helper"}
    before = code_digest("probe.executor", ("probe",))

    (package / "unrelated.py").write_text("X = 2\n\n\ndef run():\n    return X\n")
    code_digest.cache_clear()
    assert code_digest("probe.executor", ("probe",)) == before  # not imported: not in the key

    (package / "helper.py").write_text("def twice(x):\n    return x + x\n")
    code_digest.cache_clear()
    assert code_digest("probe.executor", ("probe",)) != before
    code_digest.cache_clear()


def test_editing_a_component_changes_its_cache_key_and_every_key_downstream(tmp_path, monkeypatch, forget_probe):
    """The runner's key of a component covers its code; a downstream component's key covers the
    upstream key, so an edit re-runs the component and everything after it."""
    import importlib

    from components.core.artifacts import PreprocessArtifact, TrainedModel
    from components.core.config import PipelineConfig
    from pipeline import fingerprint as fingerprint_module
    from pipeline.pipeline import ComponentSpec, InputSpec
    from pipeline.runner import RunState, fingerprint

    package = _write_probe_package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(fingerprint_module, "PROJECT_PACKAGES", ("probe",))
    importlib.invalidate_caches()
    upstream = ComponentSpec("probe", importlib.import_module("probe.executor").run, PreprocessArtifact,
                             config_sections=("preprocess",))
    # Its own code (probe.unrelated) does not change: only the upstream key moves its key.
    downstream = ComponentSpec("after", importlib.import_module("probe.unrelated").run, TrainedModel,
                               inputs={"examples": InputSpec(PreprocessArtifact, "probe")})
    state = RunState("r", str(tmp_path), str(tmp_path), PipelineConfig(), [])

    def keys() -> tuple[str, str]:
        fingerprint_module.code_digest.cache_clear()
        first = fingerprint(state, upstream, {})
        return first, fingerprint(state, downstream, {"examples": PreprocessArtifact(str(tmp_path), first)})

    before = keys()
    (package / "helper.py").write_text("def twice(x):\n    return x * 2\n")
    after = keys()
    assert after[0] != before[0] and after[1] != before[1]
    fingerprint_module.code_digest.cache_clear()


def _run_json(capsys, artifacts, data):
    from pipeline.cli import main

    code = main(["run", "--data", str(data), "--artifacts", str(artifacts), "--json"])
    return code, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_an_unwritable_artifacts_folder_still_ends_with_the_json_summary(capsys, tmp_path):
    corpus = tmp_path / "c.tsv"
    corpus.write_text("hello\tworld\n")
    not_a_folder = tmp_path / "artifacts"
    not_a_folder.write_text("a file where the artifacts folder should be")
    code, result = _run_json(capsys, not_a_folder, corpus)
    assert code == 1 and result["status"] == "failed" and result["manifest"] is None
    assert "cannot use the artifacts folder" in result["reason"]

    artifacts = tmp_path / "ok"
    artifacts.mkdir()
    (artifacts / "runs").write_text("a file where runs/ should be")  # every manifest write fails
    code, result = _run_json(capsys, artifacts, corpus)
    assert code == 1 and result["status"] == "failed" and result["manifest"] is None
    assert result["reason"]


def test_a_full_disk_is_named_as_such():
    import errno

    from pipeline.runner import _describe

    assert _describe(OSError(errno.ENOSPC, "No space left on device")).startswith("the disk is full")


def test_abandoned_runs_are_marked_interrupted_and_old_temporaries_removed(capsys, tmp_path):
    import time

    artifacts = tmp_path / "artifacts"
    old_run = artifacts / "runs" / "20260101T000000.000Z-aaaaaa"
    (old_run / "train").mkdir(parents=True)
    (old_run / "run.json").write_text(json.dumps({"run_id": old_run.name, "status": "running", "components": {}}))
    stale = [old_run / "run.json.tmp", old_run / "export.tmp-0123abcd", old_run / "preprocess.failed",
             old_run / "train" / "config.yaml.tmp-99"]
    for path in stale:
        path.mkdir() if path.suffix == ".failed" or "export" in path.name else path.write_text("x")
    fresh = old_run / "evaluate.tmp-fresh"
    fresh.write_text("still being written?")
    two_days_ago = time.time() - 2 * 24 * 3600
    for path in stale:
        os.utime(path, (two_days_ago, two_days_ago))
    unreadable = tmp_path / "corpus.xyz"  # found (so the run starts and tidies), then refused by preprocess
    unreadable.write_text("hello\tworld\n")
    code, result = _run_json(capsys, artifacts, unreadable)
    assert code == 1 and "cannot tell the format" in result["reason"]
    manifest = json.loads((old_run / "run.json").read_text())
    assert manifest["status"] == "interrupted" and "without finishing" in manifest["reason"]
    assert [p for p in stale if p.exists()] == []
    assert fresh.exists()


@pytest.mark.slow
def test_a_tiny_time_budget_stops_training_and_the_run_still_pushes(capsys, caplog, tmp_path):
    """trainer.max_minutes: training stops right after an evaluated checkpoint, export, evaluation and
    push follow; a resumed run counts the time already spent and trains no further."""
    from pathlib import Path

    from pipeline.cli import main

    repo = Path(__file__).resolve().parents[1]
    caplog.set_level("INFO")
    args = ["--config", str(repo / "pipeline" / "embedded.yaml"), "--set", "trainer.epochs=100000",
            "--set", "trainer.max_minutes=0.05", "--set", "trainer.log_every_steps=1"]
    code = main(["run", "--data", str(repo / "data" / "raw"), "--artifacts", str(tmp_path / "a"), "--json", *args])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code in (0, 3) and result["status"] in ("pushed", "not_blessed"), result
    assert code == 0 and result["serving_model"] == f"{tmp_path}/a/serving/en-ko/1"  # min_bleu 0: a first model is pushed
    train_dir = Path(json.loads(Path(result["manifest"]).read_text())["components"]["train"]["output"])
    metrics = json.loads((train_dir / "metrics.json").read_text())
    assert metrics["time_budget_spent"] is True and 1 <= metrics["epochs"] < 100000
    assert 3.0 <= metrics["wall_time_s"] < 60.0
    assert "budget left" in caplog.text and "time budget of 0.05 minutes spent" in caplog.text
    assert list((train_dir / "checkpoints").glob("ckpt-*.index")) and list((train_dir / "best").glob("ckpt-*.index"))

    steps = metrics["steps"]
    assert main(["train", "--examples", str(train_dir.parent / "preprocess"), "--out", str(train_dir), *args]) == 0
    assert json.loads((train_dir / "metrics.json").read_text())["steps"] == steps  # the budget was already spent


def test_a_stop_by_signal_is_told_from_a_failure_and_keeps_its_signal_through_beam():
    import signal

    from components.trainer import TrainingInterrupted
    from pipeline.runner import RunInterrupted, stop_signal

    term = RunInterrupted("SIGTERM", signal.SIGTERM)
    assert stop_signal(term) == "SIGTERM" and term.exit_code == 143
    # Beam re-raises an exception from a DoFn as type(e)(args[0] + annotation, *args[1:]).
    reraised = type(term)(term.args[0] + " [while running 'ReadCorpus']", *term.args[1:])
    assert stop_signal(reraised) == "SIGTERM" and reraised.exit_code == 143
    assert stop_signal(KeyboardInterrupt()) == "SIGINT"  # a second Ctrl-C in training
    stopped = TrainingInterrupted("training stopped by SIGTERM at step 3")
    stopped.exit_code = 128 + signal.SIGTERM
    assert stop_signal(stopped) == "SIGTERM"
    assert stop_signal(ValueError("bad")) is None and stop_signal(LockedError("held")) is None


def test_the_next_run_resumes_an_unfinished_attempt_with_the_same_key_and_nothing_else(tmp_path):
    """A SIGKILL leaves a component `running` in run.json (a signal: `interrupted`, an error: `failed`);
    the next run with the same key resumes that attempt's folder, never a finished one, another key's,
    or one whose folder is gone. Newest first."""
    from pipeline.runner import find_interrupted

    artifacts = tmp_path / "artifacts"

    def attempt(run_id: str, status: str, key: str = "key", folder: bool = True) -> str:
        output = artifacts / "runs" / run_id / "train"
        if folder:
            output.mkdir(parents=True)
        (artifacts / "runs" / run_id).mkdir(parents=True, exist_ok=True)
        entry = {"fingerprint": key, "status": status, "output": str(output)}
        manifest = {"run_id": run_id, "components": {"train": entry}}
        (artifacts / "runs" / run_id / "run.json").write_text(json.dumps(manifest))
        return str(output)

    attempt("20260101T000000.000Z-a", "succeeded")
    killed = attempt("20260102T000000.000Z-b", "running")
    assert find_interrupted(str(artifacts), "now", "train", "key") == killed
    assert find_interrupted(str(artifacts), "now", "train", "other key") is None
    assert find_interrupted(str(artifacts), "now", "export", "key") is None
    stopped = attempt("20260103T000000.000Z-c", "interrupted")
    assert find_interrupted(str(artifacts), "now", "train", "key") == stopped  # the newest
    attempt("20260104T000000.000Z-d", "failed", folder=False)  # its folder is gone: not resumable
    assert find_interrupted(str(artifacts), "now", "train", "key") == stopped
    failed = attempt("20260105T000000.000Z-e", "failed")
    assert find_interrupted(str(artifacts), "now", "train", "key") == failed
    assert find_interrupted(str(artifacts), "20260105T000000.000Z-e", "train", "key") == stopped  # not its own


def test_the_summary_names_both_decoders_the_blessings_first():
    from pipeline.runner import _decoders_line

    decoders = {"greedy": {"decoder": "greedy", "beam_width": None, "bleu": 29.391, "chrf": 42.78, "blessing": False},
                "beam": {"decoder": "beam", "beam_width": 4, "bleu": 31.04, "chrf": 46.451, "blessing": True}}
    assert _decoders_line(decoders) == ("beam search (width 4), the blessing's: bleu=31.04 chrf=46.45; "
                                        "greedy search: bleu=29.39 chrf=42.78")
