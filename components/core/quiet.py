"""TensorFlow's start-up messages kept off the console unless asked for (`--verbose`).

Importing TensorFlow prints C++ log lines before its logging is configured (the absl
"InitializeLog" warning, the CUDA stub's "Could not find cuda drivers"), and the first look at
the devices prints cuInit's failure on a machine without a GPU. TF_CPP_MIN_LOG_LEVEL does not
reach the first two, so the import and the device probe run with file descriptor 2 pointed at
/dev/null. Python errors are raised after it is restored, so a failed import still says why.

Other C++ ERROR lines come later, when ops run (oneDNN's "supports DT_INT64 only on platforms with
AVX-512", from util.cc, and cuInit's failure when the devices are first looked at): TF 2.21 drops
those only at TF_CPP_MIN_LOG_LEVEL=3 (measured: 2 still prints them). `quiet_environment` sets
that, and SEQ2SEQ_VERBOSE, in the environment, so every process the CLI starts (the DirectRunner's
multi_processing workers, a portable runner's workers) inherits the choice; a worker's
`import_tensorflow_quietly` reads SEQ2SEQ_VERBOSE to know whether `--verbose` was given.
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

# "1" when the CLI was given --verbose: read by the processes it starts, which have no arguments of ours.
VERBOSE_ENV = "SEQ2SEQ_VERBOSE"
QUIET_TF_LOG_LEVEL = "3"  # C++ INFO, WARNING and ERROR lines off (FATAL still prints)


def quiet_environment(verbose: bool) -> None:
    """Set, before TensorFlow is imported anywhere, how much of its C++ logging this process and
    its children print: everything with `verbose`, else no INFO, WARNING or ERROR line. A
    TF_CPP_MIN_LOG_LEVEL the user set is kept."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else QUIET_TF_LOG_LEVEL)


def verbose_requested() -> bool:
    """Whether the CLI that started this process (or this process itself) was given --verbose."""
    return os.environ.get(VERBOSE_ENV) == "1"


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
    have run yet; see components/core/threads.py). Under --verbose (SEQ2SEQ_VERBOSE=1) a plain
    import, so its lines show."""
    if verbose_requested():
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_TF_LOG_LEVEL)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if "tensorflow" in sys.modules:
        return
    with stderr_to_devnull():
        import tensorflow as tf

        tf.config.list_physical_devices()
