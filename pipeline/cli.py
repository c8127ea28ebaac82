"""`seq2seq`: one console script, one subcommand per component, plus `run` for the whole pipeline.

Components are imported lazily so that `seq2seq --help` answers without loading TensorFlow.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

logger = logging.getLogger("seq2seq")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_BLESSED = 3  # as `seq2seq run`: evaluated (or asked to push) but not blessed
DISTRIBUTION = "seq2seq-pipeline"  # pyproject.toml's [project] name, for --version


def _split_beam_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Everything after a bare `--` belongs to Beam's PipelineOptions."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config merged over the packaged defaults")
    p.add_argument("--set", dest="overrides", metavar="SECTION.KEY=VALUE", action="append", default=[],
                   help="override one config key (repeatable), e.g. --set trainer.epochs=5")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config (defaults <- --config <- --set) as YAML and exit")


def package_version() -> str:
    """The installed distribution's version; from a source checkout that is not installed, the
    version in its pyproject.toml; else "unknown"."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        pass
    import tomllib

    pyproject = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml")
    try:
        with open(pyproject, "rb") as f:
            return str(tomllib.load(f)["project"]["version"]) + " (not installed)"
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def cmd_print_config(args: argparse.Namespace) -> int:
    """--print-config: the config the command would run with, as YAML on stdout (what it writes
    into its output folder as config.yaml), and nothing run."""
    sys.stdout.write(_load_config(args).to_yaml())
    sys.stdout.flush()
    return EXIT_OK


def _examples(*lines: str) -> str:
    """An argparse epilog: real command lines, shown as written (RawDescriptionHelpFormatter)."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _load_config(args: argparse.Namespace):
    from pipeline.config import load_config

    return load_config(args.config, args.overrides)


def _require_corpus(data: str, flag: str = "--data") -> None:
    """--data (and --test) must name at least one file before anything starts: a usage error (exit
    2), and `seq2seq run` leaves no run folder behind."""
    from components.core.errors import InputError
    from pipeline.fingerprint import resolve_corpus

    if not resolve_corpus(data):
        error = InputError(f"{flag} {data}: no such file, or the glob matches nothing")
        error.exit_code = EXIT_USAGE
        raise error


def cmd_preprocess(args: argparse.Namespace) -> int:
    from components.preprocess import run_preprocess

    _require_corpus(args.data)
    if args.test:
        _require_corpus(args.test, "--test")
    run_preprocess(args.data, args.out, _load_config(args), beam_args=args.beam_args,
                   overwrite=args.overwrite, test_data=args.test)
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from components.trainer import run_training

    run_training(args.examples, args.out, _load_config(args))
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    """The evaluator on its own, for a model trained outside `seq2seq run` (e.g. by a multi-worker
    cluster): the baseline is the newest model in --serving, as `seq2seq run`'s resolver finds it."""
    from components.core import io
    from components.core.artifacts import Evaluation
    from components.evaluator import run_evaluation
    from pipeline.runner import resolve_latest_served

    config = _load_config(args)
    # A file named as --serving is exit 2; junk in the folder is warned about and skipped.
    baseline = resolve_latest_served(_one_models_folder(args.serving)) if args.serving else None
    with io.atomic_dir(args.out, overwrite=args.overwrite) as tmp:
        run_evaluation(args.model, args.examples, tmp, config.evaluator, train_dir=args.training,
                       baseline_model=baseline.uri if baseline else None)
    return EXIT_OK if Evaluation(args.out).blessing()["blessed"] else EXIT_NOT_BLESSED


def _same_path(a: str, b: str) -> bool:
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def _one_models_folder(path: str):
    """--serving of `evaluate` and `push`: one model's folder (a ServingRoot). The multi-model root
    above it (`ARTIFACTS/serving`) is exit 2: its names are no versions, so it would have no baseline."""
    from components.core import io
    from components.core.artifacts import ServingModels, ServingRoot, ServingRootError

    models = ServingModels(path.rstrip("/") or "/")
    models.check()
    names = models.names()
    if names or io.exists(models.models_config_path):
        example = f"{models.uri}/{names[0] if names else 'NAME'}"
        raise ServingRootError(f"--serving {path} holds the folders of served models ({', '.join(names) or 'none yet'}), "
                               f"not one model's versions: name one model's folder, e.g. --serving {example}")
    return ServingRoot(path)


