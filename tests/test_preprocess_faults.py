"""Faults the preprocessing job must survive or refuse clearly: truncated gzip, hostile JSONL
records, special files in the corpus folder, runaway lines, invisible sides and bad bytes.

Real Beam on the DirectRunner, small generated corpora. Anything that could hang (a FIFO) runs
in a subprocess with a timeout.
"""
import base64
import gzip
import io
import json
import os
import subprocess
import sys
import unicodedata
import zlib

import pytest

from components.core.config import ConfigError
from components.core.errors import InputError
from components.preprocess import inputs
from tests.preprocess_helpers import REPO, config, quarantine, read_examples, run, vocab, write_lines


def _pairs(n: int, tag: str = "s") -> list[str]:
    return [f"{tag}ource sentence {i}\ttarget sentence {i}" for i in range(n)]


def _no_output(tmp_path, name: str = "out") -> None:
    assert not list(tmp_path.glob(f"{name}*")), list(tmp_path.glob(f"{name}*"))


# --------------------------------------------------------------------------------------------
# 1. Compressed files: a gzip that ends early, or is not gzip, fails the job naming the file
# --------------------------------------------------------------------------------------------

def test_truncated_gzip_fails_the_job_naming_the_file(tmp_path):
    """2,000 pairs gzipped and cut to 5 KB: no partial read, no output, one clear error."""
    data = gzip.compress(("\n".join(_pairs(2000)) + "\n").encode())
    (tmp_path / "c.tsv.gz").write_bytes(data[:5000])
    with pytest.raises(InputError, match=r"c\.tsv\.gz: the gzip data ends early") as err:
        run(tmp_path / "c.tsv.gz", tmp_path / "out", config("preprocess.eval_fraction=0"))
    assert "while running" not in str(err.value)
    _no_output(tmp_path)
    # The same with two worker processes (the error crosses a process boundary as text), and for
    # the other readers of .gz files (aligned pairs, JSONL).
    write_lines(tmp_path / "a.src.gz", [f"s {i}" for i in range(3000)], compress=True)
    write_lines(tmp_path / "a.tgt.gz", [f"t {i}" for i in range(3000)], compress=True)
    cut = tmp_path / "a.tgt.gz"
    cut.write_bytes(cut.read_bytes()[:-9])  # only the gzip trailer (CRC, size) is missing
    with pytest.raises(InputError, match=r"a\.tgt\.gz: the gzip data ends early"):
        run(tmp_path / "a.*", tmp_path / "out", config("preprocess.eval_fraction=0"),
            beam_args=["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    _no_output(tmp_path)


def test_a_gz_file_that_is_not_gzip_fails_before_the_job(tmp_path):
    (tmp_path / "plain.tsv.gz").write_bytes(b"not gzip at all\tx\n")
    with pytest.raises(InputError, match=r"plain\.tsv\.gz: not a gzip file"):
        run(tmp_path / "plain.tsv.gz", tmp_path / "out")
    corrupt = bytearray(gzip.compress(("\n".join(_pairs(200)) + "\n").encode()))
    corrupt[40:60] = b"\xff" * 20  # valid header, corrupt deflate data
    (tmp_path / "corrupt.jsonl.gz").write_bytes(bytes(corrupt))
    with pytest.raises(InputError, match=r"corrupt\.jsonl\.gz: not valid gzip data"):
        run(tmp_path / "corrupt.jsonl.gz", tmp_path / "out")
    (tmp_path / "other.tsv.bz2").write_bytes(b"BZh9")
    with pytest.raises(InputError, match=r"other\.tsv\.bz2: bzip2-compressed input is not supported"):
        run(tmp_path / "other.tsv.bz2", tmp_path / "out", config("preprocess.format=tsv"))
    _no_output(tmp_path)


def test_verified_gzip_reader_accepts_members_and_padding_and_refuses_short_data():
    def read(data: bytes) -> bytes:
        return io.BufferedReader(inputs.VerifiedGzipReader(io.BytesIO(data), "x.gz")).read()

    one, two = gzip.compress(b"a\tb\n" * 1000), gzip.compress(b"c\td\n")
    assert read(one + two) == b"a\tb\n" * 1000 + b"c\td\n"  # concatenated members (as shards are)
    assert read(one + b"\0" * 100) == b"a\tb\n" * 1000  # zero padding after the end, as gzip allows
    assert read(b"") == b""
    big = gzip.compress(os.urandom(3 << 20))  # more than one read chunk in and out
    assert len(read(big)) == 3 << 20
    for bad, why in ((one[:-1], "ends early"), (one + two[:5], "ends early"), (one[:5], "ends early"),
                     (one + b"\0\0junk", "unexpected data after the end"),
                     (b"\0" * 20, "not valid gzip data"),
                     (one[:-8] + b"\0\0\0\0" + one[-4:], "not valid gzip data")):  # wrong CRC
        with pytest.raises(InputError, match=f"x.gz: .*{why}"):
            read(bad)


def test_gzip_files_are_never_cut_into_byte_ranges(monkeypatch):
    monkeypatch.setattr(inputs, "MIN_RANGE_BYTES", 0)
    assert inputs._file_units("a.tsv.GZ", "tsv", 10 << 20) == [inputs.ReadUnit("a.tsv.GZ", "tsv")]
    assert len(inputs._file_units("a.tsv", "tsv", 10 << 20)) > 1


# --------------------------------------------------------------------------------------------
# 2. One hostile record never crashes the job
# --------------------------------------------------------------------------------------------

def test_hostile_jsonl_records_are_quarantined_and_the_rest_is_read(tmp_path):
    good = [json.dumps({"source": f"good {i}", "target": f"gut {i}"}) for i in range(6)]
    lines = [
        good[0],                                                     # 1
        "[" * 200_000 + "]" * 200_000,                               # 2 nested 200,000 deep
        good[1],                                                     # 3
        '{"source": "lone \\ud800 surrogate", "target": "x"}',       # 4 a lone surrogate escape
        good[2],                                                     # 5
        '{"source": "ok", "target": ' + "[" * 100_000 + "]" * 100_000 + "}",  # 6 deep inside a field
        '{"source": "low", "target": "\\udfff"}',                    # 7 a lone low surrogate
        good[3], good[4], good[5],                                   # 8-10
    ]
    write_lines(tmp_path / "h.jsonl", lines)
    out = tmp_path / "out"
    stats = run(tmp_path / "h.jsonl", out, config("preprocess.eval_fraction=0",
                                                  "preprocess.max_rejected_fraction=0.5"))
    rows = quarantine(out)
    assert [(r["line"], r["reason"]) for r in rows] == [
        (2, "malformed_record"), (4, "invalid_utf8"), (6, "malformed_record"), (7, "invalid_utf8")]
    assert all(r["file"].endswith("h.jsonl") for r in rows)
    assert rows[0]["raw"] == "[" * 500  # raw is cut to quarantine_raw_chars
    assert "\\ud800" in rows[1]["raw"] and "lone surrogate U+D800" in rows[1]["raw"]
    assert sorted(r["source_text"] for r in read_examples(out)) == [f"good {i}" for i in range(6)]
    assert stats["records_read"] == 10 == stats["records_written"]["train"] + stats["rejected_total"]


# --------------------------------------------------------------------------------------------
# 3. Special files: skipped with a warning by both `seq2seq run` and `seq2seq preprocess`
# --------------------------------------------------------------------------------------------

def _special_corpus(root, links: bool = True):
    root.mkdir()
    write_lines(root / "a.tsv", _pairs(20))
    os.mkfifo(root / "pipe.tsv")
    if not links:
        return root
    os.symlink(root / "loop1.tsv", root / "loop2.tsv")
    os.symlink(root / "loop2.tsv", root / "loop1.tsv")
    os.symlink(root / "gone.tsv", root / "dangling.tsv")
    return root


def _python(code: str, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.timeout(360)
def test_runner_fingerprint_skips_special_files_and_never_blocks(tmp_path):
    code = ("import json, sys; from pipeline.fingerprint import corpus_fingerprint, resolve_corpus; "
            "print(json.dumps(sorted(corpus_fingerprint(resolve_corpus(sys.argv[1])))))")

    def fingerprint(folder):
        return subprocess.run([sys.executable, "-c", code, str(folder)], cwd=REPO, capture_output=True,
                              text=True, timeout=90)  # reading the FIFO would block forever

    done = fingerprint(_special_corpus(tmp_path / "fifo", links=False))
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [str(tmp_path / "fifo" / "a.tsv")]
    root = _special_corpus(tmp_path / "data")
    done = fingerprint(root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [str(root / "a.tsv")]
    for name, why in (("pipe.tsv", "a FIFO"), ("loop1.tsv", "a symlink loop"), ("dangling.tsv", "a broken symlink")):
        assert f"{root / name} ({why})" in done.stderr, done.stderr[-2000:]
    # A path naming only a special file is refused, naming it; so is a FIFO handed to the fingerprint.
    code = ("from pipeline.fingerprint import corpus_fingerprint, resolve_corpus\n"
            "from components.core.errors import InputError\n"
            "for call in (lambda: resolve_corpus(%r), lambda: corpus_fingerprint([%r])):\n"
            "    try: call(); print('no error')\n"
            "    except InputError as e: print('InputError:', e)\n") % (str(root / "pipe.tsv"), str(root / "pipe.tsv"))
    done = _python(code, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"input {root / 'pipe.tsv'}: no regular file to read; skipped {root / 'pipe.tsv'} (a FIFO)" in done.stdout
    assert f"corpus file {root / 'pipe.tsv'}: not a regular file" in done.stdout


@pytest.mark.timeout(400)
def test_preprocess_skips_special_files_with_a_warning_and_never_blocks(tmp_path):
    root = _special_corpus(tmp_path / "data")
    out = tmp_path / "out"
    cli = [sys.executable, "-m", "pipeline.cli", "preprocess", "--data", str(root), "--out", str(out),
           "--set", "preprocess.eval_fraction=0"]
    done = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "stats.json").read_text())["records_read"] == 20
    for name, why in (("pipe.tsv", "a FIFO"), ("loop1.tsv", "a symlink loop"), ("dangling.tsv", "a broken symlink")):
        assert f"{root / name} ({why})" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]  # no out.tmp-* left behind
    # The FIFO alone: a clear error, nothing opened, nothing left behind.
    cli = [sys.executable, "-m", "pipeline.cli", "preprocess", "--data", str(root / "pipe.tsv"),
           "--out", str(tmp_path / "out2")]
    done = subprocess.run(cli, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 1 and "pipe.tsv (a FIFO)" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "out"]


# --------------------------------------------------------------------------------------------
# 4. Only kept tokens enter the vocabulary; absurd lengths are rejected even under truncate
# --------------------------------------------------------------------------------------------

def _runaway_corpus(tmp_path):
    normal = [f"w{i % 25} common\tv{i % 24} gemein" for i in range(41)]  # 27 + 26 distinct tokens
    long = " ".join(f"long{i}" for i in range(40))                     # 40 tokens: cut to 32
    huge = " ".join(f"x{i}" for i in range(150_000))                   # over 1 MB: rejected
    return write_lines(tmp_path / "c.tsv", normal + [f"{long}\t{long}", f"{huge}\tkurz"])


def test_truncated_tokens_stay_out_of_the_vocabulary_and_runaway_lines_are_rejected(tmp_path):
    data = _runaway_corpus(tmp_path)
    out = tmp_path / "out"
    stats = run(data, out, config("preprocess.eval_fraction=0"))  # truncate, limits 32 / 32, factor 4
    assert [(r["line"], r["reason"]) for r in quarantine(out)] == [(43, "source_too_long")]
    kept = [f"long{i}" for i in range(32)]
    assert set(vocab(out, "source")[4:]) == {f"w{i}" for i in range(25)} | {"common"} | set(kept)
    assert set(vocab(out, "target")[4:]) == {f"v{i}" for i in range(24)} | {"gemein"} | set(kept)
    assert stats["vocabulary_size"] == {"source": 4 + 26 + 32, "target": 4 + 25 + 32}
    assert stats["truncated"] == {"source": 1, "target": 1}
    assert stats["records_read"] == 43 and stats["records_written"]["train"] == 42
    # max_length_factor: 0 turns the rule off: the runaway line is cut, and only its kept tokens count.
    stats = run(data, tmp_path / "off", config("preprocess.eval_fraction=0", "preprocess.max_length_factor=0"))
    assert stats["rejected_total"] == 0 and stats["truncated"]["source"] == 2
    assert set(vocab(tmp_path / "off", "source")) >= {f"x{i}" for i in range(32)}
    assert stats["vocabulary_size"]["source"] == 4 + 26 + 32 + 32


def test_max_length_factor_is_validated():
    assert config().preprocess.max_length_factor == 4
    with pytest.raises(ConfigError, match="max_length_factor"):
        config("preprocess.max_length_factor=-1")


# --------------------------------------------------------------------------------------------
# 5. Invisible sides, whitespace-only lines, and the original bytes of a rejected record
# --------------------------------------------------------------------------------------------

def test_invisible_character_class_matches_unicode():
    """INVISIBLE = Cc, Cf, Z*, whitespace and Default_Ignorable_Code_Point, checked for every code point."""
    ignorable = [(0xAD, 0xAD), (0x34F, 0x34F), (0x61C, 0x61C), (0x115F, 0x1160), (0x17B4, 0x17B5),
                 (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
                 (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
                 (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF)]
    expected = {cp for a, b in ignorable for cp in range(a, b + 1)}
    expected |= {cp for cp in range(sys.maxunicode + 1)
                 if unicodedata.category(chr(cp)) in ("Cc", "Cf", "Zs", "Zl", "Zp") or chr(cp).isspace()}
    found = {cp for cp in range(sys.maxunicode + 1) if inputs.is_invisible(chr(cp) * 2)}
    assert found == expected
    assert inputs.is_invisible("\u200b\u200d\ufeff \u2060") and not inputs.is_invisible("\u200ba")


def test_invisible_sides_are_empty_and_blank_lines_are_blank_in_every_format(tmp_path):
    data = tmp_path / "data"
    write_lines(data / "a.tsv", [
        "one\teins",                     # 1
        "\u200b\tzero width space",      # 2 empty_side
        "zero width joiner\t\u200d",     # 3 empty_side
        "\ufeff\u2060\u00ad\tformat",    # 4 empty_side (BOM, word joiner, soft hyphen)
        "   ",                           # 5 blank
        "\t",                            # 6 blank
        " \u3000 \t ",                   # 7 blank (Unicode whitespace too)
        b"bad \xff\xfe bytes\tx",        # 8 invalid_utf8
        "nul\x00here\tx",                # 9 nul_byte
        "two\tzwei",                     # 10
    ])
    write_lines(data / "b.jsonl", [
        json.dumps({"source": "three", "target": "drei"}),        # 1
        "  \t ",                                                 # 2 blank
        json.dumps({"source": "\u200b\u200c", "target": "x"}),   # 3 empty_side
        json.dumps({"source": "four", "target": "vier"}),        # 4
    ])
    write_lines(data / "c.csv", ["source,target", "five,fünf", "  ,  ", ",", "\u2063,x"])  # 3, 4 blank; 5 empty
    write_lines(data / "d.src", ["six", "  ", "\u200b"])
    write_lines(data / "d.tgt", ["sechs", " ", "y"])  # 2 blank; 3 empty_side
    out = tmp_path / "out"
    stats = run(data, out, config("preprocess.eval_fraction=0", "preprocess.max_rejected_fraction=1.0"))
    found = [(r["file"].rsplit("/", 1)[-1], r["line"], r["reason"]) for r in quarantine(out)]
    assert found == [
        ("a.tsv", 2, "empty_side"), ("a.tsv", 3, "empty_side"), ("a.tsv", 4, "empty_side"),
        ("a.tsv", 8, "invalid_utf8"), ("a.tsv", 9, "nul_byte"),
        ("b.jsonl", 3, "empty_side"), ("c.csv", 5, "empty_side"), ("d.src", 3, "empty_side"),
    ]
    assert sorted(r["source_text"] for r in read_examples(out)) == ["five", "four", "one", "six", "three", "two"]
    assert stats["blank_lines"] == 3 + 1 + 2 + 1
    assert stats["records_read"] == 14 == stats["records_written"]["train"] + stats["rejected_total"]
    # The original bytes come back exactly from raw_base64; raw keeps showing them readably.
    rows = {r["line"]: r for r in quarantine(out) if r["file"].endswith("a.tsv")}
    assert rows[8]["raw"].startswith("bad \ufffd\ufffd bytes")
    assert base64.b64decode(rows[8]["raw_base64"]) == b"bad \xff\xfe bytes\tx"
    assert base64.b64decode(rows[9]["raw_base64"]) == b"nul\x00here\tx"
    assert "raw_base64" not in rows[2]  # raw already holds it exactly


def test_raw_base64_keeps_the_whole_record_when_raw_is_cut():
    line = b"\xff" + b"x" * 2000 + b"\ty"
    reject = inputs.parse_tsv_line(line, "f.tsv", 7)
    row = json.loads(reject.to_json())
    assert row["reason"] == "invalid_utf8" and len(row["raw"]) == 500
    assert base64.b64decode(row["raw_base64"]) == line
    assert zlib.crc32(base64.b64decode(row["raw_base64"])) == zlib.crc32(line)


# --------------------------------------------------------------------------------------------
# 7. An eval split that leaves the train split nothing: one line naming preprocess.eval_fraction, exit 2
# --------------------------------------------------------------------------------------------

def _all_eval_corpus(tmp_path):
    """30 pairs that preprocess.eval_fraction=0.99 all puts in the eval split (the split is by digest)."""
    return write_lines(tmp_path / "c.tsv", [f"source words {i} here\ttarget words {i}" for i in range(1, 31)])


def test_an_eval_fraction_leaving_no_train_words_is_one_config_error_from_the_worker(tmp_path):
    """The piece learner (a Beam step) gets no train words: a ConfigError naming the key and the
    counts, with no step annotation."""
    data = _all_eval_corpus(tmp_path)
    with pytest.raises(ConfigError) as err:
        run(data, tmp_path / "out", config("preprocess.tokenizer=subword", "preprocess.eval_fraction=0.99"))
    message = str(err.value)
    assert message.startswith("preprocess.eval_fraction=0.99 leaves no train words"), message
    assert "(train words: source 0, target 0)" in message and "while running" not in message
    assert err.value.exit_code == 2
    _no_output(tmp_path)
    # A whitespace tokenizer learns nothing: the count check after the job says the same.
    with pytest.raises(ConfigError, match=r"preprocess.eval_fraction=0.99 leaves no training examples \(30 eval"):
        run(data, tmp_path / "out", config("preprocess.eval_fraction=0.99"))
    _no_output(tmp_path)


def test_a_worker_user_error_reported_as_text_keeps_its_class():
    """Multi-process and remote runners report a worker's exception as text inside their own."""
    from components.preprocess.job import worker_user_error

    text = ("Pipeline failed: Traceback ...\ncomponents.core.config.ConfigError: preprocess.eval_fraction=0.99 "
            "leaves no train words [while running 'LearnPieces']\n")
    error = worker_user_error(RuntimeError(text))
    assert type(error) is ConfigError and str(error) == "preprocess.eval_fraction=0.99 leaves no train words"
    error = worker_user_error(RuntimeError("components.core.errors.InputError: a.gz: ends early\\nmore"))
    assert type(error) is InputError and str(error) == "a.gz: ends early"
    assert worker_user_error(RuntimeError("ValueError: max() arg is an empty sequence")) is None


def test_seq2seq_preprocess_with_eval_fraction_099_exits_2_with_one_line(tmp_path):
    data = _all_eval_corpus(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "preprocess", "--data", str(data),
                           "--out", str(tmp_path / "out"), "--set", "preprocess.eval_fraction=0.99"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line or "Traceback" in line]
    assert len(errors) == 1 and "preprocess.eval_fraction=0.99" in errors[0], proc.stderr[-3000:]
    assert "max() arg is an empty sequence" not in proc.stderr and "Traceback" not in proc.stderr
