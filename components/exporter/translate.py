"""`seq2seq translate --model SAVED_MODEL_DIR [TEXT ...]`: arguments, or stdin streamed in batches."""
from __future__ import annotations

import argparse
import json
import logging
import select
import sys
from typing import Iterable, Iterator, Optional, TextIO

from pipeline.errors import UserError

logger = logging.getLogger(__name__)


def _more_input_ready(stream: TextIO) -> bool:
    """True if another line can be read without waiting (so an interactive pipe is answered at once)."""
    try:
        ready, _, _ = select.select([stream], [], [], 0)
    except (OSError, ValueError, TypeError, AttributeError, NotImplementedError):
        return True  # not a selectable file (e.g. an in-memory stream): never blocks
    return bool(ready)


def stream_batches(stream: TextIO, batch_size: int) -> Iterator[list[str]]:
    """Lines of `stream` (newline stripped) in batches of at most `batch_size`.

    A batch is also cut short when the next line is not yet available, so a line typed into an
    interactive pipe is translated immediately instead of waiting for `batch_size` lines.
    """
    batch: list[str] = []
    while True:
        line = stream.readline()
        if not line:
            break
        batch.append(line.rstrip("\r\n"))
        if len(batch) >= batch_size or not _more_input_ready(stream):
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
            out.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
        else:
            out.write(result.translation + "\n")
    out.flush()


def _plot_first(result, path: str) -> None:
    from components.exporter.plotting import plot_attention

    if not result.tokens or not result.source_tokens:
        raise UserError(f"--attention-plot: the first sentence {result.source!r} is empty; nothing to draw")
    plot_attention(result.source_tokens, result.tokens, result.attention, path,
                   title=f"{result.source} -> {result.translation}")
    logger.info("wrote the attention plot of %r to %s", result.source, path)


def translate_main(args: argparse.Namespace, stdin: Optional[TextIO] = None,
                   stdout: Optional[TextIO] = None) -> int:
    """Translate args.text, or stdin lines when there are none; one line (or JSON object) per input."""
    from components.exporter.serving import load_translator

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