def cmd_push(args: argparse.Namespace) -> int:
    """The pusher on its own: the model goes to --serving as the next version if --evaluation
    blessed it and it is still the model evaluated (content fingerprint), under the serving
    folder's push lock (the same checks, copy, smoke test and atomic rename as in `seq2seq run`)."""
    from components.core import io
    from components.core.artifacts import Evaluation, ServingModels
    from components.core.errors import UserError
    from components.pusher import run_push
    from components.pusher.executor import RECORDED_METRICS

    config = _load_config(args)
    _one_models_folder(args.serving)  # a file, or the multi-model root, as --serving: exit 2 before anything is read
    evaluation = Evaluation(args.evaluation)
    blessing = evaluation.blessing()
    evaluated = blessing.get("candidate_model")
    if evaluated and not _same_path(evaluated, args.model):
        raise UserError(f"{args.evaluation} evaluated {evaluated}, not {args.model}: evaluate this model "
                        f"first (`seq2seq evaluate --model {args.model} ...`)")
    summary = evaluation.summary()
    # run_push adds the content fingerprint it checked; outside a run there is no export cache key.
    record = {"evaluation": args.evaluation, "metrics": {key: summary.get(key) for key in RECORDED_METRICS}}
    # A model folder of a multi-model serving root (ARTIFACTS/serving/<name>): its models.config is kept current.
    parent = ServingModels(os.path.dirname(args.serving.rstrip("/")) or ".")
    models = parent if io.exists(parent.models_config_path) else None
    pushed = run_push(args.model, args.serving, blessing, config.pusher.keep, record=record, models=models)
    return EXIT_OK if pushed else EXIT_NOT_BLESSED


def cmd_export(args: argparse.Namespace) -> int:
    from components.exporter import run_export

    run_export(args.model, args.out, overrides=args.overrides)
    return EXIT_OK


def _decode_length(text: str) -> int:
    """--max-length: an integer in [1, MAX_DECODE_LENGTH_LIMIT]; argparse exits 2 otherwise."""
    from components.serving.client import DecodeLengthError, check_max_length

    try:
        return check_max_length(int(text), name="")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    except DecodeLengthError as e:
        raise argparse.ArgumentTypeError(str(e).strip()) from None


