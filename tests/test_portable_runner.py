"""The Beam job on the portable (Fn API) path that Flink, Spark and Dataflow share.

`components.preprocess.portable.local_portable_cluster` starts Beam's local job service and an
external SDK worker pool as separate processes on loopback ports; `seq2seq preprocess ... --
--runner=PortableRunner ...` submits the job to them. The worker is a fresh `python` (from PATH)
that unpickles every DoFn, imports the project itself and runs in its own working directory,
so what only works in one process (relative paths, module state, ops registered in the launcher)
fails here.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from components.core.errors import InputError
from components.preprocess import fs, inputs
from components.preprocess.portable import local_portable_cluster
from tests.preprocess_helpers import config, quarantine, run, serialized_examples, write_lines
from tests.test_preprocess_runner import synthetic_pairs

VENV_BIN = Path(sys.executable).parent
CONFIG = ("preprocess.eval_fraction=0.3", "preprocess.tokenizer=wordpiece", "preprocess.vocab_pieces=200",
          "preprocess.max_source_length=8", "preprocess.max_target_length=8",
          "preprocess.protected_spans=[printf, braces]")
# Normalization turns a run of whitespace into one space: padding the TSV's sources pushes the file
# over inputs.MIN_RANGE_BYTES (so it is read as two byte ranges, lines numbered across the cut)
# without adding tokens to tokenize. The CLI runs in its own process, where no monkeypatch reaches.
PAD = " " * 1500
IDENTICAL_FILES = ("source.vocab", "target.vocab", "source.vocab.counts.tsv", "target.vocab.counts.tsv",
                   "source.wordpiece.vocab", "target.wordpiece.vocab", "config.yaml")
# The timings, the only stats that differ between runs: numbers, and the {stage: seconds} object.
TIMING = re.compile(r'("(?:elapsed_seconds|pairs_per_second|beam_job_seconds|stage_seconds)": )(?:\{[^}]*\}|[^,\n]+)')
JOB_TIMEOUT_S = 300


def write_corpus(root: Path, n: int = 1500) -> Path:
    """TSV (two byte ranges), gzip JSONL and CSV; placeholders in every 7th pair; three bad records."""
    lines = []
    for i, line in enumerate(synthetic_pairs(n)):
        source, target = line.split("\t")
        lines.append(f"{source} %s {{count}}\t{{count}} {target} %s" if i % 7 == 0 else line)
    tsv = [line.replace(" ", PAD, 1) for line in lines[: n // 2]] + ["broken line without tab", "\tmissing source"]
    write_lines(root / "a.tsv", tsv)
    write_lines(root / "b.jsonl.gz", [json.dumps(dict(zip(("source", "target"), line.split("\t"))), ensure_ascii=False)
                                      for line in lines[n // 2: 3 * n // 4]] + ["{oops"], compress=True)
    write_lines(root / "c.csv", ["source,target"] + [line.replace("\t", ",") for line in lines[3 * n // 4:]])
    return root


def _proc_entries() -> Iterator[tuple[int, int, str, bytes]]:
    """(pid, process group, state, command line) of every live process (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(")") + 2:].split()
        yield int(entry.name), int(fields[2]), fields[0], cmdline


def _service_groups(beam_args: list[str]) -> set[int]:
    """The process groups of the job service and worker pool behind these Beam args."""
    ports = [arg.rsplit(":", 1)[1] for arg in beam_args if arg.startswith(("--job_endpoint=", "--environment_config="))]
    flags = [f"--port\0{ports[0]}".encode(), f"--service_port\0{ports[1]}".encode()]
    return {group for _, group, _, cmdline in _proc_entries() if any(flag in cmdline for flag in flags)}


def _alive_in(groups: set[int]) -> list[str]:
    return [f"{pid}: {cmdline[:120]!r}" for pid, group, state, cmdline in _proc_entries()
            if group in groups and state != "Z"]


@pytest.fixture
def portable_cluster(tmp_path: Path) -> Iterator[tuple[list[str], Path]]:
    """A job service + worker pool for one test; stopped (process groups killed) even when the test fails."""
    logs = tmp_path / "cluster-logs"
    with local_portable_cluster(log_dir=str(logs)) as beam_args:
        groups = _service_groups(beam_args)
        assert len(groups) == 2, f"expected the job service and the worker pool, found groups {groups}"
        yield beam_args, logs
    assert not _alive_in(groups), f"processes left running: {_alive_in(groups)}"


def _logs(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(logs.glob("*.log")))


def _launcher_imports(stderr: str) -> set[str]:
    """Top-level TensorFlow packages in the `-X importtime` report of the launching process."""
    return set(re.findall(r"^import time:.*\|\s*(tensorflow|tensorflow_text)\s*$", stderr, re.M))


def _comparable_stats(out: Path) -> str:
    return TIMING.sub(r"\1<timing>", (out / "stats.json").read_text(encoding="utf-8"))


