"""Pusher: numbered versions, atomic publication, keep-N, never a partial version, never unblessed,
only the model evaluated, junk in serving/ ignored, one push at a time."""
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from components.core.artifacts import ExportedModel, ServingRoot, ServingRootError
from components.core.errors import ArtifactError
from components.core.lock import LockedError
from components.pusher import PARTIAL_PREFIX, PushLock, latest_version, run_push, versions


def blessing_of(model: str, blessed: bool = True) -> dict:
    """What the evaluator writes for MODEL: the verdict and the content fingerprint it judged."""
    return {"blessed": blessed, "reason": "test", "content_fingerprint": ExportedModel(model).content_fingerprint()}


class Upper(tf.Module):
    """A real (tiny) SavedModel with the serving signature's shape: text in, translation out."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, text):
        return {"translation": tf.strings.upper(text)}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "model")
    module = Upper()
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
    return path


def test_blessed_models_get_increasing_versions_and_old_ones_are_pruned(saved_model, tmp_path):
    serving = str(tmp_path / "serving")
    blessed = blessing_of(saved_model)
    pushed = [run_push(saved_model, serving, blessed, keep=2, record={"run_id": f"r{i}"}) for i in range(3)]
    assert pushed == [f"{serving}/1", f"{serving}/2", f"{serving}/3"]
    assert versions(serving) == [2, 3]
    assert latest_version(serving) == f"{serving}/3"
    assert ExportedModel(f"{serving}/3").push_record()["run_id"] == "r2"
    assert ExportedModel(f"{serving}/3").push_record()["version"] == 3
    assert ExportedModel(f"{serving}/3").push_record()["content_fingerprint"] == blessed["content_fingerprint"]
    # push.json (assets.extra/) is not content: the served copy keeps the evaluated fingerprint.
    assert ExportedModel(f"{serving}/3").content_fingerprint() == blessed["content_fingerprint"]
    assert sorted(os.listdir(serving)) == ["2", "3"]  # the lock is released with the push
    loaded = tf.saved_model.load(f"{serving}/3")
    assert loaded.signatures["serving_default"](text=tf.constant(["ab"]))["translation"].numpy()[0] == b"AB"


def test_unblessed_model_is_never_pushed(saved_model, tmp_path):
    serving = str(tmp_path / "serving")
    assert run_push(saved_model, serving, {"blessed": False, "reason": "worse"}, keep=3) is None
    assert not os.path.exists(serving) or versions(serving) == []


def test_a_copy_that_does_not_load_is_not_published(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a protobuf")
    serving = str(tmp_path / "serving")
    with pytest.raises(ArtifactError, match="does not load"):
        run_push(str(broken), serving, blessing_of(str(broken)), keep=3)
    assert versions(serving) == []
    assert os.listdir(serving) == []  # the failed copy is removed, and the lock released


@pytest.mark.slow
def test_kill_during_push_leaves_no_partial_version(saved_model, tmp_path):
    serving = tmp_path / "serving"
    blessed = blessing_of(saved_model)
    run_push(saved_model, str(serving), blessed, keep=5)
    marker = tmp_path / "copied"
    script = textwrap.dedent(f"""
        import time, pathlib
        from components.pusher import run_push
        def hang(partial):
            pathlib.Path({str(marker)!r}).write_text(partial)
            time.sleep(600)
        run_push({saved_model!r}, {str(serving)!r}, {blessed!r}, keep=5, before_publish=hang)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(600):
            if marker.exists() or proc.poll() is not None:
                break
            import time
            time.sleep(0.1)
        assert marker.exists(), "the push never reached the publish step"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    names = sorted(os.listdir(serving))
    assert "1" in names and "2" not in names
    assert any(n.startswith(PARTIAL_PREFIX) for n in names)  # the half-done copy is not a version
    assert ServingRoot.LOCK_NAME in names  # the dead push's lock: stale, taken over below
    assert versions(str(serving)) == [1]
    # The next push takes over the dead push's lock, cleans the leftover and takes the next number.
    assert run_push(saved_model, str(serving), blessed, keep=5) == f"{serving}/2"
    assert not any(n.startswith(PARTIAL_PREFIX) for n in os.listdir(serving))