def cmd_translate(args: argparse.Namespace) -> int:
    from components.serving.translate import translate_main

    return translate_main(args)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.runner import run_pipeline

    config = _load_config(args)
    _require_corpus(args.data)
    if args.test:
        _require_corpus(args.test, "--test")
    if config.trainer.distribution == "multi_worker":
        from components.trainer.cluster import read_tf_config

        read_tf_config()  # a malformed TF_CONFIG is a usage error before preprocessing, not after it
    return run_pipeline(args, config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seq2seq",
        description="Parallel corpus -> Beam preprocessing -> attention seq2seq -> servable SavedModel.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and TensorFlow's and SentencePiece's own start-up lines")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("run", help="run the whole pipeline", formatter_class=raw,
                       description="Run every component in order. Arguments after `--` go to Beam.",
                       epilog=_examples(
                           "seq2seq run --data data/raw --artifacts /tmp/artifacts --config pipeline/embedded.yaml",
                           "seq2seq run --data 'corpus/*.tsv' --test held-out.tsv --set trainer.epochs=20 --json",
                           "seq2seq run --config pipeline/embedded.yaml --set trainer.epochs=5 --print-config"))
    p.add_argument("--data", default="data/raw", help="corpus path, directory or glob (default: data/raw)")
    p.add_argument("--artifacts", default="artifacts", help="artifacts root (default: artifacts)")
    p.add_argument("--json", action="store_true", help="print one JSON summary as the last stdout line")
    p.add_argument("--no-cache", action="store_true", help="re-run every component")
    p.add_argument("--test", help="a fixed test set (path, folder or glob, any input format): preprocessed as the corpus, "
                        "never trained on, scored by the evaluator; corpus pairs with a test source are kept out")
    _add_config_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("preprocess", help="Beam job: corpus -> vocabularies + padded TFRecords", formatter_class=raw,
                       description="Arguments after `--` are Beam pipeline options "
                                   "(--runner, --direct_num_workers, Dataflow/Flink/Spark options).",
                       epilog=_examples(
                           "seq2seq preprocess --data data/raw --out /tmp/prep",
                           "seq2seq preprocess --data 'corpus/*.tsv.gz' --out /tmp/prep --set preprocess.tokenizer=wordpiece \\",
                           "    -- --runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing"))
    p.add_argument("--data", required=True, help="corpus path, directory or glob (gs:// works)")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--test", help="a fixed test set (path, folder or glob, any input format): preprocessed as the corpus, "
                        "never trained on, scored by the evaluator; corpus pairs with a test source are kept out")
    _add_config_args(p)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("train", help="train the attention seq2seq on preprocessed TFRecords", formatter_class=raw,
                       epilog=_examples(
                           "seq2seq train --examples /tmp/prep --out /tmp/train --set trainer.epochs=20",
                           "seq2seq train --examples /tmp/prep --out /tmp/train --config pipeline/embedded.yaml"))
    p.add_argument("--examples", required=True, help="output folder of `seq2seq preprocess`")
    p.add_argument("--out", required=True, help="training folder (an existing one is resumed)")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="write a SavedModel with greedy and beam-search signatures", formatter_class=raw,
                       epilog=_examples(
                           "seq2seq export --model /tmp/train --out /tmp/model",
                           "seq2seq export --model /tmp/train --out /tmp/model --set export.beam_width=8"))
    p.add_argument("--model", required=True, help="output folder of `seq2seq train`")
    p.add_argument("--out", required=True, help="SavedModel folder to create")
    p.add_argument("--set", dest="overrides", metavar="SECTION.KEY=VALUE", action="append", default=[],
                   help="override an export key, e.g. --set export.max_decode_length=50")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="score an exported SavedModel against the model in service",
                       description="The evaluator of `seq2seq run`, on its own (exit code 3: not blessed).",
                       formatter_class=raw, epilog=_examples(
                           "seq2seq evaluate --model /tmp/model --examples /tmp/prep --out /tmp/evaluation \\",
                           "    --training /tmp/train --serving artifacts/serving/en-ko"))
    p.add_argument("--model", required=True, help="SavedModel folder (output of `seq2seq export`)")
    p.add_argument("--examples", required=True, help="output folder of `seq2seq preprocess` (references)")
    p.add_argument("--out", required=True, help="evaluation folder to create")
    p.add_argument("--training", help="training folder, for the eval loss and the loss curve")
    p.add_argument("--serving", help="one model's serving folder (e.g. artifacts/serving/en-ko): its newest "
                                      "version is the baseline to beat (one that cannot be loaded fails the "
                                      "evaluation: see evaluator.unloadable_baseline)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing evaluation folder")
    _add_config_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("push", help="publish a blessed SavedModel as the next serving version",
                       description="The pusher of `seq2seq run`, on its own (exit code 3: not blessed).",
                       formatter_class=raw, epilog=_examples(
                           "seq2seq push --model /tmp/model --evaluation /tmp/evaluation --serving artifacts/serving/en-ko"))
    p.add_argument("--model", required=True, help="SavedModel folder (output of `seq2seq export`)")
    p.add_argument("--evaluation", required=True, help="output folder of `seq2seq evaluate` for this model")
    p.add_argument("--serving", required=True, help="one model's serving folder (TF Serving's model_base_path, "
                                                    "e.g. artifacts/serving/en-ko); a push holds its .push.lock, so "
                                                    "a second push at once exits 4; a models.config in the folder "
                                                    "above it is rewritten")
    _add_config_args(p)
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("translate", help="translate with an exported SavedModel", formatter_class=raw,
                       epilog=_examples(
                           "seq2seq translate --model artifacts/serving/en-ko/1 \"I feel hungry\" \"tensorflow is very difficult\"",
                           "echo \"I feel hungry\" | seq2seq translate --model artifacts/serving/en-ko/1 --json",
                           "seq2seq translate --model artifacts/serving/en-ko/1 --input news.en --output news.ko --beam-width 4",
                           "seq2seq translate --model artifacts/serving/en-ko/1 --n-best 3 --no-repeat-ngram-size 2 \"I feel hungry\""))
    p.add_argument("--model", required=True, help="SavedModel folder")
    p.add_argument("text", nargs="*", help="sentences; with none, read lines from stdin (or --input)")
    p.add_argument("--input", metavar="FILE", help="read the sentences from FILE, one a line ('-': stdin)")
    p.add_argument("--output", metavar="FILE", help="write the translations to FILE ('-': stdout), "
                                                     "all at once when done (a temporary file, then a rename)")
    p.add_argument("--max-length", type=_decode_length, default=None, metavar="N",
                   help="maximum decoded tokens, 1 to 1024 (MAX_DECODE_LENGTH_LIMIT); default: the model's")
    p.add_argument("--beam-width", type=int, default=None, metavar="K",
                   help="decode with beam search (the model's beam_search_with_options signature), K "
                        "hypotheses per sentence; default: greedy (serving_default)")
    p.add_argument("--n-best", type=int, default=None, metavar="N",
                   help="with beam search: print the N best translations of each sentence (N <= K): "
                        "'RANK<TAB>SCORE<TAB>TRANSLATION' lines and an empty line after each sentence; "
                        "with --json, an n_best list. Default: the model's (export.n_best)")
    p.add_argument("--length-penalty", type=float, default=None, metavar="A",
                   help="with beam search: GNMT length penalty alpha >= 0 (0 ranks by log-probability); "
                        "default: the model's (export.length_penalty)")
    p.add_argument("--no-repeat-ngram-size", type=int, default=None, metavar="N",
                   help="with beam search: no hypothesis repeats an N-gram of its own tokens (0: no blocking); "
                        "default: the model's (export.no_repeat_ngram_size)")
    p.add_argument("--batch-size", type=int, default=64, help="lines per batch when reading stdin or --input")
    p.add_argument("--json", action="store_true", help="one JSON object per line: translation, tokens, score")
    p.add_argument("--attention-plot", metavar="FILE.png", help="draw the attention of the first sentence")
    p.set_defaults(func=cmd_translate)
    return parser


