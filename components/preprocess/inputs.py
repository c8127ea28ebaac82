"""Corpus inputs: resolve paths into read units, and parse raw bytes into records or rejects.

Nothing here imports TensorFlow: the readers run inside Beam workers, before tokenization.
Line-based files (TSV, JSONL) that are not compressed are split into byte ranges, and Parquet files
into runs of row groups, so that several workers read one big file; other files are read whole,
one unit per file (or per aligned pair).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Iterator, NamedTuple, Optional, Sequence, Union

import schemas
from components.core.config import PreprocessConfig
from components.core.errors import InputError

logger = logging.getLogger(__name__)

FORMATS = ("tsv", "csv", "jsonl", "parquet", "aligned")
_EXTENSIONS = {
    ".tsv": "tsv", ".tab": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
    ".parquet": "parquet", ".pq": "parquet",
}
GZIP_SUFFIX = ".gz"
BOM = b"\xef\xbb\xbf"
# Byte ranges of one line-based file: small enough to give every worker several, large enough
# that the per-unit overhead does not show.
MIN_RANGE_BYTES = 1 << 20
MAX_RANGE_BYTES = 16 << 20
RANGES_PER_FILE_TARGET = 32


@dataclass(frozen=True, order=True)
class ReadUnit:
    """One piece of input that one worker reads: a byte range of a file, row groups [start, end)
    of a Parquet file, or a whole file (pair)."""

    path: str
    format: str
    start: int = 0
    end: Optional[int] = None  # None = to the end of the file
    target_path: Optional[str] = None  # aligned format: the target-side file

    @property
    def splittable(self) -> bool:
        """A byte range, whose lines are numbered from the newline counts of the ranges before it."""
        return self.end is not None and self.format != "parquet"

    @property
    def key(self) -> str:
        return f"{self.path}@{self.start}"


class Record(NamedTuple):
    line: int
    source: str
    target: str


class Reject(NamedTuple):
    file: str
    line: int
    reason: str
    raw: str

    def to_json(self) -> str:
        limit = schemas.quarantine_raw_chars()
        return json.dumps({"file": self.file, "line": self.line, "reason": self.reason,
                           "raw": self.raw[:limit]}, ensure_ascii=False)


class Blank(NamedTuple):
    """A fully blank line: not a record, but counted in the stats so nothing vanishes silently."""

    line: int


Parsed = Union[Record, Reject, Blank]


# --------------------------------------------------------------------------------------------
# Resolving paths (runs in the launching process, before the pipeline starts)
# --------------------------------------------------------------------------------------------

def _filesystems():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def _match(pattern: str) -> list[tuple[str, int]]:
    """(path, size) of every file a path, directory or glob names; [] when nothing matches."""
    fs = _filesystems()
    try:
        if fs.exists(pattern) and not _has_glob(pattern):
            result = fs.match([pattern])[0].metadata_list
            # A directory matches itself: read the files directly inside it.
            if not result or _is_dir(pattern):
                result = fs.match([pattern.rstrip("/") + "/*"])[0].metadata_list
        else:
            result = fs.match([pattern])[0].metadata_list
    except Exception as e:  # Beam raises BeamIOError for unmatched globs on some filesystems
        if "No files found" in str(e) or "not found" in str(e).lower():
            return []
        raise InputError(f"cannot read input {pattern}: {e}") from None
    from components.preprocess.fs import is_local

    # Sub-directories are not inputs (object stores list them as names ending in "/").
    files = [(m.path, m.size_in_bytes) for m in result
             if not (m.path.endswith("/") or (is_local(m.path) and os.path.isdir(m.path)))]
    hidden = lambda p: posixpath.basename(p.rstrip("/")).startswith((".", "_"))  # noqa: E731
    return sorted((p, s) for p, s in files if not hidden(p))


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _is_dir(path: str) -> bool:
    from components.preprocess import fs

    return fs.is_dir(path)


def detect_format(path: str, config: PreprocessConfig) -> str:
    """The format of one file: preprocess.format, or (auto) its extension, .gz ignored."""
    name = path[: -len(GZIP_SUFFIX)] if path.endswith(GZIP_SUFFIX) else path
    if config.format != "auto":
        return config.format
    if name.endswith(config.source_suffix) or name.endswith(config.target_suffix):
        return "aligned"
    ext = posixpath.splitext(name)[1].lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    raise InputError(
        f"{path}: cannot tell the format from the extension {ext or '(none)'}; "
        f"use .tsv/.csv/.jsonl/.parquet, {config.source_suffix}/{config.target_suffix} pairs, "
        f"or set preprocess.format"
    )


def resolve_inputs(data: Union[str, Sequence[str]], config: PreprocessConfig) -> list[ReadUnit]:
    """Expand paths, directories and globs into read units; fail naming the path if nothing is there."""
    patterns = [data] if isinstance(data, str) else list(data)
    if not patterns:
        raise InputError("no input path given")
    files: dict[str, int] = {}
    for pattern in patterns:
        matched = _match(pattern)
        if not matched:
            what = "glob matches no files" if _has_glob(pattern) else "path does not exist or holds no files"
            raise InputError(f"input {pattern}: {what}")
        files.update(matched)
    by_format: dict[str, list[tuple[str, int]]] = {}
    for path, size in sorted(files.items()):
        by_format.setdefault(detect_format(path, config), []).append((path, size))
    units: list[ReadUnit] = []
    for path, _ in by_format.get("csv", []):
        csv_header(path, config)  # a missing column fails now, not in a worker
    for fmt, entries in sorted(by_format.items()):
        if fmt == "aligned":
            units.extend(_aligned_units([p for p, _ in entries], config))
        elif fmt == "parquet":  # an unreadable file or a missing column fails now, not in a worker
            units.extend(u for path, size in entries for u in _parquet_units(path, size, config))
        else:
            for path, size in entries:
                units.extend(_file_units(path, fmt, size))
    logger.info("input: %d file(s), %d read unit(s), formats %s", len(files), len(units),
                ", ".join(sorted(by_format)))
    return units


def _file_units(path: str, fmt: str, size: int) -> list[ReadUnit]:
    if fmt not in ("tsv", "jsonl") or path.endswith(GZIP_SUFFIX) or size <= MIN_RANGE_BYTES:
        return [ReadUnit(path, fmt)]
    step = _range_bytes(size)
    return [ReadUnit(path, fmt, start, min(start + step, size)) for start in range(0, size, step)]


def _range_bytes(size: int) -> int:
    """The bytes of one read unit of a file of `size` bytes."""
    return min(MAX_RANGE_BYTES, max(MIN_RANGE_BYTES, -(-size // RANGES_PER_FILE_TARGET)))


def _parquet_units(path: str, size: int, config: PreprocessConfig) -> list[ReadUnit]:
    """Runs of whole row groups (the smallest piece Parquet reads alone): as many units as a
    line-based file of this size gets byte ranges, at most one per row group."""
    groups = parquet_row_groups(path, config)
    if groups <= 1 or size <= MIN_RANGE_BYTES:
        return [ReadUnit(path, "parquet")]
    per_unit = -(-groups // min(groups, -(-size // _range_bytes(size))))
    return [ReadUnit(path, "parquet", first, min(first + per_unit, groups)) for first in range(0, groups, per_unit)]


def parquet_row_groups(path: str, config: PreprocessConfig) -> int:
    """A Parquet file's row-group count, once its footer is read and the configured columns are
    found in its schema (raises InputError naming the file otherwise)."""
    try:
        with _parquet_file(path) as parquet:
            names, groups = parquet.schema_arrow.names, parquet.metadata.num_row_groups
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    for name in (config.source_field, config.target_field):
        if name not in names:
            raise InputError(f"{path}: the Parquet columns {names} have no column {name!r} "
                             f"(set preprocess.source_field / preprocess.target_field)")
    return groups


@contextlib.contextmanager
def _parquet_file(path: str) -> Iterator[Any]:
    """A pyarrow ParquetFile over Beam's FileSystems: the footer is read now, row groups on demand."""
    import pyarrow.parquet as pq

    with _open(path, raw=True) as f:
        yield pq.ParquetFile(f)