class Lower(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, text):
        return {"translation": tf.strings.lower(text)}


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_a_model_replaced_after_its_evaluation_is_not_pushed(saved_model, tmp_path):
    """Before: the push trusted the evaluation's folder path and published whatever was there."""
    model = str(tmp_path / "model")
    shutil.copytree(saved_model, model)
    blessed = blessing_of(model)
    assert blessed["content_fingerprint"] == blessing_of(saved_model)["content_fingerprint"]  # a copy agrees
    shutil.rmtree(model)
    module = Lower()
    tf.saved_model.save(module, model, signatures={"serving_default": module.serve})  # e.g. a re-export
    replaced = ExportedModel(model).content_fingerprint()
    serving = tmp_path / "serving"
    with pytest.raises(ArtifactError) as refused:
        run_push(model, str(serving), blessed, keep=3)
    assert str(refused.value) == (f"{model} is not the model that was evaluated: its content fingerprint is "
                                  f"{replaced}, the blessing's is {blessed['content_fingerprint']}; evaluate it again, "
                                  "then push")
    assert not serving.exists()
    with pytest.raises(ArtifactError, match="records no content fingerprint"):  # a blessing from before them
        run_push(model, str(serving), {"blessed": True, "reason": "old"}, keep=3)
    # assets.extra/ (the push record) is not content; assets/ is.
    (tmp_path / "model" / "assets.extra").mkdir()
    (tmp_path / "model" / "assets.extra" / "note.txt").write_text("x")
    assert ExportedModel(model).content_fingerprint() == replaced
    (tmp_path / "model" / "assets" / "vocab.txt").write_text("x")
    assert ExportedModel(model).content_fingerprint() != replaced


def test_junk_in_the_serving_folder_is_named_once_and_never_pruned(saved_model, tmp_path, caplog):
    """Before: `²` made every listing raise ValueError, `007` made pruning remove serving/7 (NotFoundError)
    and a digit-named file counted as the newest version."""
    serving = tmp_path / "serving"
    shutil.copytree(saved_model, serving / "1")
    junk = {"007": "not a canonical version number", "²": "not a canonical version number",
            "20261203": "a file", "9": "not a complete SavedModel (saved_model.pb and variables/)",
            "5": "not a complete SavedModel (saved_model.pb and variables/)",
            "notes.txt": "not a canonical version number"}
    shutil.copytree(saved_model, serving / "007")
    (serving / "²").mkdir()
    (serving / "20261203").write_text("notes\n")
    (serving / "9").mkdir()
    (serving / "5").mkdir()
    shutil.copy(os.path.join(saved_model, "saved_model.pb"), serving / "5")  # no variables/
    (serving / "notes.txt").write_text("notes\n")
    root = ServingRoot(str(serving))
    with caplog.at_level(logging.WARNING):
        assert root.scan() == ([1], junk)
        assert root.versions() == [1] and root.latest() == ExportedModel(f"{serving}/1")
        assert root.versions() == [1]  # listed again: warned once
    warnings = [r.getMessage() for r in caplog.records if "serving folder" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(f"ignoring 6 entries of the serving folder {serving} that "
                                                         "are not versions: ")
    assert all(f"{name!r} ({why})" in warnings[0] for name, why in junk.items())
    # Above every all-digit name, as TF Serving reads them, so the new version is the one it serves.
    assert root.next_version() == 20261204

    blessed = blessing_of(saved_model)
    assert run_push(saved_model, str(serving), blessed, keep=1) == f"{serving}/20261204"
    assert run_push(saved_model, str(serving), blessed, keep=1) == f"{serving}/20261205"
    assert versions(str(serving)) == [20261205]
    assert sorted(os.listdir(serving)) == sorted([*junk, "20261205"])  # junk is never pruned


def test_a_file_named_as_the_serving_folder_is_a_usage_error(saved_model, tmp_path):
    serving = tmp_path / "serving"
    serving.write_text("not a folder")
    for call in (ServingRoot(str(serving)).versions, lambda: run_push(saved_model, str(serving),
                                                                        blessing_of(saved_model), keep=3)):
        with pytest.raises(ServingRootError) as refused:
            call()
        assert refused.value.exit_code == 2
        assert str(refused.value) == f"the serving folder {serving} is a file, not a folder; name a folder " \
                                     "(it is created if missing)"
    assert serving.read_text() == "not a folder"


def test_a_push_while_another_holds_the_serving_lock_is_refused(saved_model, tmp_path):
    """Before: the second push removed the first's copy as "left by an interrupted push"."""
    serving = tmp_path / "serving"
    run_push(saved_model, str(serving), blessing_of(saved_model), keep=5)
    with PushLock(str(serving), "/elsewhere/model", run_id="r1") as held:
        (serving / f"{PARTIAL_PREFIX}2-{os.getpid()}").mkdir()  # the holder's copy in progress
        with pytest.raises(LockedError) as refused:
            run_push(saved_model, str(serving), blessing_of(saved_model), keep=5)
        assert refused.value.exit_code == 4
        assert str(refused.value) == (
            f"another push holds {serving}/.push.lock: pid {os.getpid()} on {socket.gethostname()}, started "
            f"{held.info['started_at']} (pushing /elsewhere/model, run r1); wait for it to finish, or delete the "
            "lock file if that process is gone")
        assert (serving / f"{PARTIAL_PREFIX}2-{os.getpid()}").is_dir() and versions(str(serving)) == [1]


def test_a_dead_pushs_lock_is_taken_over(saved_model, tmp_path, caplog):
    serving = tmp_path / "serving"
    serving.mkdir()
    (serving / ".push.lock").write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                                    "model": "gone", "started_at": "2020-01-01T00:00:00Z"}))
    assert run_push(saved_model, str(serving), blessing_of(saved_model), keep=5) == f"{serving}/1"
    assert "taking over the stale lock" in caplog.text and "(pushing gone), is not running" in caplog.text
    assert sorted(os.listdir(serving)) == [".push.lock.takeover", "1"]


