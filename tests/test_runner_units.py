"""Runner building blocks: blessing rule, metrics, fingerprints, the run lock."""
import json
import os
import subprocess
import sys

import pytest

from components.evaluator.metrics import decide, score
from pipeline.fingerprint import corpus_fingerprint, digest, resolve_corpus
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