def _aligned_units(paths: list[str], config: PreprocessConfig) -> list[ReadUnit]:
    """Pair STEM<source_suffix>[.gz] with STEM<target_suffix>[.gz]."""
    sources: dict[str, str] = {}
    targets: dict[str, str] = {}
    for path in paths:
        name = path[: -len(GZIP_SUFFIX)] if path.endswith(GZIP_SUFFIX) else path
        if name.endswith(config.source_suffix):
            sources[name[: -len(config.source_suffix)]] = path
        elif name.endswith(config.target_suffix):
            targets[name[: -len(config.target_suffix)]] = path
        else:
            raise InputError(f"{path}: aligned input files must end with {config.source_suffix} "
                             f"or {config.target_suffix}")
    for stem in sorted(set(sources) ^ set(targets)):
        have, want = ((sources[stem], config.target_suffix) if stem in sources
                      else (targets[stem], config.source_suffix))
        raise InputError(f"{have}: no matching {stem}{want} file for this aligned pair")
    return [ReadUnit(sources[s], "aligned", target_path=targets[s]) for s in sorted(sources)]


# --------------------------------------------------------------------------------------------
# Reading (runs in Beam workers)
# --------------------------------------------------------------------------------------------

def _open(path: str, raw: bool = False):
    from apache_beam.io.filesystem import CompressionTypes

    compression = CompressionTypes.UNCOMPRESSED if raw else CompressionTypes.AUTO
    return _filesystems().open(path, compression_type=compression)


