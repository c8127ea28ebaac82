"""TensorFlow's start-up messages kept off the console unless asked for (`--verbose`).

Importing TensorFlow prints C++ log lines before its logging is configured (the absl
"InitializeLog" warning, the CUDA stub's "Could not find cuda drivers"), and the first look at
the devices prints cuInit's failure on a machine without a GPU. TF_CPP_MIN_LOG_LEVEL does not
reach the first two, so the import and the device probe run with file descriptor 2 pointed at
/dev/null. Python errors are raised after it is restored, so a failed import still says why.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from typing import Iterator

# Python loggers that report routine work at INFO (collective all-reduce set-up, tf.data
# sharding callbacks) and would otherwise interleave with the pipeline's own lines.
CHATTY_LOGGERS = ("tensorflow", "absl")


@contextlib.contextmanager
def stderr_to_devnull() -> Iterator[None]:
    """File descriptor 2 (what C++ code writes to) goes to /dev/null inside the block."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # a captured or replaced stream
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and probe its devices without their start-up lines, and keep its and
    absl's Python loggers at WARNING. Leaves the thread pools unconfigured (that needs no op to
    have run yet; see components/core/threads.py)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if "tensorflow" in sys.modules:
        return
    with stderr_to_devnull():
        import tensorflow as tf

        tf.config.list_physical_devices()
