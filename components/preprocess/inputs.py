"""Corpus inputs: resolve paths into read units, and parse raw bytes into records or rejects.

Nothing here imports TensorFlow: the readers run inside Beam workers, before tokenization.
Line-based files (TSV, JSONL) that are not compressed are split into byte ranges, and Parquet files
into runs of row groups, so that several workers read one big file; other files are read whole,
one unit per file (or per aligned pair).
"""
from __future__ import annotations

import base64
import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import posixpath
import re
import stat
import zlib
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
GZIP_MAGIC = b"\x1f\x8b"
# Compressions Beam would decode by suffix but this reader does not: refused by name, never read as
# raw bytes (a byte range of compressed data is garbage, and a short stream would go unnoticed).
OTHER_COMPRESSIONS = {".bz2": "bzip2", ".deflate": "deflate", ".zst": "zstd", ".zstd": "zstd",
                      ".xz": "xz", ".lzma": "lzma", ".zip": "zip"}
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
    test: bool = False  # a unit of the fixed test set (--test): written to the test split, never learned from

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
    # The record's original bytes, kept where `raw` cannot reproduce them (bad UTF-8 shown as
    # U+FFFD, NUL shown as \x00); written whole, base64-encoded, as `raw_base64`.
    raw_bytes: Optional[bytes] = None
    # What the reason alone does not say (too_many_spans: how many spans, of how many sentinels).
    detail: Optional[str] = None

    def to_json(self) -> str:
        limit = schemas.quarantine_raw_chars()
        row: dict[str, Any] = {"file": self.file, "line": self.line, "reason": self.reason,
                               "raw": _printable(self.raw[:limit])}
        if self.raw_bytes is not None:
            row["raw_base64"] = base64.b64encode(self.raw_bytes).decode("ascii")
        if self.detail is not None:
            row["detail"] = self.detail
        return json.dumps(row, ensure_ascii=False)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _printable(text: str) -> str:
    """Text that UTF-8 can hold: lone surrogates (from JSON escapes) become U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


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
    """(path, size) of every regular file a path, directory or glob names; [] when nothing matches.

    A directory gives the files directly inside it. Names starting with "." or "_" and
    sub-directories are left out. On the local filesystem anything that is not a regular file (a
    FIFO, socket or device, a broken symlink, a symlink loop) is skipped with a warning, since
    opening a FIFO blocks forever; a pattern that names only such entries is an InputError.
    """
    from components.preprocess.fs import is_local

    if is_local(pattern):
        return _match_local(pattern)
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
    # Sub-directories are not inputs (object stores list them as names ending in "/").
    files = [(m.path, m.size_in_bytes) for m in result if not m.path.endswith("/")]
    return sorted((p, s) for p, s in files if not _hidden(p))


def _hidden(path: str) -> bool:
    return posixpath.basename(path.rstrip("/")).startswith((".", "_"))


def _match_local(pattern: str) -> list[tuple[str, int]]:
    """`_match` on the local filesystem: the same names Beam's LocalFileSystem matches, each
    checked with os.stat (following symlinks) before anything opens it."""
    path = pattern[len("file://"):] if pattern.startswith("file://") else pattern
    if not _has_glob(path):
        if os.path.isdir(path):
            with os.scandir(path) as entries:
                candidates = [os.path.join(path, e.name) for e in entries]
        elif os.path.lexists(path):
            candidates = [path]
        else:
            return []
    else:
        candidates = _local_glob(path)
    files, skipped = [], []
    for candidate in candidates:
        if _hidden(candidate):
            continue
        try:
            mode = os.stat(candidate)
        except OSError as e:
            skipped.append(f"{candidate} ({_stat_error(e, candidate)})")
            continue
        if stat.S_ISDIR(mode.st_mode):
            continue
        if not stat.S_ISREG(mode.st_mode):
            skipped.append(f"{candidate} ({_file_kind(mode.st_mode)})")
            continue
        files.append((candidate, mode.st_size))
    for what in skipped:
        logger.warning("input %s: skipped, not a regular file", what)
    if skipped and not files:
        raise InputError(f"input {pattern}: no regular file to read; skipped {', '.join(skipped)}")
    return sorted(files)


def _local_glob(pattern: str) -> list[str]:
    """Local paths that Beam's glob (`*` within a name, `**` across folders) matches, special files
    and dangling links included (Beam's own listing silently drops the entries it cannot stat)."""
    from apache_beam.io.filesystem import FileSystem

    prefix = re.match(r"^[^[*?]*", pattern).group(0)
    directory = os.path.dirname(prefix)
    regex = re.compile(FileSystem.translate_pattern(pattern))
    rest = pattern[len(directory) + 1:] if directory else pattern
    if "/" in rest or "**" in rest:
        names = [os.path.join(d, n) for d, _, ns in os.walk(directory or ".") for n in ns]
        if not directory:
            names = [n[2:] if n.startswith("./") else n for n in names]
    else:
        with os.scandir(directory or ".") as entries:
            names = [os.path.join(directory, e.name) for e in entries]
    return [name for name in names if regex.match(name)]


def _stat_error(error: OSError, path: str) -> str:
    import errno

    if error.errno == errno.ELOOP:
        return "a symlink loop"
    if error.errno == errno.ENOENT:
        # In a worker, a listed file that is missing is most often a path this worker cannot see
        # (not on a shared mount), not a broken symlink.
        if os.path.islink(path):
            return "a broken symlink"
        return "no such file on this worker; --data must be a path every worker reaches"
    return error.strerror or type(error).__name__


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a regular file"


def corpus_files(data: Union[str, Sequence[str]]) -> list[str]:
    """The files the job reads for DATA (a file, folder or glob, or several), sorted: the regular,
    non-hidden files directly named, directly inside a named folder, or matched by a glob. The
    runner hashes exactly these for its cache key (pipeline/fingerprint.py). [] when nothing matches;
    InputError when a pattern names only special files."""
    patterns = [data] if isinstance(data, str) else list(data)
    return sorted({path for pattern in patterns for path, _ in _match(pattern)})


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _is_dir(path: str) -> bool:
    from components.preprocess import fs

    return fs.is_dir(path)


def is_gzip(path: str) -> bool:
    return path.lower().endswith(GZIP_SUFFIX)


def strip_gzip(path: str) -> str:
    return path[: -len(GZIP_SUFFIX)] if is_gzip(path) else path


def check_compression(path: str, size: int) -> None:
    """Refuse compressions this reader does not decode, and a .gz file that is not gzip
    (raises InputError naming the file). Reads 2 bytes of a .gz file, nothing of others."""
    lowered = path.lower()
    for suffix, name in OTHER_COMPRESSIONS.items():
        if lowered.endswith(suffix):
            raise InputError(f"{path}: {name}-compressed input is not supported; decompress it, "
                             f"or recompress it with gzip (.gz)")
    if is_gzip(path) and size > 0:
        with _open(path, raw=True) as f:
            head = f.read(2)
        if head != GZIP_MAGIC:
            raise InputError(f"{path}: not a gzip file (it does not start with the gzip magic bytes "
                             f"1f 8b); rename it without .gz or compress it with gzip")


def detect_format(path: str, config: PreprocessConfig) -> str:
    """The format of one file: preprocess.format, or (auto) its extension, .gz ignored."""
    name = strip_gzip(path)
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
        check_compression(path, size)  # now, not later in a worker
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


def resolve_test_inputs(test: str, config: PreprocessConfig, corpus: Sequence[ReadUnit]) -> list[ReadUnit]:
    """The fixed test set's read units (--test: a path, folder or glob, any input format): whole
    files, so that their lines are numbered without the corpus' first pass; InputError when a test
    file is also one of the corpus' files."""
    units = resolve_inputs(test, config)
    shared = sorted({u.path for u in units} & {u.path for u in corpus})
    if shared:
        raise InputError(f"--test {test}: {shared[0]} is also a file of the corpus (--data); the test set "
                         f"must be kept apart from the data it is trained on")
    whole: dict[str, ReadUnit] = {}
    for unit in units:
        if unit.splittable:
            whole[unit.path] = ReadUnit(unit.path, unit.format, test=True)
        else:
            whole[unit.key] = dataclasses.replace(unit, test=True)
    return list(whole.values())


def _file_units(path: str, fmt: str, size: int) -> list[ReadUnit]:
    # A compressed file is read whole: a byte range of compressed data is not lines.
    if fmt not in ("tsv", "jsonl") or is_gzip(path) or size <= MIN_RANGE_BYTES:
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
        name = strip_gzip(path)
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
    """A binary stream of a file: decompressed and verified if it is .gz (and not `raw`), else
    its bytes as they are (Beam's suffix-based decompression is never used)."""
    from apache_beam.io.filesystem import CompressionTypes

    from components.preprocess.fs import is_local

    if is_local(path):  # replaced since the inputs were resolved: never block on a FIFO
        try:
            local = path[len("file://"):] if path.startswith("file://") else path
            mode = os.stat(local).st_mode
        except OSError as e:
            raise InputError(f"{path}: cannot read it ({_stat_error(e, local)})") from None
        if not stat.S_ISREG(mode):
            raise InputError(f"{path}: not a regular file ({_file_kind(mode)}); only regular files are read")
    stream = _filesystems().open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    if raw or not is_gzip(path):
        return stream
    return io.BufferedReader(VerifiedGzipReader(stream, path), buffer_size=1 << 16)


class VerifiedGzipReader(io.RawIOBase):
    """The decompressed bytes of a gzip file (one member or several, concatenated), or InputError
    naming the file: when the data is not gzip, is corrupt (the CRC of each member is checked), or
    ends before its last member does. Beam's gzip reader returns whatever a truncated file holds
    without complaint, and the last line it returns is cut in the middle."""

    CHUNK = 1 << 20

    def __init__(self, stream, path: str):
        super().__init__()
        self._stream = stream
        self._path = path
        self._decompressor: Any = None  # None between members
        self._input = b""  # compressed bytes not yet decompressed
        self._output = memoryview(b"")  # decompressed bytes not yet returned
        self._at_end = False  # the compressed stream is exhausted
        self._padding = False  # zero bytes after the last member (allowed, as gzip allows them)
        self._done = 0  # decompressed bytes returned so far
        self._members = 0  # gzip members started

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._output:
            if not self._fill():
                return 0
        n = min(len(buffer), len(self._output))
        buffer[:n] = self._output[:n]
        self._output = self._output[n:]
        self._done += n
        return n

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()

    def _fail(self, why: str) -> InputError:
        return InputError(f"{self._path}: {why}; nothing of this file is used "
                          f"({self._done} bytes were decompressed before the error)")

    def _fill(self) -> bool:
        """Decompress the next piece into self._output; False at the clean end of the stream."""
        while True:
            if not self._input:
                if not self._at_end:
                    self._input = self._stream.read(self.CHUNK)
                    self._at_end = not self._input
                    continue
                if self._decompressor is not None:
                    raise self._fail("the gzip data ends early (a truncated or partly copied file)")
                return False
            if self._decompressor is None:  # a new member, or zero padding after the last one
                stripped = self._input.lstrip(b"\x00")
                if self._members and (self._padding or stripped != self._input):
                    self._padding = True
                    if stripped:
                        raise self._fail("unexpected data after the end of the gzip data")
                    self._input = b""
                    continue
                self._decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._members += 1
            try:
                out = self._decompressor.decompress(self._input, self.CHUNK)
            except zlib.error as e:
                raise self._fail(f"not valid gzip data ({e})") from None
            if self._decompressor.eof:
                self._input = self._decompressor.unused_data
                self._decompressor = None
            else:
                self._input = self._decompressor.unconsumed_tail
            if out:
                self._output = memoryview(out)
                return True


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
        return Reject(path, number, "invalid_utf8", f"{line.decode('utf-8', 'replace')} ({e.reason} at byte {e.start})",
                      raw_bytes=line)


# Characters that show nothing: controls (Cc), format characters (Cf: U+200B zero width space,
# U+200D zero width joiner, U+FEFF BOM, U+2060 word joiner, bidi marks, ...), separators (Z*),
# whitespace, and the rest of Unicode's Default_Ignorable_Code_Point (soft hyphen, variation
# selectors, Hangul fillers, tags). A side made of nothing else is empty. Written out (Unicode 14,
# Python 3.11) rather than computed per process; tests/test_preprocess_faults.py checks it
# against unicodedata.
INVISIBLE_RANGES = ((0x0000, 0x0020), (0x007F, 0x00A0), (0x00AD, 0x00AD), (0x034F, 0x034F),
                    (0x0600, 0x0605), (0x061C, 0x061C), (0x06DD, 0x06DD), (0x070F, 0x070F),
                    (0x0890, 0x0891), (0x08E2, 0x08E2), (0x115F, 0x1160), (0x1680, 0x1680),
                    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x2000, 0x200F), (0x2028, 0x202F),
                    (0x205F, 0x206F), (0x3000, 0x3000), (0x3164, 0x3164), (0xFE00, 0xFE0F),
                    (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFFB), (0x110BD, 0x110BD),
                    (0x110CD, 0x110CD), (0x13430, 0x13438), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
                    (0xE0000, 0xE0FFF))