@pytest.mark.slow
@pytest.mark.timeout(JOB_TIMEOUT_S + 120)
def test_portable_runner_with_an_external_worker_gives_the_direct_runners_output(tmp_path, portable_cluster):
    beam_args, logs = portable_cluster
    data = write_corpus(tmp_path / "data")
    tsv_units = [u for u in inputs.resolve_inputs(str(data), config(*CONFIG).preprocess) if u.path.endswith("a.tsv")]
    assert len(tsv_units) == 2  # byte ranges: the second range's lines are numbered from the first's count

    # The real console script, in a working directory of its own with relative paths: the worker
    # runs elsewhere (its cwd is the worker pool's), so the job must hand it absolute paths.
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPROFILEIMPORTTIME": "1"}
    command = [str(VENV_BIN / "seq2seq"), "preprocess", "--data", "data", "--out", "portable",
               *[arg for override in CONFIG for arg in ("--set", override)], "--", *beam_args]
    # stderr to a file, not a pipe: the import-time report would fill a pipe nobody reads meanwhile.
    with open(tmp_path / "launcher.log", "w") as log, subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=log) as launcher:
        try:
            # The reference run meanwhile: the portable job spends seconds waiting on process starts.
            direct = run(data, tmp_path / "direct", config(*CONFIG))
            launcher.wait(timeout=JOB_TIMEOUT_S)
        finally:
            launcher.kill()  # a no-op once it has exited
    stderr = (tmp_path / "launcher.log").read_text(errors="replace")
    report = "\n".join(line for line in stderr.splitlines() if not line.startswith("import time:"))
    assert launcher.returncode == 0, f"{report[-6000:]}\n{_logs(logs)}"
    assert "Job state changed to DONE" in report  # it did go through the job service

    portable = tmp_path / "portable"
    for name in IDENTICAL_FILES:
        assert (tmp_path / "direct" / name).read_bytes() == (portable / name).read_bytes(), name
    assert _comparable_stats(tmp_path / "direct") == _comparable_stats(portable)
    a, b = serialized_examples(tmp_path / "direct"), serialized_examples(portable)
    assert len(a["train"]) > 700 and len(a["eval"]) > 300
    assert a == b
    rejected = quarantine(portable)
    assert rejected == quarantine(tmp_path / "direct")
    assert [(Path(r["file"]).name, r["line"], r["reason"]) for r in rejected] == [
        ("a.tsv", 751, "wrong_column_count"), ("a.tsv", 752, "empty_side"), ("b.jsonl.gz", 376, "malformed_record")]
    assert rejected[0]["file"] == str(data / "a.tsv")  # absolute: it names the file wherever it is read
    assert direct["records_read"] == 1503 and direct["rejected_total"] == 3
    # The launcher only builds and submits the job: TensorFlow loads in the worker alone.
    assert _launcher_imports(stderr) == set()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_worker_read_error_fails_the_portable_job_naming_the_file(tmp_path, portable_cluster):
    beam_args, logs = portable_cluster
    good = "\n".join(synthetic_pairs(50)).encode() + b"\n"
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cut.tsv.gz").write_bytes(gzip.compress(good)[:-30])  # truncated in the copy
    with pytest.raises(InputError, match=r"cut\.tsv\.gz: the gzip data ends early"):
        run(tmp_path / "data", tmp_path / "out", config(), beam_args=beam_args)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("out.tmp-*"))


def test_local_paths_are_made_absolute_for_the_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fs.absolute("data/raw") == str(tmp_path / "data" / "raw")
    assert fs.absolute("corpus/*.tsv") == str(tmp_path / "corpus" / "*.tsv")
    for remote in ("gs://bucket/corpus/*.tsv", "file:///srv/corpus"):
        assert fs.absolute(remote) == remote


def test_a_file_a_worker_cannot_see_is_named_as_missing_not_as_a_broken_symlink(tmp_path):
    (tmp_path / "dangling.tsv").symlink_to(tmp_path / "nowhere.tsv")
    with pytest.raises(InputError, match="no such file on this worker; --data must be a path every worker reaches"):
        list(inputs.read_whole_lines(str(tmp_path / "gone.tsv")))
    with pytest.raises(InputError, match="a broken symlink"):
        list(inputs.read_whole_lines(str(tmp_path / "dangling.tsv")))


def test_the_cluster_stops_its_processes_when_the_body_raises(tmp_path):
    groups: set[int] = set()
    with pytest.raises(KeyboardInterrupt):
        with local_portable_cluster(log_dir=str(tmp_path)) as beam_args:
            groups = _service_groups(beam_args)
            assert len(groups) == 2
            raise KeyboardInterrupt  # what Ctrl-C in a test or a bench looks like
    assert not _alive_in(groups)
    assert (tmp_path / "job_service.log").exists() and (tmp_path / "worker_pool.log").exists()
