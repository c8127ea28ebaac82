"""Reading checkpoint files defensively: which ones can be read, and whether their values are finite.

A SavedModel's `variables/variables` is a checkpoint too, so the trainer (resume, warm start), the
exporter (restore) and the evaluator (the candidate's weights) share these helpers.

A run killed while writing, a full disk or a truncated copy can leave a checkpoint whose index or
data file is cut short: TensorFlow then fails inside `restore` with errors that name no file
("IndexError: Read less bytes than requested"). `first_readable` reads every tensor of each
candidate in turn and logs, with its path, each one it has to pass over.
"""
from __future__ import annotations

import logging
import re
from typing import Iterable, Optional

import numpy as np
import tensorflow as tf

from components.core import io

logger = logging.getLogger(__name__)

_NUMBER = re.compile(r"-(\d+)$")

# What a cut, missing or garbled checkpoint raises from tf.train.load_checkpoint / get_tensor.
READ_ERRORS = (tf.errors.OpError, IndexError, ValueError, OSError, RuntimeError)


def describe(error: BaseException) -> str:
    text = (str(error) or type(error).__name__).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def checkpoint_prefixes(directory: str) -> list[str]:
    """The checkpoints in DIRECTORY (`ckpt-<number>` as tf.train.CheckpointManager names them),
    newest (highest number) first: those its `checkpoint` state file names, and every `*.index`
    beside them (a state file can be cut short too). [] for a missing folder or a file."""
    directory = directory.rstrip("/")
    if not io.isdir(directory):
        return []
    names = set()
    state = tf.train.get_checkpoint_state(directory)  # None (and a warning) when absent or garbled
    if state is not None:
        names.update(path.replace("\\", "/").rsplit("/", 1)[-1] for path in state.all_model_checkpoint_paths)
        if state.model_checkpoint_path:
            names.add(state.model_checkpoint_path.replace("\\", "/").rsplit("/", 1)[-1])
    names.update(path.rsplit("/", 1)[-1][: -len(".index")] for path in io.gfile().glob(f"{directory}/*.index"))

    def newest(name: str) -> tuple[int, str]:
        match = _NUMBER.search(name)
        return (int(match.group(1)) if match else -1, name)

    return [f"{directory}/{name}" for name in sorted(names, key=newest, reverse=True)]


def checkpoint_number(prefix: str) -> int:
    match = _NUMBER.search(prefix)
    return int(match.group(1)) if match else -1


def unreadable(prefix: str) -> Optional[str]:
    """Why the checkpoint at PREFIX cannot be read, or None when every tensor in it reads back."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for key in reader.get_variable_to_dtype_map():
            reader.get_tensor(key)
    except READ_ERRORS as e:
        return describe(e)
    return None


def first_readable(candidates: Iterable[str], what: str = "checkpoint") -> tuple[Optional[str], list[str]]:
    """(the first of CANDIDATES that reads back in full, ["path: reason" for each one passed over]).
    Each one passed over is logged as a warning with its path."""
    skipped = []
    for prefix in candidates:
        reason = unreadable(prefix)
        if reason is None:
            return prefix, skipped
        logger.warning("skipping the unreadable %s %s (%s)", what, prefix, reason)
        skipped.append(f"{prefix}: {reason}")
    return None, skipped


def non_finite_tensors(prefix: str) -> list[str]:
    """The floating-point tensors of the checkpoint at PREFIX holding NaN or infinity, by key."""
    reader = tf.train.load_checkpoint(prefix)
    bad = []
    for key, dtype in sorted(reader.get_variable_to_dtype_map().items()):
        if dtype.is_floating and not np.all(np.isfinite(reader.get_tensor(key))):
            bad.append(key)
    return bad


def variable_name(key: str) -> str:
    """`model/source_embedding/.ATTRIBUTES/VARIABLE_VALUE` -> `model/source_embedding`."""
    return key.split("/.ATTRIBUTES/")[0]
