"""Plain TensorFlow building blocks shared by the model, its attention and its training kernels.

Matmuls take a compute dtype: float32, or bfloat16 under `precision: mixed_bfloat16`, where the
inputs are cast and the product comes back as float32 (variables and elementwise ops stay float32).
"""
from __future__ import annotations

from typing import Optional

import tensorflow as tf


def matmul(x: tf.Tensor, kernel: tf.Tensor, dtype: tf.DType = tf.float32,
           transpose_kernel: bool = False) -> tf.Tensor:
    """x · kernel (or x · kernelᵀ) computed in `dtype`, returned as float32."""
    return tf.cast(tf.matmul(tf.cast(x, dtype), tf.cast(kernel, dtype), transpose_b=transpose_kernel), tf.float32)


def dense(x: tf.Tensor, kernel: tf.Tensor, dtype: tf.DType = tf.float32,
          bias: Optional[tf.Tensor] = None) -> tf.Tensor:
    """[B, T, K] x [K, N] (+ bias) as one 2-D matmul, which the CPU runs faster than einsum or a
    batched matmul, and with BiasAdd, which grappler fuses into it."""
    flat = matmul(tf.reshape(x, [-1, tf.shape(x)[-1]]), kernel, dtype)
    if bias is not None:
        flat = tf.nn.bias_add(flat, bias)
    return tf.reshape(flat, tf.concat([tf.shape(x)[:-1], [tf.shape(kernel)[-1]]], 0))


def project(states: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """[N, U] states -> [N, V] logits with the [V, U] output kernel (one row per target token)."""
    return tf.nn.bias_add(matmul(states, kernel, dtype, transpose_kernel=True), bias)


def gru_cell(x_proj: tf.Tensor, inner: tf.Tensor, h: tf.Tensor) -> tf.Tensor:
    """One GRU step (Keras gate order z, r, h and `reset_after=True`) from x·W + b and h·U + b.

    tf.split, not slicing: the gradient of a split is one concat, while every slice's gradient
    would be a full-size zero tensor to add up. z and r share one sigmoid.
    """
    units = h.shape[-1]
    x_zr, x_h = tf.split(x_proj, [2 * units, units], axis=-1)
    in_zr, in_h = tf.split(inner, [2 * units, units], axis=-1)
    z, r = tf.split(tf.sigmoid(x_zr + in_zr), 2, axis=-1)
    candidate = tf.tanh(x_h + r * in_h)
    return candidate + z * (h - candidate)  # = z*h + (1-z)*candidate
