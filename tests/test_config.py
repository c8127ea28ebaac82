"""Config: YAML defaults, --set overrides, strict keys and values."""
import pytest

from pipeline.config import ConfigError, PipelineConfig, load_config, read_config, write_config


def test_defaults_load_and_are_typed():
    config = load_config()
    assert isinstance(config, PipelineConfig)
    assert config.preprocess.tokenizer == "subword"  # the quality recipe: core-op WordPiece
    assert config.model.attention == "bahdanau" and config.model.bidirectional is True
    assert config.trainer.select_by == "chrf" and config.trainer.max_minutes == 10.0
    assert config.preprocess.max_vocab_size is None


def test_set_overrides_are_coerced_to_the_field_type():
    config = load_config(overrides=[
        "preprocess.tokenizer=wordpiece", "preprocess.max_source_length=7",
        "preprocess.eval_fraction=0.25", "preprocess.min_frequency=2",
        "preprocess.max_vocab_size=100", "trainer.learning_rate=1e-3", "preprocess.lowercase=true",
    ])
    p = config.preprocess
    assert (p.tokenizer, p.max_source_length, p.eval_fraction, p.min_frequency, p.max_vocab_size) == (
        "wordpiece", 7, 0.25, 2, 100)
    assert config.trainer.learning_rate == pytest.approx(0.001)
    assert p.lowercase is True


@pytest.mark.parametrize("override, named", [
    ("preprocess.tokeniser=whitespace", "preprocess.tokeniser"),
    ("prepro.tokenizer=whitespace", "prepro.tokenizer"),
    ("preprocess.max_source_length=abc", "preprocess.max_source_length"),
    ("preprocess.tokenizer=bpe", "preprocess.tokenizer"),
    ("preprocess.eval_fraction=1.5", "preprocess.eval_fraction"),
    ("model.attention=dot", "model.attention"),
    ("model.dropout=1.0", "model.dropout"),
    ("model.word_dropout=-0.1", "model.word_dropout"),
    ("model.bidirectional=maybe", "model.bidirectional"),
    ("trainer.label_smoothing=1", "trainer.label_smoothing"),
    ("trainer.select_by=accuracy", "trainer.select_by"),
    ("trainer.select_sample=0", "trainer.select_sample"),
])
def test_bad_keys_and_values_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(overrides=[override])


def test_config_file_is_merged_and_unknown_file_keys_fail(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("trainer:\n  epochs: 3\n")
    assert load_config(str(good)).trainer.epochs == 3
    assert load_config(str(good)).trainer.batch_size == 64  # untouched keys keep defaults
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match=r"trainer\.epoch\b"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_snapshot_round_trips(tmp_path):
    config = load_config(overrides=["model.units=17", "preprocess.max_vocab_size=null"])
    write_config(config, str(tmp_path))
    assert read_config(str(tmp_path)) == config


@pytest.mark.parametrize("text, named", [
    ("trainer: 5\n", "trainer: expected a mapping"),
    ("trainer: [[epochs, 3]]\n", "trainer: expected a mapping"),
    ("trainer: fast\n", "trainer: expected a mapping"),
    ("trainer:\n  1: 3\n", "key 1 is not a name"),
    ("- trainer\n", "top level must be a mapping"),
    ("7: {}\n", "key 7 is not a name"),
])
def test_malformed_config_files_are_config_errors_with_exit_2(tmp_path, text, named):
    from pipeline.cli import main

    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=named):
        load_config(str(path))
    assert main(["train", "--examples", str(tmp_path), "--out", str(tmp_path / "o"), "--config", str(path)]) == 2


def test_a_binary_file_or_a_directory_as_config_is_a_config_error(tmp_path):
    binary = tmp_path / "model.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00")
    with pytest.raises(ConfigError, match="model.bin"):
        load_config(str(binary))
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(str(tmp_path))


@pytest.mark.parametrize("override, named", [
    ("trainer.learning_rate=nan", "finite"),
    ("trainer.learning_rate=.inf", "finite"),
    ("evaluator.tolerance=nan", "finite"),
    ("evaluator.tolerance=-1", "must not be negative"),
    ("evaluator.min_bleu=-0.5", r"\[0, 100\]"),
    ("trainer.clip_norm=-1", "must not be negative"),
    ("trainer.shuffle_buffer=-5", "must not be negative"),
    ("trainer.warmup_steps=-1", "must not be negative"),
    ("trainer.early_stopping_patience=-2", "must not be negative"),
    ("preprocess.source_field=", "must not be empty"),
    ("preprocess.target_field=source", "must differ"),
])
def test_non_finite_and_negative_values_are_refused(override, named):
    with pytest.raises(ConfigError, match=named):
        load_config(overrides=[override])


def test_export_decode_length_is_checked_with_the_config():
    from components.core.config import MAX_DECODE_LENGTH_LIMIT

    assert load_config(overrides=[f"export.max_decode_length={MAX_DECODE_LENGTH_LIMIT}"]).export.max_decode_length \
        == MAX_DECODE_LENGTH_LIMIT
    for bad in (0, MAX_DECODE_LENGTH_LIMIT + 1):
        with pytest.raises(ConfigError, match=r"export\.max_decode_length"):
            load_config(overrides=[f"export.max_decode_length={bad}"])


# ------------------------------------------------- preprocess.vocab_pieces, formerly wordpiece_vocab_size

def test_the_old_piece_size_key_is_read_with_one_warning_naming_the_new(tmp_path, caplog):
    config = load_config(overrides=["preprocess.wordpiece_vocab_size=123"])
    assert config.preprocess.vocab_pieces == 123
    assert "preprocess.wordpiece_vocab_size is deprecated, use preprocess.vocab_pieces" in caplog.text
    path = tmp_path / "c.yaml"
    path.write_text("preprocess:\n  wordpiece_vocab_size: 77\n")
    assert load_config(str(path)).preprocess.vocab_pieces == 77  # over default.yaml's new key: no conflict
    assert load_config(str(path), ["preprocess.vocab_pieces=5"]).preprocess.vocab_pieces == 5  # --set wins
    assert load_config().preprocess.vocab_pieces == 4000  # pipeline/default.yaml, under the new name
    snapshot = write_config(load_config(overrides=["preprocess.vocab_pieces=9"]), str(tmp_path))
    text = open(snapshot).read()
    assert "vocab_pieces: 9" in text and "wordpiece_vocab_size" not in text
    # A snapshot an older version wrote (an artifact's config.yaml) reads the same, without the warning.
    caplog.clear()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text(text.replace("vocab_pieces: 9", "wordpiece_vocab_size: 9"))
    assert read_config(str(tmp_path / "old")).preprocess.vocab_pieces == 9
    assert "deprecated" not in caplog.text


def test_the_old_and_new_piece_size_keys_at_once_are_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="wordpiece_vocab_size and preprocess.vocab_pieces are the same key") as e:
        load_config(overrides=["preprocess.vocab_pieces=10", "preprocess.wordpiece_vocab_size=20"])
    assert e.value.exit_code == 2
    path = tmp_path / "both.yaml"
    path.write_text("preprocess:\n  vocab_pieces: 10\n  wordpiece_vocab_size: 20\n")
    with pytest.raises(ConfigError, match=f"config file {path}: preprocess.wordpiece_vocab_size and"):
        load_config(str(path))
