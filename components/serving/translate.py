"""`seq2seq translate --model SAVED_MODEL_DIR [TEXT ...]`: arguments, or stdin streamed in batches."""
from __future__ import annotations

import argparse
import logging
import os
import select
import sys
from typing import Iterable, Iterator, Optional, TextIO

from components.core.errors import InputError, UserError
from components.core.io import json_line, without_non_finite

logger = logging.getLogger(__name__)


def _lines_from_fd(fd: int) -> Iterator[tuple[list[str], bool]]:
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


def _decode(raw: bytes, number: int) -> str:
    try:
        return raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as e:
        raise InputError(f"stdin line {number}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def _ready(fd: int) -> bool:
    ready, _, _ = select.select([fd], [], [], 0)
    return bool(ready)


def stream_batches(stream: TextIO, batch_size: int) -> Iterator[list[str]]:
    """Lines of `stream` (newline stripped) in batches of at most `batch_size`.

    On a real file or pipe, a batch is also cut short when no further input is waiting, so a line
    typed into an interactive pipe is translated at once instead of after `batch_size` lines.
    """
    try:
        fd = stream.fileno()
    except (OSError, ValueError, AttributeError):
        fd = None  # an in-memory stream: nothing ever waits, batch by size alone
    if fd is None:
        lines = ([line.rstrip("\r\n")] for line in iter(stream.readline, ""))
        chunks: Iterable[tuple[list[str], bool]] = ((chunk, True) for chunk in lines)
    else:
        chunks = _lines_from_fd(fd)
    batch: list[str] = []
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
        else:
            out.write(result.translation + "\n")
    out.flush()


def _plot_first(result, path: str) -> None:
    from components.serving.plotting import plot_attention

    if not result.tokens or not result.source_tokens:
        raise UserError(f"--attention-plot: the first sentence {result.source!r} is empty; nothing to draw")
    plot_attention(result.source_tokens, result.tokens, result.attention, path,
                   title=f"{result.source} -> {result.translation}")
    logger.info("wrote the attention plot of %r to %s", result.source, path)


def translate_main(args: argparse.Namespace, stdin: Optional[TextIO] = None,
                   stdout: Optional[TextIO] = None) -> int:
    """Translate args.text, or stdin lines when there are none; one line (or JSON object) per input."""
    from components.serving.client import load_translator

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_length is not None and args.max_length < 1:
        raise UserError(f"--max-length must be at least 1, got {args.max_length}")
    translator = load_translator(args.model)
    batches = _chunks(list(args.text), args.batch_size) if args.text else stream_batches(stdin, args.batch_size)
    plot_path = getattr(args, "attention_plot", None)
    count = 0
    for batch in batches:
        want_plot = bool(plot_path) and count == 0
        results = translator.translate(batch, args.max_length, with_attention=want_plot)
        if want_plot:
            _plot_first(results[0], plot_path)
        _write(results, args.json, stdout)
        count += len(batch)
    logger.debug("translated %d sentences", count)
    return 0