def read_range(unit: ReadUnit) -> tuple[int, bool, list[bytes]]:
    """Lines that start inside [start, end) of an uncompressed file.

    Returns (newlines in [start, end), whether a partial first line was skipped, the lines).
    The newline counts of all ranges give every range its first line number (see `first_line`).
    """
    start, end = unit.start, unit.end
    assert end is not None
    with _open(unit.path, raw=True) as f:
        lead = b""
        if start > 0:
            f.seek(start - 1)
            lead = f.read(1)
        block = f.read(end - start)
        newlines = block.count(b"\n")
        skipped = False
        if start > 0 and lead != b"\n":
            cut = block.find(b"\n")
            skipped = True
            if cut < 0:  # a line longer than the range: it belongs to an earlier range
                return newlines, skipped, []
            block = block[cut + 1:]
        if block and not block.endswith(b"\n"):
            block += _read_to_newline(f)
    lines = block.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return newlines, skipped, lines


def _read_to_newline(f, chunk: int = 1 << 16) -> bytes:
    parts = []
    while True:
        data = f.read(chunk)
        if not data:
            break
        cut = data.find(b"\n")
        if cut >= 0:
            parts.append(data[:cut])
            break
        parts.append(data)
    return b"".join(parts)


def read_whole_lines(path: str) -> Iterator[bytes]:
    """Lines of a (possibly gzip) file, without the trailing newline."""
    with _open(path) as f:
        pending = b""
        while True:
            data = f.read(1 << 20)
            if not data:
                break
            data = pending + data
            lines = data.split(b"\n")
            pending = lines.pop()
            yield from lines
        if pending:
            yield pending


def _clean(line: bytes, first_in_file: bool) -> bytes:
    if first_in_file and line.startswith(BOM):
        line = line[len(BOM):]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line


def _decode(line: bytes, path: str, number: int) -> Union[str, Reject]:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        return Reject(path, number, "invalid_utf8", f"{line.decode('utf-8', 'replace')} ({e.reason} at byte {e.start})")


def check_sides(path: str, number: int, source: str, target: str, raw: str) -> Union[Record, Reject]:
    """The record rules that need no tokenizer (the length rules run after tokenization)."""
    if "\x00" in source or "\x00" in target:
        return Reject(path, number, "nul_byte", raw.replace("\x00", "\\x00"))
    if not source.strip() or not target.strip():
        return Reject(path, number, "empty_side", raw)
    return Record(number, source, target)


