"""Deterministic (stateless) initializers, so that the same seed builds the same model."""
from __future__ import annotations

import math

import tensorflow as tf


class Initializer:
    """Each call draws from the next stateless seed [seed, count]: the variables must be created in
    the same order for a checkpoint-compatible, reproducible model."""

    def __init__(self, seed: int):
        self._seed = seed
        self._count = 0

    def _next_seed(self) -> tf.Tensor:
        self._count += 1
        return tf.constant([self._seed, self._count], tf.int64)

    def uniform(self, shape: list[int], limit: float) -> tf.Tensor:
        return tf.random.stateless_uniform(shape, self._next_seed(), -limit, limit)

    def glorot(self, shape: list[int]) -> tf.Tensor:
        return self.uniform(shape, math.sqrt(6.0 / (shape[0] + shape[-1])))

    def orthogonal(self, rows: int, cols: int) -> tf.Tensor:
        a = tf.random.stateless_normal([max(rows, cols), min(rows, cols)], self._next_seed())
        q, r = tf.linalg.qr(a)
        q = q * tf.sign(tf.linalg.diag_part(r))
        return q if rows >= cols else tf.transpose(q)

    def zeros(self, shape: list[int]) -> tf.Tensor:
        """Zeros draw no seed: they do not shift the seeds of the variables created after them."""
        return tf.zeros(shape)
