"""CLI conventions: --version, examples in every --help, --print-config, and TensorFlow's and
SentencePiece's start-up lines kept off stderr (Beam's worker processes included) unless --verbose."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from pipeline.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent
SEQ2SEQ = str(Path(sys.executable).parent / "seq2seq")
SUBCOMMANDS = ("run", "preprocess", "train", "export", "evaluate", "push", "translate")
# What TensorFlow and SentencePiece print on their own at start-up (the list).
NOISE = ("InitializeLog", "cudart_stub", "cuInit", "E0000", "I0000", "W0000", "precompiled_charsmap")


def test_version_is_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"seq2seq {metadata.version('seq2seq-pipeline')}\n"


def _examples(help_text: str) -> list[list[str]]:
    """The example command lines of a --help epilog, continuation lines joined, as argv lists
    (what follows `seq2seq` in each; an `echo ... |` in front dropped)."""
    block = help_text.split("\nexamples:\n", 1)[1]
    commands = [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    argvs = []
    for command in commands:
        words = shlex.split(command.split("|", 1)[-1])
        assert words[0] == "seq2seq", command
        argvs.append(words[1:])
    return argvs


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_help_ends_with_examples_that_parse(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    argvs = _examples(capsys.readouterr().out)
    assert argvs and all(argv[0] == command for argv in argvs)
    for argv in argvs:  # real command lines: the parser takes each one as written
        own = argv[: argv.index("--")] if "--" in argv else argv
        args = build_parser().parse_args(own)
        assert args.command == command


def test_print_config_prints_the_merged_yaml_and_runs_nothing(tmp_path, capsys):
    artifacts = tmp_path / "artifacts"
    code = main(["run", "--artifacts", str(artifacts), "--data", str(tmp_path / "no-such-corpus"),
                 "--config", str(REPO / "pipeline" / "embedded.yaml"), "--set", "trainer.epochs=5",
                 "--print-config"])
    assert code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["epochs"] == 5                  # --set
    assert printed["model"]["units"] == 32                    # --config (pipeline/embedded.yaml)
    assert printed["preprocess"]["vocab_pieces"] == 4000      # the packaged default.yaml
    assert printed["trainer"]["select_by"] == "loss"          # embedded.yaml over default.yaml's chrf
    assert not artifacts.exists()  # nothing ran, and the missing corpus was not even looked at


def test_print_config_with_a_bad_key_is_a_config_error(tmp_path, capsys, caplog):
    code = main(["train", "--examples", "x", "--out", str(tmp_path / "t"), "--print-config",
                 "--set", "preprocess.vocab_pieces=10", "--set", "preprocess.wordpiece_vocab_size=20"])
    assert code == 2 and capsys.readouterr().out == ""
    assert "are the same key" in caplog.text and "Traceback" not in caplog.text


def _seq2seq(*args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("TF_CPP_MIN_LOG_LEVEL", "SEQ2SEQ_VERBOSE")}
    return subprocess.run([SEQ2SEQ, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_start_up_lines_are_hidden_in_beam_workers_and_shown_with_verbose(tmp_path):
    """The DirectRunner's multi_processing workers are other processes: they import TensorFlow
    (and build SentencePiece tokenizers) themselves, and print cuInit's failure when ops run."""
    quiet = _seq2seq("preprocess", "--data", "data/raw", "--out", str(tmp_path / "prep"),
                     "--set", "preprocess.tokenizer=sentencepiece", "--set", "preprocess.vocab_pieces=60",
                     "--", "--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "2 workers, multi_processing" in quiet.stderr  # the workers really were other processes
    assert (tmp_path / "prep" / "source.sentencepiece.model").exists()
    noise = [line for line in quiet.stderr.splitlines() if any(mark in line for mark in NOISE)]
    assert noise == []

    # The same command with --verbose would take as long again: a short one that loads TensorFlow.
    verbose = _seq2seq("--verbose", "translate", "--model", str(tmp_path / "no-model"), "x")
    assert verbose.returncode == 1 and "does not exist" in verbose.stderr, verbose.stderr[-3000:]
    assert "InitializeLog" in verbose.stderr or "cudart_stub" in verbose.stderr, verbose.stderr[-3000:]
