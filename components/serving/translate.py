"""`seq2seq translate --model SAVED_MODEL_DIR [TEXT ...]`: arguments, or stdin (or --input FILE)
streamed in batches, to stdout (or --output FILE, written atomically)."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import select
import sys
import uuid
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, TextIO, Union

from components.core.errors import InputError, UserError
from components.core.io import json_line, without_non_finite

logger = logging.getLogger(__name__)


class TranslateUsageError(UserError):
    """Arguments of `seq2seq translate` that cannot go together, or a path that cannot be used: exit 2."""

    exit_code = 2


@dataclass(frozen=True)
class BadLine:
    """An input line that is not UTF-8: reported on stderr, answered with an empty output line."""

    number: int
    reason: str
    where: str = "stdin"  # or the --input file's path

    def __str__(self) -> str:
        return f"{self.where} line {self.number}: not valid UTF-8 ({self.reason})"


Line = Union[str, BadLine]


def _lines_from_fd(fd: int, where: str = "stdin") -> Iterator[tuple[list[Line], bool]]:
    """(complete lines, whether more input is waiting right now) per read from a file descriptor."""
    pending = b""
    number = 0
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        *complete, pending = (pending + chunk).split(b"\n")
        lines = []
        for raw in complete:
            number += 1
            lines.append(_decode(raw, number, where))
        yield lines, _ready(fd)
    if pending:
        yield [_decode(pending, number + 1, where)], False


def _decode(raw: bytes, number: int, where: str = "stdin") -> Line:
    try:
        return raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as e:
        return BadLine(number, f"{e.reason} at byte {e.start}", where)


def _ready(fd: int) -> bool:
    ready, _, _ = select.select([fd], [], [], 0)
    return bool(ready)


def stream_batches(stream: TextIO, batch_size: int, where: str = "stdin") -> Iterator[list[Line]]:
    """Lines of `stream` (newline stripped) in batches of at most `batch_size`; a line that is not
    UTF-8 comes as a `BadLine` (naming WHERE and the line number) in its place, so the stream goes on.

    On a real file or pipe, a batch is also cut short when no further input is waiting, so a line
    typed into an interactive pipe is translated at once instead of after `batch_size` lines.
    """
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        fd = None  # an in-memory stream: nothing ever waits, batch by size alone
    if fd is None:
        binary = getattr(stream, "buffer", None)  # a text wrapper over bytes: decode line by line
        if binary is not None:
            lines: Iterable[list[Line]] = ([_decode(raw.rstrip(b"\n"), number, where)] for number, raw
                                           in enumerate(iter(binary.readline, b""), start=1))
        else:
            lines = ([line.rstrip("\r\n")] for line in iter(stream.readline, ""))
        chunks: Iterable[tuple[list[Line], bool]] = ((chunk, True) for chunk in lines)
    else:
        chunks = _lines_from_fd(fd, where)
    batch: list[Line] = []
    for lines, more_waiting in chunks:
        batch.extend(lines)
        while len(batch) >= batch_size:
            yield batch[:batch_size]
            batch = batch[batch_size:]
        if batch and not more_waiting:
            yield batch
            batch = []
    if batch:
        yield batch


def _chunks(texts: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(texts), size):
        yield texts[start: start + size]


def _write(results: Iterable, as_json: bool, out: TextIO) -> None:
    for result in results:
        if as_json:
            out.write(json_line(without_non_finite(result.to_json())))
        elif len(result.translations) > 1:  # beam search's n-best list, then an empty line
            out.write("".join(f"{rank}\t{score:.4f}\t{text}\n" for rank, (text, score)
                              in enumerate(zip(result.translations, result.scores), start=1)) + "\n")
        else:
            out.write(result.translation + "\n")
    out.flush()


BEAM_ARGS = ("beam_width", "n_best", "length_penalty", "no_repeat_ngram_size")


def beam_options(args: argparse.Namespace):
    """BeamOptions when any of --beam-width, --n-best, --length-penalty, --no-repeat-ngram-size is
    given (else None: greedy)."""
    from components.serving.client import BeamOptions

    values = {name: getattr(args, name, None) for name in BEAM_ARGS}
    if all(value is None for value in values.values()):
        return None
    return BeamOptions(**values).check()


def _say_default_width(beam, translator) -> None:
    """With beam options but no --beam-width, one line naming the width the model decodes with (its
    export.beam_width); an --n-best above it is a usage error now rather than a graph error later."""
    from components.serving.client import BeamOptionError

    if beam is None or beam.beam_width is not None:
        return
    width = translator.card.get("decoding", {}).get("beam", {}).get("beam_width")
    if width is None:
        return
    given = f"--n-best {beam.n_best}" if beam.n_best is not None else "beam options"
    if beam.n_best is not None and beam.n_best > int(width):
        raise BeamOptionError(f"--n-best {beam.n_best} is more than the model's default beam width {width}: "
                              f"give --beam-width {beam.n_best} or more")
    logger.info("%s without --beam-width: beam search with the model's default width %d", given, int(width))


@contextlib.contextmanager
def _output(path: Optional[str], default: TextIO) -> Iterator[TextIO]:
    """DEFAULT (stdout) for no path or "-"; else PATH.tmp-* in PATH's folder, renamed over PATH when
    the block ends without an exception, so PATH is never a partial translation; removed otherwise."""
    if path is None or path == "-":
        yield default
        return
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise TranslateUsageError(f"--output {path}: no such folder {folder}")
    if os.path.isdir(path):
        raise TranslateUsageError(f"--output {path} is a folder")
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as out:
            yield out
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def _input(path: Optional[str], default: TextIO) -> Iterator[tuple[TextIO, str]]:
    """(the stream, its name in messages): DEFAULT (stdin) for no path or "-", else the file."""
    if path is None or path == "-":
        yield default, "stdin"
        return
    if not os.path.isfile(path):
        raise TranslateUsageError(f"--input {path}: no such file")
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is named, not fatal
        yield f, path  # type: ignore[misc]


def _plot_first(result, path: str) -> None:
    from components.serving.plotting import plot_attention

    if not result.tokens or not result.source_tokens:
        raise UserError(f"--attention-plot: the first sentence {result.source!r} is empty; nothing to draw")
    plot_attention(result.source_tokens, result.tokens, result.attention, path,
                   title=f"{result.source} -> {result.translation}")
    logger.info("wrote the attention plot of %r to %s", result.source, path)


def _write_in_order(batch: list[Line], results: list, as_json: bool, out: TextIO) -> None:
    """RESULTS (for the good lines of BATCH) in input order, with an empty line (a JSON object with
    the error) for each bad line, so output line N still answers input line N."""
    answers = iter(results)
    for line in batch:
        if isinstance(line, BadLine):
            out.write(json_line({"source": None, "translation": None, "error": str(line)}) if as_json else "\n")
        else:
            _write([next(answers)], as_json, out)
    out.flush()


def _warn_unprotected(batch: list[Line], results: list, seen: int) -> None:
    """One warning per input whose protected spans the model cannot all protect (the SavedModel's
    unprotected_spans output): those spans are ordinary text to it, and may be lost."""
    answers = iter(results)
    for number, line in enumerate(batch, start=seen + 1):
        if isinstance(line, BadLine):
            continue
        result = next(answers)
        if result.unprotected_spans:
            logger.warning("input %d: %d protected span(s) get no sentinel (more spans than the model's sentinels, "
                           "or sentinels its vocabularies lack): they are ordinary text and may be lost",
                           number, result.unprotected_spans)


def translate_main(args: argparse.Namespace, stdin: Optional[TextIO] = None,
                   stdout: Optional[TextIO] = None) -> int:
    """Translate args.text, or the lines of stdin (or --input) when there are none; one line (or
    JSON object) per input (with beam search and an n-best list of more than one, a block of lines
    per input), on stdout or in --output.

    An input line that is not UTF-8 is reported on stderr with its number and answered with an empty
    line; the rest of the stream is translated, and the exit code is then 1 (InputError's)."""
    from components.serving.client import check_max_length, load_translator

    input_path, output_path = getattr(args, "input", None), getattr(args, "output", None)
    if args.text and input_path is not None:
        raise TranslateUsageError("give sentences as arguments or --input FILE, not both")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_length is not None:
        check_max_length(args.max_length)
    beam = beam_options(args)
    translator = load_translator(args.model)
    _say_default_width(beam, translator)
    with _input(input_path, stdin or sys.stdin) as (source, where), _output(output_path, stdout or sys.stdout) as out:
        batches = (_chunks(list(args.text), args.batch_size) if args.text
                   else stream_batches(source, args.batch_size, where))
        return _translate_batches(args, translator, batches, beam, out)


def _translate_batches(args: argparse.Namespace, translator, batches: Iterable[list[Line]], beam,
                       stdout: TextIO) -> int:
    """Translate BATCHES onto STDOUT in input order; 1 when some line was not UTF-8, else 0."""
    plot_path = getattr(args, "attention_plot", None)
    count = seen = 0
    bad: list[BadLine] = []
    for batch in batches:
        good = [line for line in batch if isinstance(line, str)]
        for line in batch:
            if isinstance(line, BadLine):
                logger.error("%s; its output line is empty", line)
                bad.append(line)
        want_plot = bool(plot_path) and count == 0 and bool(good)
        results = translator.translate(good, args.max_length, with_attention=want_plot, beam=beam)
        if want_plot:
            _plot_first(results[0], plot_path)
        _write_in_order(batch, results, args.json, stdout)
        _warn_unprotected(batch, results, seen)
        count += len(good)
        seen += len(batch)
    logger.debug("translated %d sentences", count)
    if bad:
        numbers = ", ".join(str(line.number) for line in bad[:20]) + (" ..." if len(bad) > 20 else "")
        logger.error("%d %s line(s) were not valid UTF-8 (line %s); the other %d were translated",
                     len(bad), bad[0].where, numbers, count)
        return InputError.exit_code
    return 0
