"""Adam on plain tf.Variables (checkpointable as a tf.Module) and the learning-rate schedules.

Written out rather than taken from Keras: Keras 3 optimizers expect Keras variables, and this one
is a few lines whose slots restore into a freshly built model by name.
"""
from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

from components.core.config import TrainerConfig


def clip_by_global_norm(grads: Sequence[tf.Tensor], norm: tf.Tensor, clip_norm: float) -> list[tf.Tensor]:
    """Scale the gradients to global norm `clip_norm` when `norm` (theirs) exceeds it; 0 turns it off.

    Unlike tf.clip_by_global_norm, the pass over the gradients is only paid on the steps that clip.
    """
    if clip_norm <= 0:
        return list(grads)
    scale = clip_norm / tf.maximum(norm, 1e-12)
    return tf.cond(norm > clip_norm, lambda: [g * scale for g in grads], lambda: list(grads))


class Adam(tf.Module):
    """Adam (Kingma & Ba) with bias correction; slots are created eagerly, one pair per variable."""

    def __init__(self, variables: Sequence[tf.Variable], beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, name: str = "adam"):
        super().__init__(name=name)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        # The strategy whose scope built the slots (the default one outside any scope): `apply` runs
        # outside that scope, where get_strategy() would not see the mirrored copies.
        self._strategy = tf.distribute.get_strategy()
        with self.name_scope:
            self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")
            self.m = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="m") for v in variables]
            self.v = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False, name="v") for v in variables]

    def apply(self, grads: Sequence[tf.Tensor], variables: Sequence[tf.Variable], learning_rate: tf.Tensor) -> None:
        """One update; call in cross-replica context (or without a strategy) with the reduced gradients.

        Each variable is updated by TensorFlow's fused Adam kernel (one pass over var, m, v and the
        gradient instead of a dozen elementwise ops); under a distribution strategy, on every replica.
        """
        strategy = self._strategy
        t = tf.cast(self.iterations + 1, tf.float32)
        beta_1_power, beta_2_power = tf.pow(self.beta_1, t), tf.pow(self.beta_2, t)
        learning_rate = tf.cast(learning_rate, tf.float32)

        local = strategy.experimental_local_results  # a mirrored variable's per-device copies, or (var,)
        for grad, var, m, v in zip(grads, variables, self.m, self.v):
            for var_copy, m_copy, v_copy in zip(local(var), local(m), local(v)):
                with tf.device(var_copy.device):
                    tf.raw_ops.ResourceApplyAdam(
                        var=var_copy.handle, m=m_copy.handle, v=v_copy.handle, beta1_power=beta_1_power,
                        beta2_power=beta_2_power, lr=learning_rate, beta1=tf.constant(self.beta_1),
                        beta2=tf.constant(self.beta_2), epsilon=tf.constant(self.epsilon), grad=grad)
        self.iterations.assign_add(1)


def learning_rate(config: TrainerConfig, step: tf.Tensor, total_steps: tf.Tensor,
                  time_used: float | tf.Tensor = 0.0) -> tf.Tensor:
    """The learning rate at `step` (0-based): linear warmup, then constant, cosine or inverse-sqrt.

    The cosine runs to 0 over whichever ends first: the steps of trainer.epochs, or the time budget
    (`time_used`: the fraction of trainer.max_minutes spent), so a run the budget cuts short still
    ends with the small steps that settle the weights.
    """
    step = tf.cast(step, tf.float32)
    base = tf.constant(config.learning_rate, tf.float32)
    warmup = float(config.warmup_steps)
    if config.lr_schedule == "cosine":
        span = tf.maximum(tf.cast(total_steps, tf.float32) - warmup, 1.0)
        progress = tf.maximum(tf.clip_by_value((step - warmup) / span, 0.0, 1.0),
                              tf.clip_by_value(tf.cast(time_used, tf.float32), 0.0, 1.0))
        rate = base * 0.5 * (1.0 + tf.cos(math.pi * progress))
    elif config.lr_schedule == "inverse_sqrt":
        rate = base * tf.sqrt(max(warmup, 1.0) / tf.maximum(step + 1.0, max(warmup, 1.0)))
    else:
        rate = base
    if warmup > 0:
        rate = rate * tf.minimum(1.0, (step + 1.0) / warmup)
    return rate