INVISIBLE = "".join(f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in INVISIBLE_RANGES)  # a regex class
_INVISIBLE_CHARS = frozenset(chr(c) for lo, hi in INVISIBLE_RANGES for c in range(lo, hi + 1))
_INVISIBLE_ONLY = re.compile(f"[{INVISIBLE}]*")


def is_invisible(text: str) -> bool:
    """True when TEXT is empty or holds only invisible characters (see INVISIBLE_RANGES)."""
    # The first character decides for almost every real side, at the cost of a set lookup.
    return not text or (text[0] in _INVISIBLE_CHARS and _INVISIBLE_ONLY.fullmatch(text) is not None)


def is_blank(text: str) -> bool:
    """A blank line (or CSV row, or pair of aligned lines): nothing but whitespace. Not a record,
    in every format; counted as `blank_lines`."""
    return not text.strip()


def check_sides(path: str, number: int, source: str, target: str, raw: str) -> Union[Record, Reject]:
    """The record rules that need no tokenizer (the length rules run after tokenization)."""
    if "\x00" in source or "\x00" in target:
        return Reject(path, number, "nul_byte", raw.replace("\x00", "\\x00"),
                      raw_bytes=raw.encode("utf-8") if "\x00" in raw else None)
    if is_invisible(source) or is_invisible(target):
        return Reject(path, number, "empty_side", raw)
    return Record(number, source, target)


