"""`seq2seq translate`: arguments, stdin streamed in batches, --input/--output files, --json,
--max-length, --attention-plot, beam search's --n-best and --no-repeat-ngram-size."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from export_fixtures import seed_pairs, seed_run  # noqa: F401  (fixture)

from pipeline.cli import main

SEED = seed_pairs()


def run_cli(argv: list[str], capsys, monkeypatch, stdin: str | None = None) -> tuple[int, list[str]]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(argv)
    return code, capsys.readouterr().out.splitlines()


@pytest.mark.slow
def test_translates_arguments(seed_run, capsys, monkeypatch):
    code, lines = run_cli(["translate", "--model", seed_run["export"], *[s for s, _ in SEED]], capsys, monkeypatch)
    assert code == 0
    assert lines == [t for _, t in SEED]


@pytest.mark.slow
def test_reads_stdin_in_batches_and_writes_json(seed_run, capsys, monkeypatch):
    stdin = "".join(f"{s}\n" for s, _ in SEED) + "\n   \n" + "I feel hungry"  # last line has no newline
    code, lines = run_cli(["translate", "--model", seed_run["export"], "--json", "--batch-size", "3"],
                          capsys, monkeypatch, stdin=stdin)
    assert code == 0
    records = [json.loads(line) for line in lines]
    assert [r["translation"] for r in records] == [t for _, t in SEED] + ["", "", "나는 배가 고프다"]
    assert records[0]["tokens"] == "나는 배가 고프다".split() + ["<eos>"]
    assert records[0]["score"] < 0 and records[4]["score"] == 0.0 and records[4]["tokens"] == []
    assert records[2]["source"] == SEED[2][0]


@pytest.mark.slow
def test_max_length_cuts_the_greedy_output(seed_run, capsys, monkeypatch):
    code, lines = run_cli(["translate", "--model", seed_run["export"], "--json", "--max-length", "2",
                           "tensorflow is a framework for deep learning"], capsys, monkeypatch)
    assert code == 0
    record = json.loads(lines[0])
    assert record["tokens"] == ["텐서플로우는", "딥러닝을"] and record["translation"] == "텐서플로우는 딥러닝을"


@pytest.mark.slow
def test_attention_plot_is_a_png_heatmap(seed_run, capsys, monkeypatch, tmp_path):
    import matplotlib.image

    png = tmp_path / "attention.png"
    code, lines = run_cli(["translate", "--model", seed_run["export"], "--attention-plot", str(png),
                           "tensorflow is very difficult", "I feel hungry"], capsys, monkeypatch)
    assert code == 0 and lines == ["텐서플로우는 매우 어렵다", "나는 배가 고프다"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(str(png))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10  # a picture, not a blank


@pytest.mark.slow
def test_bad_inputs_are_one_line_errors(seed_run, caplog, capsys, tmp_path):
    assert main(["translate", "--model", str(tmp_path / "missing"), "x"]) == 1
    with pytest.raises(SystemExit) as usage:  # a --max-length outside [1, 1024] is a usage error
        main(["translate", "--model", seed_run["export"], "--max-length", "0", "x"])
    assert usage.value.code == 2
    assert main(["translate", "--model", seed_run["export"], "--attention-plot", str(tmp_path / "a.png"), ""]) == 1
    err = caplog.text
    assert "does not exist" in err and "empty" in err
    assert "Traceback" not in err
    assert "argument --max-length: must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_real_cli_streams_a_pipe(seed_run):
    """The installed console script, fed through a pipe; the first batch is answered before EOF."""
    script = os.path.join(os.path.dirname(sys.executable), "seq2seq")
    proc = subprocess.Popen([script, "translate", "--model", seed_run["export"]], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        proc.stdin.write("I feel hungry\n")
        proc.stdin.flush()
        first = proc.stdout.readline()  # would block forever if translate waited for a full batch or EOF
        proc.stdin.write("tensorflow is very fast changing\n")
        proc.stdin.close()
        rest = proc.stdout.read()
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert first == "나는 배가 고프다\n"
    assert rest == "텐서플로우는 매우 빠르게 변화한다\n"


@pytest.mark.slow
def test_input_and_output_files_the_output_written_atomically(seed_run, tmp_path, capsys, caplog):
    model = seed_run["export"]
    source, out = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("".join(s + "\n" for s, _ in SEED), encoding="utf-8")
    assert main(["translate", "--model", model, "--input", str(source), "--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8").splitlines() == [t for _, t in SEED]
    assert capsys.readouterr().out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt"]  # no temporary file left

    # A translation that fails leaves the file it would have replaced as it was.
    out.write_text("old\n")
    source.write_text("\nI feel hungry\n")  # an empty first sentence: no attention to draw
    assert main(["translate", "--model", model, "--input", str(source), "--output", str(out),
                 "--attention-plot", str(tmp_path / "a.png")]) == 1
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.txt"]

    # Usage errors (exit 2), one line each: no such input; sentences and --input at once; no such folder.
    assert main(["translate", "--model", model, "--input", str(tmp_path / "missing.txt")]) == 2
    assert main(["translate", "--model", model, "--input", str(source), "I feel hungry"]) == 2
    assert main(["translate", "--model", model, "--output", str(tmp_path / "no" / "out.txt"), "x"]) == 2
    assert "--input" in caplog.text and "not both" in caplog.text and "no such folder" in caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.slow
def test_no_repeat_ngram_size_and_the_default_width_line(seed_run, capsys, monkeypatch, caplog):
    import logging

    caplog.set_level(logging.INFO)
    model = seed_run["export"]
    width = json.load(open(os.path.join(model, "assets", "model_card.json")))["decoding"]["beam"]["beam_width"]
    # Inputs that repeat a word, which the seed model's beams then repeat without blocking.
    code, lines = run_cli(["translate", "--model", model, "--n-best", str(width), "--no-repeat-ngram-size", "1",
                           "--max-length", "8", "--json", "I I I I I I", "very very very very",
                           "hungry hungry hungry"], capsys, monkeypatch)
    assert code == 0 and len(lines) == 3
    for line in lines:
        hypotheses = [h["translation"].split() for h in json.loads(line)["n_best"]]
        assert len(hypotheses) == width
        assert all(len(set(words)) == len(words) for words in hypotheses), hypotheses  # no word twice
    assert f"--n-best {width} without --beam-width: beam search with the model's default width {width}" in caplog.text
    # More than the model's width without --beam-width: a usage error before anything is decoded.
    assert main(["translate", "--model", model, "--n-best", str(width + 1), "x"]) == 2
    assert f"give --beam-width {width + 1} or more" in caplog.text
    with pytest.raises(SystemExit) as usage:
        main(["translate", "--model", model, "--no-repeat-ngram-size", "x", "y"])
    assert usage.value.code == 2


def test_stream_batches_by_size_and_by_what_is_waiting():
    from components.serving.translate import stream_batches

    assert list(stream_batches(io.StringIO("a\nb\n\nc\r\nd"), 2)) == [["a", "b"], ["", "c"], ["d"]]
    read, write = os.pipe()
    with os.fdopen(read, "r") as reader:
        batches = stream_batches(reader, 4)
        os.write(write, b"a\nb\nc\n")
        assert next(batches) == ["a", "b", "c"]  # a partial batch: nothing more was waiting
        os.write(write, "한\nx".encode())
        os.close(write)
        assert list(batches) == [["한", "x"]]


def test_stream_batches_names_the_line_with_bad_utf8_and_goes_on():
    from components.serving.translate import BadLine, stream_batches

    read, write = os.pipe()
    os.write(write, b"ok\nbad \xff\nafter\n")
    os.close(write)
    with os.fdopen(read, "r") as reader:
        [batch] = list(stream_batches(reader, 8))
    assert batch == ["ok", BadLine(2, "invalid start byte at byte 4"), "after"]
    assert str(batch[1]) == "stdin line 2: not valid UTF-8 (invalid start byte at byte 4)"


def test_plot_attention_writes_a_png_and_checks_shapes(tmp_path):
    from components.serving.plotting import plot_attention

    path = plot_attention(["I", "feel", "hungry"], ["나는", "배가", "고프다", "<eos>"],
                          np.eye(4, 20, dtype=np.float32), str(tmp_path / "a.png"), title="I feel hungry")
    assert open(path, "rb").read(4) == b"\x89PNG"
    with pytest.raises(ValueError, match="2-D"):
        plot_attention(["a"], ["b"], np.zeros((1, 1, 1)), str(tmp_path / "b.png"))