def _with_languages(saved_model: str, folder, source: str, target: str) -> str:
    """A copy of SAVED_MODEL whose card records a language pair (as `seq2seq export` writes it)."""
    shutil.copytree(saved_model, folder)
    (folder / "assets").mkdir(exist_ok=True)
    card = {"training_data": {"languages": {"source": source, "target": target, "from": "config"}}}
    (folder / "assets" / "model_card.json").write_text(json.dumps(card))
    return str(folder)


def test_a_model_of_another_language_pair_is_not_pushed_over_a_name(saved_model, tmp_path):
    """A name serves one pair (issue 23): en→de is refused over served en→ko, and models.config
    (rewritten after each push) lists the name with its absolute base path."""
    from tf_serving_config import parse_models_config

    from components.core.artifacts import ServingModels
    from components.pusher import LanguagePairError

    en_ko = _with_languages(saved_model, tmp_path / "en-ko-model", "en", "ko")
    en_de = _with_languages(saved_model, tmp_path / "en-de-model", "en", "de")
    models = ServingModels(str(tmp_path / "serving"))
    serving = models.model("en-ko").uri
    assert run_push(en_ko, serving, blessing_of(en_ko), keep=3, models=models) == f"{serving}/1"
    with pytest.raises(LanguagePairError) as refused:
        run_push(en_de, serving, blessing_of(en_de), keep=3, models=models)
    assert refused.value.exit_code == 2
    assert str(refused.value) == f"{serving}/1 translates en→ko and {en_de} en→de: push it to another model's folder"
    assert versions(serving) == [1]
    assert run_push(en_de, models.model("en-de").uri, blessing_of(en_de), keep=3, models=models)
    assert parse_models_config((tmp_path / "serving" / "models.config").read_text()) == [
        ("en-de", models.model("en-de").uri, "tensorflow"), ("en-ko", serving, "tensorflow")]
