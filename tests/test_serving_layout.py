"""Model names and languages, and the multi-model serving layout (ARTIFACTS/serving/<name>/<version>/).

The pipeline runs that push under names, refuse another pair and move the old layout are in
tests/test_pipeline_run.py; these are the rules underneath, on real folders.
"""
import pytest
from tf_serving_config import parse_models_config

from components.core.artifacts import ModelNameError, ServingModels
from components.core.config import ConfigError
from components.core.languages import Languages, infer_languages, model_name, resolve_languages
from pipeline.config import load_config


@pytest.mark.parametrize("data, suffixes, pair, origin", [
    ("../shared/data/dev-en-ko.tsv", ("", ""), ("en", "ko"), "corpus name dev-en-ko.tsv"),
    ("corpora/europarl.de_en", ("", ""), ("de", "en"), "corpus name europarl.de_en"),
    ("data/en-ko/train.tsv", ("", ""), ("en", "ko"), "corpus name en-ko"),
    ("data/en-ko/", ("", ""), ("en", "ko"), "corpus name en-ko"),
    ("aligned/train", (".en", ".ko"), ("en", "ko"), "aligned files' suffixes .en and .ko"),
])
def test_the_corpus_name_gives_the_language_pair(data, suffixes, pair, origin):
    assert infer_languages(data, *suffixes) == Languages(*pair, origin)


@pytest.mark.parametrize("data", ["data/raw", "corpus.tsv", "dev-set.tsv", "data/*-en-ko.tsv", "en-en.tsv"])
def test_a_name_without_a_pair_of_language_codes_gives_none(data):
    """`dev` is no ISO 639-1 code, a glob is not parsed, and a pair needs two different languages."""
    assert not infer_languages(data, ".src", ".tgt").known


def test_configured_languages_win_over_the_corpus_name():
    preprocess = load_config(None, ["preprocess.source_language=pt-BR", "preprocess.target_language=en"]).preprocess
    assert resolve_languages(preprocess, "dev-en-ko.tsv") == Languages("pt-BR", "en", "config")
    assert resolve_languages(load_config(None).preprocess, "dev-en-ko.tsv").pair == "en-ko"


def test_the_model_name_is_the_configured_one_else_the_pair_else_default():
    assert model_name("support", Languages("en", "ko", "config")) == "support"
    assert model_name(None, Languages("en", "ko", "config")) == "en-ko"
    assert model_name(None, Languages()) == "default"


@pytest.mark.parametrize("override, message", [
    ("preprocess.source_language=en", "preprocess.source_language: needs preprocess.target_language too"),
    ("preprocess.target_language=en us", "preprocess.target_language: must be a language code"),
    ("pusher.model_name='12'", "pusher.model_name: must be 1 to 64 letters"),
    ("pusher.model_name=en/ko", "pusher.model_name: must be 1 to 64 letters"),
])
def test_bad_languages_and_model_names_are_config_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(None, [override])


def test_the_same_language_on_both_sides_is_a_config_error():
    with pytest.raises(ConfigError, match="preprocess.target_language: must differ"):
        load_config(None, ["preprocess.source_language=en", "preprocess.target_language=EN"])


def _version(root, *parts):
    """A folder that ServingRoot counts as a complete SavedModel (saved_model.pb and variables/)."""
    folder = root.joinpath(*parts)
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"")
    return folder


def test_models_config_lists_every_name_with_a_version(tmp_path):
    root = tmp_path / "serving"
    _version(root, "en-ko", "1")
    _version(root, "en-ko", "3")
    _version(root, "de-en", "2")
    (root / "empty").mkdir()  # a name with no version yet: TF Serving would wait for it forever
    models = ServingModels(str(root))
    assert models.names() == ["de-en", "en-ko"]
    assert models.served() == {"de-en": 2, "en-ko": 3}
    path = models.write_models_config()
    assert path == str(root / "models.config")
    assert parse_models_config((root / "models.config").read_text()) == [
        ("de-en", str(root / "de-en"), "tensorflow"), ("en-ko", str(root / "en-ko"), "tensorflow")]
    assert not list(root.glob("models.config.tmp*"))  # written to a temporary name, then renamed


def test_the_old_layout_moves_under_a_name_keeping_its_numbers(tmp_path):
    root = tmp_path / "serving"
    _version(root, "1")
    _version(root, "4")
    (root / "notes.txt").write_text("not a version")
    models = ServingModels(str(root))
    assert models.legacy_versions() == [1, 4]
    assert models.migrate("en-ko") == [1, 4]
    assert models.legacy_versions() == [] and models.served() == {"en-ko": 4}
    assert sorted(p.name for p in (root / "en-ko").iterdir()) == ["1", "4"]
    assert (root / "notes.txt").exists()


def test_a_migration_that_would_overwrite_a_version_is_refused(tmp_path):
    root = tmp_path / "serving"
    _version(root, "2")
    _version(root, "en-ko", "2")
    with pytest.raises(Exception, match=r"cannot move .*/serving/2 to .*/serving/en-ko/2: it exists"):
        ServingModels(str(root)).migrate("en-ko")
    assert (root / "2" / "saved_model.pb").exists()


@pytest.mark.parametrize("name", ["12", "a/b", "", ".hidden"])
def test_a_model_folder_needs_a_name_that_is_not_a_version(tmp_path, name):
    with pytest.raises(ModelNameError):
        ServingModels(str(tmp_path)).model(name)
