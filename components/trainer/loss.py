"""The training loss over parallel sub-batches: `Seq2Seq.compute_loss` (masked token cross-entropy
under teacher forcing, with the fast training kernels of components/model/kernels.py) on each part."""
from __future__ import annotations

from typing import Optional

import tensorflow as tf

from components.model import Seq2Seq
from components.trainer.data import cut_to_longest


def split_batch(batch: dict[str, tf.Tensor], parts: int) -> list[dict[str, tf.Tensor]]:
    """Split a batch into `parts` sub-batches of lengths as alike as possible, each cut to its own
    longest sequence. Rows are dealt out in order of target length (the 1st, 3rd, 5th... longest
    to one part, the 2nd, 4th... to the next), so every part runs about as many decoder steps and
    no core waits for the other. Sizes differ by at most one row; a part may be empty."""
    if parts <= 1:
        return [batch]
    source_length = batch["source_length"]
    key = batch["target_length"] * (tf.reduce_max(source_length) + 1) + source_length
    order = tf.argsort(key, direction="DESCENDING", stable=True)
    sub_batches = []
    for i in range(parts):
        rows = order[i::parts]
        sub_batches.append(cut_to_longest({name: tf.gather(value, rows) for name, value in batch.items()}))
    return sub_batches


def token_loss(model: Seq2Seq, batch: dict[str, tf.Tensor], sub_batches: int = 1,
               seed: Optional[tf.Tensor] = None,
               label_smoothing: float = 0.0) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(summed cross-entropy, real target tokens, correctly predicted tokens) under teacher forcing.

    With `sub_batches` > 1 the batch is dealt into parts (`split_batch`) whose graphs share no op,
    so TensorFlow runs them concurrently, one per core (see components/core/threads.py).
    The sums are the same as for the whole batch. `seed` (training only) turns on the model's
    dropout and word dropout, with a seed of its own for each part.
    """
    parts = []
    for index, part in enumerate(split_batch(batch, sub_batches)):
        part_seed = None if seed is None else tf.random.experimental.stateless_fold_in(seed, index)
        parts.append(tuple(model.compute_loss(part, seed=part_seed, label_smoothing=label_smoothing)))
    if len(parts) == 1:
        return parts[0]
    return tuple(tf.add_n(list(values)) for values in zip(*parts))
