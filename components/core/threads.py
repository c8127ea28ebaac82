"""How the train step uses a multi-core CPU: one sub-batch per core, one thread per op.

A recurrent train step at batch 64 is a long chain of small ops (a [64, 256] x [256, 1024] matmul,
a few elementwise ops over [64, 256]) run one time step after another. Split over the cores inside
every op, each op pays a cross-thread hand-off that is as long as its work. Split instead by rows,
into independent sub-batches, each core runs its own chain with no hand-offs; the big vocabulary
matmuls are split the same way (docs/training.md has the measurement).

The thread pools are process-wide and fixed once TensorFlow has run its first op, so
`configure_cpu_threads` is called first thing by `seq2seq train` / `seq2seq run` (and by
`run_training`). When TensorFlow is already running, sub-batches still run, just on its default
pools, which is no slower than one chain.
"""
from __future__ import annotations

import logging

import tensorflow as tf

from components.core.config import TrainerConfig
from components.core.cpu import cpu_cores

logger = logging.getLogger(__name__)

# Below this many rows per sub-batch the per-step ops are too small to be worth a core each.
MIN_ROWS_PER_SUB_BATCH = 16


def resolve_sub_batches(trainer: TrainerConfig) -> int:
    """`trainer.sub_batches`, with 0 (auto) resolved: one per CPU core, at most one per
    MIN_ROWS_PER_SUB_BATCH rows, when training on the CPU without a distribution strategy (replicas
    already split the batch), else 1."""
    if trainer.sub_batches > 0:
        return trainer.sub_batches
    if trainer.distribution != "none" or tf.config.list_physical_devices("GPU"):
        return 1
    return max(1, min(cpu_cores(), trainer.batch_size // MIN_ROWS_PER_SUB_BATCH))


def configure_cpu_threads(trainer: TrainerConfig) -> int:
    """Give each sub-batch a core: one intra-op thread, one inter-op thread per sub-batch.

    Returns the number of sub-batches. Does nothing for 1 sub-batch or on a GPU.
    """
    sub_batches = resolve_sub_batches(trainer)
    if sub_batches <= 1 or tf.config.list_physical_devices("GPU"):
        return sub_batches
    threading = tf.config.threading
    if (threading.get_intra_op_parallelism_threads() == 1
            and threading.get_inter_op_parallelism_threads() >= sub_batches):
        return sub_batches
    try:
        threading.set_intra_op_parallelism_threads(1)
        threading.set_inter_op_parallelism_threads(max(sub_batches, 2))
        logger.info("train step: %d sub-batches, each on its own core (1 intra-op thread, %d inter-op)",
                    sub_batches, max(sub_batches, 2))
    except RuntimeError:
        logger.info("TensorFlow was already running: the %d sub-batches share its default thread pools",
                    sub_batches)
    return sub_batches