def parse_tsv_line(line: bytes, path: str, number: int) -> Parsed:
    text = _decode(line, path, number)
    if isinstance(text, Reject):
        return text
    if is_blank(text):
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
                if not is_invisible(source) and not is_invisible(target):
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
    if is_blank(text):
        return Blank(number)
    try:
        obj = json.loads(text)
    except ValueError as e:
        return Reject(path, number, "malformed_record", f"{text} (invalid JSON: {e})")
    except RecursionError:  # a hostile line: arrays or objects nested thousands deep
        return Reject(path, number, "malformed_record", f"{text} (invalid JSON: nested too deeply)")
    if not isinstance(obj, dict):
        return Reject(path, number, "malformed_record", f"{text} (not a JSON object)")
    return _fields(path, number, obj.get(config.source_field), obj.get(config.target_field), text, config)


def _fields(path: str, number: int, source, target, raw: str, config: PreprocessConfig) -> Union[Record, Reject]:
    for name, value in ((config.source_field, source), (config.target_field, target)):
        if not isinstance(value, str):
            why = "missing" if value is None else f"not a string: {type(value).__name__}"
            return Reject(path, number, "missing_field", f"{raw} (field {name!r} {why})")
    for name, value in ((config.source_field, source), (config.target_field, target)):
        bad = _SURROGATE.search(value)
        if bad:  # a JSON escape such as "\ud800" without its pair: no UTF-8 encoding exists
            return Reject(path, number, "invalid_utf8",
                          f"{raw} (field {name!r} holds a lone surrogate U+{ord(bad.group()):04X}, "
                          f"which UTF-8 cannot encode)")
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
                original = raw.encode("utf-8", "surrogateescape")
                yield Reject(path, number, "invalid_utf8", original.decode("utf-8", "replace"), raw_bytes=original)
            elif not row or all(is_blank(cell) for cell in row):
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
            if is_blank(source) and is_blank(target):
                yield Blank(number)
            else:
                yield check_sides(unit.path, number, source, target, f"{source}\t{target}")