# Import-time notices about optional Google Cloud clients that a local run never uses.
_IGNORED_NOTICES = ("apitools not found", "No module named google.cloud")


def _not_a_cloud_notice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_IGNORED_NOTICES)


def _console_handler() -> logging.Handler:
    """Plain `HH:MM:SS LEVEL name: message` lines when stderr is a file or a pipe; on a terminal,
    Rich's handler, whose console `seq2seq run`'s live display shares (pipeline/console.py), so log
    lines stay above the live area instead of being erased by its redraw."""
    if not (sys.stderr.isatty() and os.environ.get("TERM") != "dumb"):
        handler: logging.Handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        return handler
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False, log_time_format="%H:%M:%S")
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    return handler


def _configure_logging(verbose: bool) -> None:
    # basicConfig leaves a logger that already has handlers alone (a second main() in one
    # process, pytest's capture).
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[_console_handler()])
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_a_cloud_notice)


def _beam_option(beam_args: Sequence[str], name: str, default: str) -> str:
    """The value of `--NAME=V` or `--NAME V` among the Beam args."""
    for i, arg in enumerate(beam_args):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(beam_args):
            return beam_args[i + 1]
    return default


def _runs_tensorflow_here(args: argparse.Namespace) -> bool:
    """Whether this process will import TensorFlow: every command but a `preprocess` whose workers
    are other processes (another runner: portable, Dataflow, Flink, Spark; or the DirectRunner's
    multi_processing mode), whose launcher leaves it to the workers and saves its seconds."""
    if args.command != "preprocess":
        return True
    beam_args = getattr(args, "beam_args", ())
    return (_beam_option(beam_args, "runner", "DirectRunner").endswith("DirectRunner")
            and _beam_option(beam_args, "direct_running_mode", "in_memory") != "multi_processing")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from components.core.quiet import quiet_environment

    own, beam_args = _split_beam_args(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(own)
    args.beam_args = beam_args
    quiet_environment(args.verbose)  # before TF is imported here or in a process this one starts
    if getattr(args, "print_config", False):
        args.func = cmd_print_config
    _configure_logging(args.verbose)
    if not args.verbose and _runs_tensorflow_here(args):
        from components.core.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()
    from components.core.errors import UserError

    try:
        return args.func(args)
    except UserError as e:
        logger.error("%s", e)
        return e.exit_code
    except KeyboardInterrupt as e:  # `seq2seq run` carries its signal: 130 for SIGINT, 143 for SIGTERM
        logger.error("interrupted")
        return getattr(e, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
