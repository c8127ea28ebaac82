"""preprocess.protected_spans regexes are checked with RE2 itself at config load (issue 21, item 4):
a regex Python's `re` reads but RE2 (TensorFlow's regex ops, which mask the spans in the graph)
rejects is exit 2 with one line naming the key and the construct, before any Beam job starts.
"""
import subprocess
import sys

import pytest
import tensorflow as tf

from pipeline.config import ConfigError, load_config
from tests.preprocess_helpers import REPO

# Each: a regex Python compiles, and the words of RE2's reason naming its construct.
REJECTED = [
    ("ID(?=-[0-9])", "invalid perl operator: (?="),
    ("ID(?!x)", "invalid perl operator: (?!"),
    ("(?<=#)[0-9]+", "invalid perl operator: (?<="),
    ("(?<!#)[0-9]+", "invalid perl operator: (?<!"),
    ("a++", "bad repetition operator: ++"),
    ("(?>ab|a)c", "invalid perl operator: (?>"),
    ("x{2000}", "invalid repetition size: {2000}"),
    ("(?:x{1000}){1000}", "invalid repetition size: {1000}"),  # each count is allowed, the product is not
]


@pytest.mark.parametrize("regex, construct", REJECTED)
def test_a_regex_re2_rejects_fails_config_validation_naming_the_construct(regex, construct):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"preprocess.protected_spans=[printf, '{regex}']"])
    message = str(err.value)
    assert message.startswith("preprocess.protected_spans: ")
    assert repr(regex) in message and construct in message and "RE2" in message
    assert "\n" not in message


@pytest.mark.parametrize("regex, construct", REJECTED[:2])
def test_the_rejected_regexes_are_the_ones_the_graph_cannot_run(regex, construct):
    """The check agrees with TensorFlow's own RE2: what it refuses, regex_replace refuses too."""
    with pytest.raises(tf.errors.InvalidArgumentError, match="Invalid pattern"):
        tf.strings.regex_replace(tf.constant(["ID-1"]), regex, "x")


def test_an_re2_regex_with_a_large_count_still_loads():
    config = load_config(None, ["preprocess.protected_spans=['ID-[0-9]{1,1000}', '\\$\\{[A-Z_]+\\}']"])
    assert config.preprocess.protected_spans == ("ID-[0-9]{1,1000}", "\\$\\{[A-Z_]+\\}")


def test_seq2seq_preprocess_exits_2_with_one_line_before_the_beam_job(tmp_path):
    data = tmp_path / "c.tsv"
    data.write_text("a %s\tb %s\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "preprocess", "--data", str(data), "--out", str(tmp_path / "out"),
         "--set", "preprocess.protected_spans=[printf, '(?<=#)[0-9]+']"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "preprocess.protected_spans" in lines[0] and "invalid perl operator: (?<=" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("out*"))
