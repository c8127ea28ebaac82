"""`seq2seq translate --model SAVED_MODEL_DIR [TEXT ...]`: arguments, or stdin streamed in batches."""
from __future__ import annotations

import argparse
import logging
import os
import select
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, TextIO, Union

from components.core.errors import InputError, UserError
from components.core.io import json_line, without_non_finite

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BadLine:
    """An input line that is not UTF-8: reported on stderr, answered with an empty output line."""

    number: int
    reason: str

    def __str__(self) -> str:
        return f"stdin line {self.number}: not valid UTF-8 ({self.reason})"


Line = Union[str, BadLine]


def _lines_from_fd(fd: int) -> Iterator[tuple[list[Line], bool]]:
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
            lines.append(_decode(raw, number))
        yield lines, _ready(fd)
    if pending:
        yield [_decode(pending, number + 1)], False


def _decode(raw: bytes, number: int) -> Line:
    try:
        return raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as e:
        return BadLine(number, f"{e.reason} at byte {e.start}")


def _ready(fd: int) -> bool:
    ready, _, _ = select.select([fd], [], [], 0)
    return bool(ready)


def stream_batches(stream: TextIO, batch_size: int) -> Iterator[list[Line]]:
    """Lines of `stream` (newline stripped) in batches of at most `batch_size`; a line that is not
    UTF-8 comes as a `BadLine` in its place, so the stream goes on.

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
            lines: Iterable[list[Line]] = ([_decode(raw.rstrip(b"\n"), number)] for number, raw
                                           in enumerate(iter(binary.readline, b""), start=1))
        else:
            lines = ([line.rstrip("\r\n")] for line in iter(stream.readline, ""))
        chunks: Iterable[tuple[list[Line], bool]] = ((chunk, True) for chunk in lines)
    else:
        chunks = _lines_from_fd(fd)
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


def beam_options(args: argparse.Namespace):
    """BeamOptions when any of --beam-width, --n-best, --length-penalty is given (else None: greedy)."""
    from components.serving.client import BeamOptions

    values = {name: getattr(args, name, None) for name in ("beam_width", "n_best", "length_penalty")}
    if all(value is None for value in values.values()):
        return None
    return BeamOptions(**values).check()


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
    """Translate args.text, or stdin lines when there are none; one line (or JSON object) per input
    (with beam search and an n-best list of more than one, a block of lines per input).

    A stdin line that is not UTF-8 is reported on stderr with its number and answered with an empty
    line; the rest of the stream is translated, and the exit code is then 1 (InputError's)."""
    from components.serving.client import check_max_length, load_translator

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_length is not None:
        check_max_length(args.max_length)
    beam = beam_options(args)
    translator = load_translator(args.model)
    batches = _chunks(list(args.text), args.batch_size) if args.text else stream_batches(stdin, args.batch_size)
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
        logger.error("%d stdin line(s) were not valid UTF-8 (line %s); the other %d were translated",
                     len(bad), numbers, count)
        return InputError.exit_code
    return 0
