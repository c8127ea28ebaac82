"""Pusher: numbered versions, atomic publication, keep-N, never a partial version, never unblessed."""
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from components.core.artifacts import ExportedModel
from components.core.errors import ArtifactError
from components.pusher import PARTIAL_PREFIX, latest_version, run_push, versions

BLESSED = {"blessed": True, "reason": "test"}


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
    pushed = [run_push(saved_model, serving, BLESSED, keep=2, record={"run_id": f"r{i}"}) for i in range(3)]
    assert pushed == [f"{serving}/1", f"{serving}/2", f"{serving}/3"]
    assert versions(serving) == [2, 3]
    assert latest_version(serving) == f"{serving}/3"
    assert ExportedModel(f"{serving}/3").push_record()["run_id"] == "r2"
    assert ExportedModel(f"{serving}/3").push_record()["version"] == 3
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
        run_push(str(broken), serving, BLESSED, keep=3)
    assert versions(serving) == []


@pytest.mark.slow
def test_kill_during_push_leaves_no_partial_version(saved_model, tmp_path):
    serving = tmp_path / "serving"
    run_push(saved_model, str(serving), BLESSED, keep=5)
    marker = tmp_path / "copied"
    script = textwrap.dedent(f"""
        import time, pathlib
        from components.pusher import run_push
        def hang(partial):
            pathlib.Path({str(marker)!r}).write_text(partial)
            time.sleep(600)
        run_push({saved_model!r}, {str(serving)!r}, {{"blessed": True}}, keep=5, before_publish=hang)
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
    assert versions(str(serving)) == [1]
    # The next push cleans the leftover and takes the next number.
    assert run_push(saved_model, str(serving), BLESSED, keep=5) == f"{serving}/2"
    assert not any(n.startswith(PARTIAL_PREFIX) for n in os.listdir(serving))