def parse_tsv_line(line: bytes, path: str, number: int) -> Parsed:
    text = _decode(line, path, number)
    if isinstance(text, Reject):
        return text
    if not text:
        return Blank(number)
    columns = text.split("\t")
    if len(columns) != 2:
        return Reject(path, number, "wrong_column_count", f"{text} ({len(columns)} columns, expected 2)")
    return check_sides(path, number, columns[0], columns[1], text)


def parse_tsv_chunk(path: str, lines: list[bytes], first_line: int, at_file_start: bool
                    ) -> tuple[list[int], list[str], list[str], list[Union[Reject, Blank]]]:
    """A chunk of TSV lines -> (numbers, sources, targets) of good records, and the rest.

    Same result as `parse_tsv_line` on each line, but decodes the chunk at once and accepts the
    common case (two columns, both non-blank, no NUL) in a tight loop; only other lines take the
    careful per-line path that names the reason.
    """
    if at_file_start and lines and lines[0].startswith(BOM):
        lines = [lines[0][len(BOM):]] + lines[1:]
    try:
        decoded = b"\n".join(lines).decode("utf-8").split("\n")
    except UnicodeDecodeError:
        decoded = [None] * len(lines)  # type: ignore[list-item]
    numbers: list[int] = []
    sources: list[str] = []
    targets: list[str] = []
    others: list[Union[Reject, Blank]] = []
    for offset, line in enumerate(decoded):
        if line is not None:
            if line[-1:] == "\r":
                line = line[:-1]
            columns = line.split("\t")
            if len(columns) == 2 and "\x00" not in line:
                source, target = columns
                if source.strip() and target.strip():
                    numbers.append(first_line + offset)
                    sources.append(source)
                    targets.append(target)
                    continue
        item = parse_tsv_line(_clean(lines[offset], False), path, first_line + offset)
        if isinstance(item, Record):
            numbers.append(item.line)
            sources.append(item.source)
            targets.append(item.target)
        else:
            others.append(item)
    return numbers, sources, targets, others


def parse_jsonl_line(line: bytes, path: str, number: int, config: PreprocessConfig) -> Parsed:
    text = _decode(line, path, number)
    if isinstance(text, Reject):
        return text
    if not text.strip():
        return Blank(number)
    try:
        obj = json.loads(text)
    except ValueError as e:
        return Reject(path, number, "malformed_record", f"{text} (invalid JSON: {e})")
    if not isinstance(obj, dict):
        return Reject(path, number, "malformed_record", f"{text} (not a JSON object)")
    return _fields(path, number, obj.get(config.source_field), obj.get(config.target_field), text, config)


def _fields(path: str, number: int, source, target, raw: str, config: PreprocessConfig) -> Union[Record, Reject]:
    for name, value in ((config.source_field, source), (config.target_field, target)):
        if not isinstance(value, str):
            why = "missing" if value is None else f"not a string: {type(value).__name__}"
            return Reject(path, number, "missing_field", f"{raw} (field {name!r} {why})")
    return check_sides(path, number, source, target, raw)


def parse_lines(unit: ReadUnit, lines: Iterator[bytes], first_line: int, config: PreprocessConfig) -> Iterator[Parsed]:
    """TSV / JSONL lines -> records; `first_line` is the 1-based number of the first line."""
    at_file_start = unit.start == 0
    for offset, line in enumerate(lines):
        number = first_line + offset
        line = _clean(line, at_file_start and offset == 0)
        if unit.format == "tsv":
            yield parse_tsv_line(line, unit.path, number)
        else:
            yield parse_jsonl_line(line, unit.path, number, config)


_BAD_BYTE = re.compile("[\udc80-\udcff]")


