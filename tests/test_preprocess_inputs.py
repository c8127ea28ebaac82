"""Reading and validating: every input format, every bad-record kind, quarantine and conservation."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.core.errors import InputError
from components.preprocess import inputs
from tests.preprocess_helpers import config, quarantine, read_examples, run, vocab, write_lines

LONG = " ".join(f"w{i}" for i in range(12))  # 12 tokens


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    """One TSV and one JSONL file holding every kind of bad record next to good ones."""
    root = tmp_path_factory.mktemp("bad")
    write_lines(root / "corpus.tsv", [
        "good one\tgut eins",                      # 1
        "only one column",                         # 2 wrong_column_count
        "a\tb\tc",                                 # 3 wrong_column_count
        "   \tleer",                               # 4 empty_side
        b"bad \xff\xfe bytes\tx",                  # 5 invalid_utf8
        "nul\x00here\tx",                          # 6 nul_byte
        "",                                        # 7 blank line: skipped, counted
        "good two\tgut zwei\r",                    # 8 CRLF accepted
        f"{LONG}\tkurz",                           # 9 source_too_long (limit 10)
        f"short\t{LONG}",                          # 10 target_too_long (limit 10 - 2)
        "\u3000\u00a0\tideographic space only",    # 11 empty_side
        "good three\tgut drei",                    # 12
    ])
    write_lines(root / "more.jsonl", [
        json.dumps({"source": "good four", "target": "gut vier"}),  # 1
        "{not json",                                                # 2 malformed_record
        json.dumps({"source": "no target"}),                        # 3 missing_field
        json.dumps({"source": "numeric", "target": 7}),             # 4 missing_field
        json.dumps(["a", "list"]),                                  # 5 malformed_record
    ])
    out = root / "out"
    cfg = config("preprocess.length_policy=reject", "preprocess.max_source_length=10",
                 "preprocess.max_target_length=10", "preprocess.max_rejected_fraction=1.0",
                 "preprocess.eval_fraction=0")
    stats = run(root / "*.*", out, cfg)
    return root, out, stats


def test_every_bad_record_lands_in_quarantine_with_its_reason(bad_corpus):
    root, out, _ = bad_corpus
    found = [(r["file"].rsplit("/", 1)[-1], r["line"], r["reason"]) for r in quarantine(out)]
    assert found == [
        ("corpus.tsv", 2, "wrong_column_count"), ("corpus.tsv", 3, "wrong_column_count"),
        ("corpus.tsv", 4, "empty_side"), ("corpus.tsv", 5, "invalid_utf8"), ("corpus.tsv", 6, "nul_byte"),
        ("corpus.tsv", 9, "source_too_long"), ("corpus.tsv", 10, "target_too_long"),
        ("corpus.tsv", 11, "empty_side"),
        ("more.jsonl", 2, "malformed_record"), ("more.jsonl", 3, "missing_field"),
        ("more.jsonl", 4, "missing_field"), ("more.jsonl", 5, "malformed_record"),
    ]
    raw = {r["line"]: r["raw"] for r in quarantine(out) if r["file"].endswith(".tsv")}
    assert raw[2].startswith("only one column")
    assert "\x00" not in raw[6] and "\\x00" in raw[6]
    assert raw[5].startswith("bad \ufffd")


def test_counts_are_conserved_and_reported_by_reason(bad_corpus):
    _, out, stats = bad_corpus
    assert stats["records_read"] == 16  # 12 TSV lines minus 1 blank, plus 5 JSONL lines
    assert stats["blank_lines"] == 1
    assert stats["records_written"] == {"train": 4, "eval": 0, "test": 0}
    assert {k: v for k, v in stats["rejected"].items() if v} == {
        "wrong_column_count": 2, "empty_side": 2, "invalid_utf8": 1, "nul_byte": 1,
        "source_too_long": 1, "target_too_long": 1, "malformed_record": 2, "missing_field": 2}
    assert stats["records_read"] == sum(stats["records_written"].values()) + sum(stats["rejected"].values())
    texts = sorted((r["source_text"], r["target_text"]) for r in read_examples(out))
    assert texts == [("good four", "gut vier"), ("good one", "gut eins"), ("good three", "gut drei"),
                     ("good two", "gut zwei")]
    # Rejected records never reach the vocabulary.
    assert "w0" not in vocab(out, "source") and "leer" not in vocab(out, "target")


def test_too_many_rejects_fail_naming_reasons_and_quarantine(tmp_path):
    data = write_lines(tmp_path / "c.tsv", ["ok\tok"] * 3 + ["one column"] * 2)
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"2 of 5 records rejected.*wrong_column_count=2.*quarantine") as err:
        run(data, out, config("preprocess.eval_fraction=0"))
    assert not out.exists()
    failed = tmp_path / "out.failed"
    assert str(failed / "quarantine") in str(err.value)
    assert [r["reason"] for r in quarantine(failed)] == ["wrong_column_count"] * 2


def test_truncation_keeps_the_first_tokens(tmp_path):
    data = write_lines(tmp_path / "c.tsv", ["a b c d e\tv w x y z", "a b\tv"])
    out = tmp_path / "out"
    stats = run(data, out, config("preprocess.max_source_length=3", "preprocess.max_target_length=4",
                                  "preprocess.eval_fraction=0"))
    assert stats["truncated"] == {"source": 1, "target": 1}
    assert stats["lengths"]["source"]["max"] == 5  # lengths are measured before truncation
    rows = {r["source_text"]: r for r in read_examples(out)}
    src, tgt = vocab(out, "source"), vocab(out, "target")
    long = rows["a b c d e"]
    assert [src[i] for i in long["source_ids"]] == ["a", "b", "c"] and long["source_length"] == 3
    assert [tgt[i] for i in long["target_input"]] == ["<bos>", "v", "w", "<eos>"]
    assert [tgt[i] for i in long["target_output"]] == ["v", "w", "<eos>", "<pad>"]
    assert long["target_length"] == 3


def _pairs(tag, n=3):
    return [(f"{tag} source {i}, with comma", f"{tag} 목표 {i}") for i in range(n)]


def test_every_format_is_read(tmp_path):
    data = tmp_path / "data"
    expected = {}
    tsv = _pairs("tsv")
    write_lines(data / "a.tsv", [f"{s}\t{t}" for s, t in tsv])
    gz = _pairs("tsvgz")
    write_lines(data / "b.tsv.gz", [f"{s}\t{t}" for s, t in gz], compress=True)
    csv_pairs = _pairs("csv") + [("csv quoted \"line\"", "csv 여러\n줄")]
    rows = ["id,src,tgt"] + [f'{i},"{s.replace(chr(34), chr(34) * 2)}","{t}"' for i, (s, t) in enumerate(csv_pairs)]
    write_lines(data / "c.csv", rows)
    jsonl = _pairs("jsonl")
    write_lines(data / "d.jsonl.gz", [json.dumps({"src": s, "tgt": t, "extra": 1}, ensure_ascii=False)
                                      for s, t in jsonl], compress=True)
    parquet = _pairs("parquet", 5)
    pq.write_table(pa.table({"src": [s for s, _ in parquet], "tgt": [t for _, t in parquet]}),
                   data / "e.parquet", row_group_size=2)
    aligned = _pairs("aligned")
    write_lines(data / "f.en", [s for s, _ in aligned])
    write_lines(data / "f.ko", [t for _, t in aligned])
    aligned_gz = _pairs("alignedgz")
    write_lines(data / "g.en.gz", [s for s, _ in aligned_gz], compress=True)
    write_lines(data / "g.ko.gz", [t for _, t in aligned_gz], compress=True)
    for pairs in (tsv, gz, csv_pairs, jsonl, parquet, aligned, aligned_gz):
        expected.update(dict(pairs))
    out = tmp_path / "out"
    stats = run(data, out, config("preprocess.source_field=src", "preprocess.target_field=tgt",
                                  "preprocess.source_suffix=.en", "preprocess.target_suffix=.ko",
                                  "preprocess.eval_fraction=0"))
    got = {r["source_text"]: r["target_text"] for r in read_examples(out)}
    # The texts come back normalized: whitespace runs (the CSV newline too) become one space.
    assert got == {s: " ".join(t.split()) for s, t in expected.items()}
    assert stats["records_read"] == len(expected) and stats["rejected_total"] == 0


def test_bom_crlf_and_an_explicit_format(tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_bytes(b"\xef\xbb\xbfhello there\thallo\r\nsecond line\tzweite\r\n")
    out = tmp_path / "out"
    with pytest.raises(InputError, match="corpus.txt.*cannot tell the format"):
        run(data, out, config())
    stats = run(data, out, config("preprocess.format=tsv", "preprocess.eval_fraction=0"))
    assert stats["records_written"]["train"] == 2
    assert vocab(out, "source")[4:] == ["hello", "line", "second", "there"]  # no BOM, no \r
    assert vocab(out, "target")[4:] == ["hallo", "zweite"]


def test_aligned_files_with_different_lengths_reject_the_extra_lines(tmp_path):
    write_lines(tmp_path / "x.src", ["one", "two", "three"])
    write_lines(tmp_path / "x.tgt", ["eins", "zwei"])
    out = tmp_path / "out"
    stats = run(tmp_path / "x.*", out, config("preprocess.eval_fraction=0", "preprocess.max_rejected_fraction=0.5"))
    assert [(r["line"], r["reason"]) for r in quarantine(out)] == [(3, "malformed_record")]
    assert stats["records_written"]["train"] == 2


def test_byte_ranges_number_lines_exactly(tmp_path, monkeypatch):
    """A file split into many tiny ranges: every record read once, quarantine lines exact."""
    monkeypatch.setattr(inputs, "MIN_RANGE_BYTES", 0)
    monkeypatch.setattr(inputs, "RANGES_PER_FILE_TARGET", 40)
    lines = []
    for i in range(1, 301):
        lines.append(f"bad line {i}" if i % 37 == 0 else f"src {i} {'x' * (i % 7)}\ttgt {i}")
    data = write_lines(tmp_path / "big.tsv", lines)
    units = inputs.resolve_inputs(str(data), config().preprocess)
    assert len(units) >= 30 and all(u.splittable for u in units)
    out = tmp_path / "out"
    stats = run(data, out, config("preprocess.eval_fraction=0"))
    assert [r["line"] for r in quarantine(out)] == [i for i in range(1, 301) if i % 37 == 0]
    assert all(r["raw"].startswith(f"bad line {r['line']}") for r in quarantine(out))
    sources = sorted(r["source_text"] for r in read_examples(out))
    assert sources == sorted(f"src {i} {'x' * (i % 7)}".strip() for i in range(1, 301) if i % 37)
    assert stats["records_read"] == 300


def test_parquet_row_groups_are_read_units_and_rows_are_numbered_exactly(tmp_path, monkeypatch):
    """A Parquet file split into runs of row groups: every row read once, quarantine rows exact."""
    monkeypatch.setattr(inputs, "MIN_RANGE_BYTES", 0)
    monkeypatch.setattr(inputs, "RANGES_PER_FILE_TARGET", 40)
    sources = [None if i % 7 == 0 else f"src {i}" for i in range(1, 23)]
    pq.write_table(pa.table({"src": sources, "tgt": [f"tgt {i}" for i in range(1, 23)]}),
                   tmp_path / "big.parquet", row_group_size=3)
    cfg = config("preprocess.source_field=src", "preprocess.target_field=tgt", "preprocess.eval_fraction=0",
                 "preprocess.max_rejected_fraction=0.5")
    units = inputs.resolve_inputs(str(tmp_path / "big.parquet"), cfg.preprocess)
    assert [(u.start, u.end) for u in units] == [(g, g + 1) for g in range(8)]
    assert not any(u.splittable for u in units)  # no newline counting for row groups
    out = tmp_path / "out"
    stats = run(tmp_path / "big.parquet", out, cfg)
    assert [r["line"] for r in quarantine(out)] == [7, 14, 21]
    assert sorted(r["source_text"] for r in read_examples(out)) == sorted(s for s in sources if s)
    assert stats["records_read"] == 22


def test_unreadable_parquet_or_missing_column_fails_before_the_job_names_the_file(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match=r"bad.parquet: not a readable Parquet file \(.*magic bytes"):
        run(tmp_path / "bad.parquet", tmp_path / "out1")
    pq.write_table(pa.table({"en": ["a"], "ko": ["b"]}), tmp_path / "cols.parquet")
    with pytest.raises(InputError, match=r"cols.parquet: the Parquet columns \['en', 'ko'\] have no column 'source'"):
        run(tmp_path / "cols.parquet", tmp_path / "out2")
    assert not list(tmp_path.glob("out*"))


@pytest.mark.parametrize("path, message", [
    ("{tmp}/does/not/exist.tsv", "does/not/exist.tsv: path does not exist"),
    ("{tmp}/*.nothing", r"\*.nothing: glob matches no files"),
])
def test_missing_input_fails_before_the_job_starts(tmp_path, path, message):
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message):
        run(path.format(tmp=tmp_path), out)
    assert not out.exists() and not list(tmp_path.glob("out*"))


def test_aligned_file_without_partner_is_an_input_error(tmp_path):
    write_lines(tmp_path / "lonely.src", ["hi"])
    with pytest.raises(InputError, match=r"lonely.src: no matching .*lonely.tgt"):
        run(tmp_path, tmp_path / "out")


def test_csv_rows_with_bad_bytes_are_quarantined_and_a_missing_column_fails_first(tmp_path):
    data = tmp_path / "c.csv"
    data.write_bytes(b"source,target\r\nfine,gut\r\nbad \xff byte,x\r\n\"multi\nline\",zwei\r\nlast,letzte\r\n")
    out = tmp_path / "out"
    stats = run(data, out, config("preprocess.eval_fraction=0", "preprocess.max_rejected_fraction=0.5"))
    assert [(r["line"], r["reason"]) for r in quarantine(out)] == [(3, "invalid_utf8")]
    assert quarantine(out)[0]["raw"].startswith("bad \ufffd byte")
    assert sorted(r["source_text"] for r in read_examples(out)) == ["fine", "last", "multi line"]
    assert stats["records_read"] == 4
    (tmp_path / "d.csv").write_text("en,ko\nhello,안녕\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"d.csv: the CSV header \['en', 'ko'\] has no column 'source'"):
        run(tmp_path / "d.csv", tmp_path / "out2")
