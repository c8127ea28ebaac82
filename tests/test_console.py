"""What `seq2seq run` shows on a terminal and on a pipe, and the numbers of the trainer's progress line.

The terminal tests run the real logging setup (pipeline/cli.py) and the real live display
(pipeline.console.Progress) in a pseudo-terminal and render its byte stream with a terminal
emulator (pyte): the screen left at the end must still hold every log line.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPINNER = set("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏")
STEPS = 12
# A run's shape in miniature: a preprocess stage line, then training progress records as the
# trainer logs them (with the `progress` the live display draws its bar from), slower than the
# display's refresh so that it redraws between them.
SNIPPET = f"""
import logging, time
from pipeline.cli import _configure_logging
from pipeline.console import Progress

_configure_logging(False)
with Progress(["preprocess", "train", "export"]) as progress:
    progress.start("preprocess")
    logging.getLogger("components.preprocess.job").info("running the Beam job on DirectRunner")
    time.sleep(1.0)  # several refreshes of the display (10 a second), even on a busy machine
    progress.done("preprocess", "succeeded")
    progress.start("train")
    for i in range(1, {STEPS + 1}):
        logging.getLogger("components.trainer.training").info(
            "epoch 1/3 step %d (%d/~{STEPS}) loss 1.2345", i, i,
            extra={{"progress": {{"fraction": i / {3 * STEPS}, "text": f"epoch 1/3 step {{i}} budget left 1m00s"}}}})
        time.sleep(0.12)
    progress.done("train", "succeeded")
    progress.done("export", "skipped", "already served")
"""


def _run_in_pty(columns: int = 120, rows: int = 60) -> tuple[list[str], list[list[str]]]:
    """SNIPPET's final screen, and every screen seen on the way (as lists of lines)."""
    import pyte

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns), "LINES": str(rows)}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-c", SNIPPET], cwd=REPO, env=env, stdin=slave, stdout=slave,
                            stderr=slave, close_fds=True)
    os.close(slave)
    screen = pyte.Screen(columns, rows)
    stream = pyte.ByteStream(screen)
    seen = []
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            stream.feed(chunk)
            seen.append(list(screen.display))
    finally:
        os.close(master)
        assert proc.wait(timeout=60) == 0
    return [line.rstrip() for line in screen.display], seen


def test_on_a_terminal_log_lines_stay_above_the_live_display():
    """Before: every progress line was printed, then erased by the live display's redraw."""
    final, seen = _run_in_pty()
    text = "\n".join(final)
    epoch_lines = [line for line in final if "epoch 1/3 step" in line]
    assert [int(re.search(r"step (\d+) \(", line)[1]) for line in epoch_lines] == list(range(1, STEPS + 1)), text
    assert all("components.trainer.training: epoch 1/3 step" in line for line in epoch_lines), text
    assert any("components.preprocess.job: running the Beam job" in line for line in final), text
    assert any(re.search(r"train: succeeded in \d+\.\ds", line) for line in final), text
    assert any("export: skipped (already served)" in line for line in final), text
    assert not SPINNER & set(text), text  # the live area is gone at the end, no fragments of it left
    # While it ran: preprocessing showed its stage, training its bar with the step and budget.
    rows = [line for screen in seen for line in screen]
    assert any(line.lstrip(" " + "".join(SPINNER)).startswith("preprocess") and "running the Beam job" in line
               for line in rows)
    assert any(line.lstrip(" " + "".join(SPINNER)).startswith("train") and "━" in line
               and re.search(r"epoch 1/3 step \d+ budget left 1m00s", line) for line in rows)


