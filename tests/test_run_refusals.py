"""Refusals before anything runs, through real `seq2seq` subprocesses: a missing corpus is a usage
error (exit 2, one line, no run folder), so are a malformed TF_CONFIG for a multi-worker run and a
file where ARTIFACTS/serving should be, and a held
lock (exit 4) names no manifest it never wrote.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.lock import RunLock

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "data" / "raw" / "seed.tsv"


def _cli(*args: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    """The five commands at once (each start-up loads TensorFlow): name -> (exit code, stdout, stderr)."""
    root = tmp_path_factory.mktemp("refusals")
    missing = str(root / "nonexistent.tsv")
    (root / "held").mkdir()
    (root / "filed").mkdir()
    (root / "filed" / "serving").write_text("not a folder")
    with RunLock(str(root / "held"), "holder") as lock:
        procs = {
            "run": _cli("run", "--data", missing, "--artifacts", str(root / "artifacts"), "--json"),
            "preprocess": _cli("preprocess", "--data", missing, "--out", str(root / "prep")),
            "locked": _cli("run", "--data", str(SEED), "--artifacts", str(root / "held"), "--json"),
            "serving_file": _cli("run", "--data", str(SEED), "--artifacts", str(root / "filed"), "--json"),
            "tf_config": _cli("run", "--data", str(SEED), "--artifacts", str(root / "cluster"),
                              "--set", "trainer.distribution=multi_worker", TF_CONFIG="{not json"),
        }
        done = {name: (p.communicate(timeout=300), p.returncode) for name, p in procs.items()}
    return root, lock.info, {name: (code, out, err) for name, ((out, err), code) in done.items()}


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


@pytest.mark.parametrize("command", ["run", "preprocess"])
def test_a_missing_corpus_is_one_line_exit_2_and_leaves_nothing(refused, command):
    root, _, results = refused
    code, out, err = results[command]
    assert code == 2, err
    line = _one_error_line(err)
    assert f"--data {root}/nonexistent.tsv: no such file" in line
    assert out == ""  # a usage error, like a bad --set: no run, so no summary
    assert not (root / "artifacts").exists() and not (root / "prep").exists()


def test_a_lock_refusal_exits_4_and_names_no_manifest(refused):
    root, holder, results = refused
    code, out, err = results["locked"]
    assert code == 4, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "failed" and result["manifest"] is None
    assert f"pid {holder['pid']}" in result["reason"] and holder["started_at"] in result["reason"]
    assert "manifest:" not in out  # the summary names no run.json: none was written
    assert f"run {result['run_id']}: failed" in out
    assert not (root / "held" / "runs").exists()
    _one_error_line(err)


def test_a_file_where_the_serving_folder_should_be_is_a_usage_error_before_any_work(refused):
    root, _, results = refused
    code, out, err = results["serving_file"]
    assert code == 2, err
    line = _one_error_line(err)
    assert f"the serving folder {root}/filed/serving is a file, not a folder" in line
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "failed" and result["cached"] == []
    assert (root / "filed" / "serving").read_text() == "not a folder"


def test_a_malformed_tf_config_fails_a_multi_worker_run_before_preprocessing(refused):
    root, _, results = refused
    code, out, err = results["tf_config"]
    assert code == 2, err
    assert "TF_CONFIG is not valid JSON" in _one_error_line(err)
    assert out == "" and not (root / "cluster").exists()