def _open_csv(path: str) -> io.TextIOWrapper:
    """A streaming text view of a (possibly gzip) CSV file; invalid UTF-8 bytes become surrogates."""
    return io.TextIOWrapper(_open(path), encoding="utf-8-sig", errors="surrogateescape", newline="")


def csv_header(path: str, config: PreprocessConfig) -> list[str]:
    """The header row of a CSV file, checked for the configured columns (raises InputError)."""
    with _open_csv(path) as stream:
        try:
            header = next(csv.reader(stream), None)
        except csv.Error as e:
            raise InputError(f"{path}: line 1: cannot read the CSV header: {e}") from None
    if header is None:
        return []
    for name in (config.source_field, config.target_field):
        if name not in header:
            raise InputError(f"{path}: the CSV header {header} has no column {name!r} "
                             f"(set preprocess.source_field / preprocess.target_field)")
    return header


def read_csv(unit: ReadUnit, config: PreprocessConfig) -> Iterator[Parsed]:
    """CSV with a header row, streamed; a record's number is the line it starts on."""
    path = unit.path
    with _open_csv(path) as stream:
        reader = csv.reader(stream)
        header = next(reader, None)
        if header is None:
            return
        si, ti = header.index(config.source_field), header.index(config.target_field)
        while True:
            number = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield Reject(path, number, "malformed_record", f"(CSV error: {e})")
                continue
            raw = ",".join(row)
            if _BAD_BYTE.search(raw):
                shown = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                yield Reject(path, number, "invalid_utf8", shown)
            elif not row or all(not cell for cell in row):
                yield Blank(number)
            elif len(row) != len(header):
                yield Reject(path, number, "wrong_column_count", f"{raw} ({len(row)} columns, header has {len(header)})")
            else:
                yield check_sides(path, number, row[si], row[ti], raw)


def read_parquet(unit: ReadUnit, config: PreprocessConfig) -> Iterator[Parsed]:
    """Parquet through pyarrow, the unit's row groups only; a record's number is its 1-based row
    in the file."""
    with _parquet_file(unit.path) as parquet:
        names = parquet.schema_arrow.names
        wanted = [c for c in (config.source_field, config.target_field) if c in names]
        groups = list(range(unit.start, unit.end if unit.end is not None else parquet.metadata.num_row_groups))
        row = sum(parquet.metadata.row_group(g).num_rows for g in range(unit.start))
        for batch in parquet.iter_batches(batch_size=8192, columns=wanted, row_groups=groups):
            columns = batch.to_pydict()
            n = batch.num_rows
            sources = columns.get(config.source_field, [None] * n)
            targets = columns.get(config.target_field, [None] * n)
            for source, target in zip(sources, targets):
                row += 1
                raw = json.dumps({config.source_field: _jsonable(source),
                                  config.target_field: _jsonable(target)}, ensure_ascii=False)
                yield _fields(unit.path, row, source, target, raw, config)


def _jsonable(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def read_aligned(unit: ReadUnit) -> Iterator[Parsed]:
    """Line i of STEM.src with line i of STEM.tgt; extra lines on either side are rejected."""
    assert unit.target_path is not None
    sources = read_whole_lines(unit.path)
    targets = read_whole_lines(unit.target_path)
    number = 0
    while True:
        src = next(sources, None)
        tgt = next(targets, None)
        if src is None and tgt is None:
            return
        number += 1
        if src is None or tgt is None:
            missing = unit.path if src is None else unit.target_path
            text = (src if src is not None else tgt).decode("utf-8", "replace")
            yield Reject(unit.path, number, "malformed_record",
                         f"{text} (aligned files have different line counts: {missing} ended at line {number - 1})")
            continue
        src, tgt = _clean(src, number == 1), _clean(tgt, number == 1)
        source = _decode(src, unit.path, number)
        target = _decode(tgt, unit.target_path, number)
        for side in (source, target):
            if isinstance(side, Reject):
                yield side
                break
        else:
            if not source and not target:
                yield Blank(number)
            else:
                yield check_sides(unit.path, number, source, target, f"{source}\t{target}")