def test_on_a_pipe_the_output_is_plain_log_lines():
    run = subprocess.run([sys.executable, "-c", SNIPPET], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d INFO [\w.]+: .+", line) for line in lines), run.stderr
    assert [line.split(": ", 1)[1] for line in lines if "epoch 1/3" in line] == \
        [f"epoch 1/3 step {i} ({i}/~{STEPS}) loss 1.2345" for i in range(1, STEPS + 1)]
    assert not SPINNER & set(run.stderr) and "\x1b" not in run.stderr
    assert any(re.search(r"INFO pipeline.runner: train: succeeded in \d+\.\ds$", line) for line in lines)


# ---------------------------------------------------------------- the trainer's progress line

PROGRESS_LINE = re.compile(r"epoch (\d+)/(\d+) step (\d+) \((\d+)/(~?)(\d+)\) loss (\S+) tok/s (\S+) lr \S+ ETA (\S+)")


def test_the_progress_line_loss_is_the_mean_since_the_previous_line():
    """Before: the line showed the last batch's loss alone."""
    from components.trainer.training import EpochTotals

    totals = EpochTotals()
    for loss, tokens in ((5.0, 10.0), (7.0, 30.0)):
        totals.add({"loss": loss, "tokens": tokens, "correct": 0.0})
    assert totals.loss_since_last_line() == pytest.approx((5.0 * 10 + 7.0 * 30) / 40)
    totals.add({"loss": 2.0, "tokens": 20.0, "correct": 0.0})
    assert totals.loss_since_last_line() == pytest.approx(2.0)  # only the steps since
    assert totals.loss == pytest.approx((50 + 210 + 40) / 60.0)  # the epoch's mean is unchanged


def _progress_lines(caplog) -> list[re.Match]:
    return [m for r in caplog.records if (m := PROGRESS_LINE.fullmatch(r.getMessage().split(" budget left")[0]))]


@pytest.mark.slow
def test_the_progress_line_counts_the_epoch_honestly_across_a_resume_and_a_budget_stop(tmp_path, caplog):
    """Before: `(n/258)` was an estimate the epoch overran (267), counted from the resume (`step 150
    (13/258)`), the first line said `tok/s nan`, and a budget stop mid-epoch was checkpointed as
    `(end of epoch 2)`."""
    from components.trainer import run_training
    from tests.trainer_helpers import config, preprocess, synthetic_corpus

    toy = ("preprocess.eval_fraction=0.2", "preprocess.max_source_length=8", "preprocess.max_target_length=10")
    examples = preprocess(synthetic_corpus(tmp_path / "toy.tsv", 60), tmp_path / "prep", config(*toy))
    small = (*toy, "trainer.batch_size=8", "model.units=8", "model.embedding_dim=4", "trainer.log_every_steps=1",
             "trainer.bucket_by_length=true", "trainer.checkpoint_every_steps=2")
    train = int(json.loads((examples / "stats.json").read_text())["records_written"]["train"])
    estimate = -(-train // 8)
    caplog.set_level(logging.INFO, logger="components.trainer.training")

    # 1. Two epochs: the first against the estimate (bucketing makes more batches), the second
    # against the first's count.
    out = tmp_path / "train"
    metrics = run_training(str(examples), str(out), config(*small, "trainer.epochs=2"))
    length = metrics["history"][0]["epoch_steps"]
    assert length == metrics["history"][0]["step"] >= estimate and metrics["steps"] == 2 * length
    lines = _progress_lines(caplog)
    first, second = [m for m in lines if m[1] == "1"], [m for m in lines if m[1] == "2"]
    assert [(int(m[4]), m[5], int(m[6])) for m in first] == [(p, "~", max(estimate, p)) for p in range(1, length + 1)]
    assert [(int(m[3]), int(m[4]), m[5], int(m[6])) for m in second] == \
        [(length + p, p, "", length) for p in range(1, length + 1)]
    assert (first[0][8], first[0][9]) == ("-", "-")  # not measured yet: the first step traces
    assert all(float(m[8]) > 0 and m[9] != "-" for m in first[1:] + second)
    assert "nan" not in caplog.text.lower()

    # 2. Back to the oldest checkpoint, mid-epoch 2, with a budget that the resumed run's first
    # step (it traces the step function) spends: the position goes on from the checkpoint's, and
    # the stop says it was the budget, mid-epoch.
    start = min(int(p.stem.split("-")[1]) for p in (out / "checkpoints").glob("ckpt-*.index"))
    assert length < start < 2 * length
    for path in [*(out / "checkpoints").glob("ckpt-*"), *(out / "best").glob("ckpt-*")]:
        if not path.name.startswith(f"ckpt-{start}."):
            path.unlink()
    minutes = (metrics["wall_time_s"] + 0.5) / 60
    caplog.clear()
    resumed = run_training(str(examples), str(out), config(*small, "trainer.epochs=3",
                                                           f"trainer.max_minutes={minutes:.6f}"))
    budget = config(f"trainer.max_minutes={minutes:.6f}").trainer.max_minutes
    assert f"resuming from {out}/checkpoints/ckpt-{start}: step {start}, epoch 1 (+{start - length} steps)" \
        in caplog.text
    [line] = _progress_lines(caplog)
    assert line[0].startswith(f"epoch 2/3 step {start + 1} ({start + 1 - length}/{length}) loss ")
    assert resumed["steps"] == start + 1 and resumed["time_budget_spent"] is True
    assert "epoch_steps" not in resumed["history"][-1]  # a part of an epoch is no count of its steps
    where = f"step {start + 1}, step {start + 1 - length}/{length} of epoch 2"
    assert f"time budget of {budget:g} minutes spent at {where}: evaluating, checkpointing and stopping" \
        in caplog.text
    assert f"checkpoints/ckpt-{start + 1} (time budget spent at {where})" in caplog.text
    assert "end of epoch" not in caplog.text


# ---------------------------------------------------------------- the run's log file


def test_every_run_writes_its_log_lines_to_run_log_and_names_it(capsys, caplog, tmp_path):
    """A run whose preprocessing refuses the corpus: its lines, the error included, are in
    RUN_DIR/run.log, which run.json, the --json line and the summary name."""
    from pipeline.cli import main

    caplog.set_level(logging.INFO)  # the CLI's level (under pytest its logging setup stands aside)

    corpus = tmp_path / "corpus.xyz"  # found, so the run starts; then refused by preprocess
    corpus.write_text("hello\tworld\n")
    code = main(["run", "--data", str(corpus), "--artifacts", str(tmp_path / "a"), "--json"])
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    run_dir = tmp_path / "a" / "runs" / result["run_id"]
    assert code == 1 and result["log"] == f"{run_dir}/run.log"
    assert json.loads((run_dir / "run.json").read_text())["log"] == result["log"]
    assert f"log: {run_dir}/run.log" in out
    lines = (run_dir / "run.log").read_text(encoding="utf-8").splitlines()
    assert any(re.search(rf"INFO pipeline\.runner: run {result['run_id']}: 1 corpus file\(s\)", line) for line in lines)
    assert any(re.search(r"INFO pipeline\.runner: preprocess: failed after \d+\.\ds$", line) for line in lines)
    errors = [line for line in lines if " ERROR " in line]
    assert len(errors) == 1 and "cannot tell the format" in errors[0] and result["reason"] in errors[0]
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ", line) for line in lines)
