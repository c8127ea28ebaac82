"""The model's two heavy computations, each written twice: a plain reference and a CPU training kernel.

- `recurrence`: a `tf.while_loop` over time steps (the encoder GRU, the teacher-forced decoder);
- `cross_entropy`: the vocabulary projection of decoder states and the softmax cross-entropy.

`REFERENCE` is plain TensorFlow ops and autodiff. `FAST` gives the same values and the same
gradients (tests/test_model.py checks every variable's gradient, for every attention) with fewer
and faster ops on the CPU; the trainer uses it. Why each trick pays, and by how much, is in
docs/training.md ("The train step"):

- inside a recurrence, the kernels that multiply loop values are constants: their gradients are
  taken after the loop, as one large matmul over all steps, instead of a small matmul plus a
  full-size accumulation at every step, and each kernel is transposed once before the loop so the
  per-step gradient matmul has no transposed operand (the loop's other gradients come from a
  non-persistent tape of its own, so a `FAST` forward pass supports one backward pass);
- the cross-entropy is fused with the projection and has its own gradient (softmax - one-hot),
  computed vocabulary-major ([V, N] logits from the [V, U] output kernel), which makes fewer
  passes over the logits than `SparseSoftmaxCrossEntropyWithLogits` and turns the slow matmul
  layouts into plain ones.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Mapping, NamedTuple, Optional

import tensorflow as tf

from components.model.ops import matmul, project

# `LoopKernel.operand` for "the state the step started from".
PREVIOUS_STATE = "previous_state"

# name, x -> x · kernel[name]: how a step multiplies by the recurrence's kernels.
Matmul = Callable[[str, tf.Tensor], tf.Tensor]
# (inputs at step t, state, memory, matmul) -> (new state, outputs at step t).
Step = Callable[[Mapping[str, tf.Tensor], tf.Tensor, Any, Matmul], tuple[tf.Tensor, Mapping[str, tf.Tensor]]]


class LoopKernel(NamedTuple):
    """A kernel that multiplies a value of the loop, the product being added to a per-step input.

    The step computes `matmul(name, operand_t)` and adds it to `sequences[target][t]`; so the
    kernel's gradient is Σ_t operand_tᵀ · d target_t, which `FAST` computes after the loop.
    """

    kernel: tf.Tensor  # [K, N] float32
    operand: str       # PREVIOUS_STATE, or the name of a step output [B, K]
    target: str        # the name of a sequence [T, B, N]


class Kernels(abc.ABC):
    """The two computations; `REFERENCE` and `FAST` implement them."""

    @abc.abstractmethod
    def recurrence(self, step: Step, sequences: Mapping[str, tf.Tensor], initial_state: tf.Tensor, memory: Any,
                   kernels: Mapping[str, LoopKernel], widths: Mapping[str, Optional[int]],
                   dtype: tf.DType) -> dict[str, tf.Tensor]:
        """Run `step` over time-major `sequences` ([T, B, ...]) from `initial_state` [B, U].

        `memory` (a nest of tensors) is read by every step; `widths` names the step outputs to keep
        (with their last dimension). Returns them stacked time-major, and `state`: the states [T, B, U].
        """

    @abc.abstractmethod
    def cross_entropy(self, states: tf.Tensor, labels: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor,
                      dtype: tf.DType, label_smoothing: float = 0.0) -> tuple[tf.Tensor, tf.Tensor]:
        """(per-token loss [N], 1.0 where the label has the top logit) of the logits
        `project(states, kernel, bias)`, for [N, U] states, [N] labels and the [V, U] output kernel.

        With `label_smoothing` ε the target distribution is (1 - ε) on the label plus ε spread
        evenly over the vocabulary: loss = logsumexp - (1 - ε)·label logit - ε·mean logit."""


# ---------------------------------------------------------------- shared loop


def _read_steps(time_major: tf.Tensor) -> tf.TensorArray:
    """Per-step inputs are read from TensorArrays: slicing a captured tensor inside the loop would
    make the gradient add a full-size tensor at every step."""
    return tf.TensorArray(time_major.dtype, size=tf.shape(time_major)[0],
                          element_shape=time_major.shape[1:]).unstack(time_major)


def run_loop(step: Step, sequences: Mapping[str, tf.Tensor], initial_state: tf.Tensor, memory: Any,
             multiply: Matmul, widths: Mapping[str, Optional[int]]) -> dict[str, tf.Tensor]:
    """The `tf.while_loop` both kernels run: `widths` outputs (and `state`) stacked time-major."""
    steps = tf.shape(next(iter(sequences.values())))[0]
    inputs = {name: _read_steps(value) for name, value in sequences.items()}
    widths = {"state": initial_state.shape[-1], **widths}
    arrays = {name: tf.TensorArray(tf.float32, size=steps, element_shape=tf.TensorShape([None, width]))
              for name, width in widths.items()}

    def body(t, state, arrays):
        state, outputs = step({name: array.read(t) for name, array in inputs.items()}, state, memory, multiply)
        outputs = {"state": state, **outputs}
        return t + 1, state, {name: array.write(t, outputs[name]) for name, array in arrays.items()}

    _, _, arrays = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), initial_state, arrays),
                                 maximum_iterations=steps)
    return {name: array.stack() for name, array in arrays.items()}


# ---------------------------------------------------------------- reference


class ReferenceKernels(Kernels):
    """Plain TensorFlow ops; TensorFlow's autodiff takes every gradient."""

    def recurrence(self, step, sequences, initial_state, memory, kernels, widths, dtype):
        def multiply(name: str, x: tf.Tensor) -> tf.Tensor:
            return matmul(x, kernels[name].kernel, dtype)

        return run_loop(step, sequences, initial_state, memory, multiply, widths)

    def cross_entropy(self, states, labels, kernel, bias, dtype, label_smoothing=0.0):
        logits = project(states, kernel, bias, dtype)
        labels = tf.cast(labels, tf.int32)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        if label_smoothing:
            uniform = tf.reduce_logsumexp(logits, axis=-1) - tf.reduce_mean(logits, axis=-1)
            losses = (1.0 - label_smoothing) * losses + label_smoothing * uniform
        label_logit = tf.gather(logits, labels, batch_dims=1)
        correct = tf.cast(label_logit >= tf.reduce_max(logits, axis=-1), tf.float32)
        return losses, correct


# ---------------------------------------------------------------- fast


def constant_kernel_matmul(x: tf.Tensor, kernel: tf.Tensor, kernel_t: tf.Tensor,
                           dtype: tf.DType = tf.float32) -> tf.Tensor:
    """x · kernel inside a recurrence, where the kernel is a constant (its gradient is taken after
    the loop) and `kernel_t`, its transpose, was computed once before the loop: the per-step
    gradient dy · kernelᵀ then runs as a plain matmul, which the CPU runs faster than a matmul
    with a transposed operand."""
    @tf.custom_gradient
    def product(x):
        def grad(dy):
            return tf.cast(tf.matmul(tf.cast(dy, dtype), kernel_t), tf.float32)
        return matmul(x, kernel, dtype), grad
    return product(x)


def _constant_matmuls(kernels: Mapping[str, tf.Tensor], dtype: tf.DType) -> Matmul:
    """The loop's `multiply`: each kernel cast and transposed once, before the loop."""
    constants = {name: tf.cast(value, dtype) for name, value in kernels.items()}
    transposed = {name: tf.transpose(value) for name, value in constants.items()}

    def multiply(name: str, x: tf.Tensor) -> tf.Tensor:
        return constant_kernel_matmul(x, constants[name], transposed[name], dtype)

    return multiply


def _kernel_gradient(loop_kernel: LoopKernel, kernel: tf.Tensor, initial_state: tf.Tensor,
                     outputs: Mapping[str, tf.Tensor], target_grad: Optional[tf.Tensor],
                     dtype: tf.DType) -> Optional[tf.Tensor]:
    """Σ_t operand_tᵀ · d target_t as one [K, T*B] x [T*B, N] matmul."""
    if target_grad is None:
        return None
    if loop_kernel.operand == PREVIOUS_STATE:
        operand = tf.concat([initial_state[None], outputs["state"][:-1]], axis=0)
    else:
        operand = outputs[loop_kernel.operand]
    flat_operand = tf.cast(tf.reshape(operand, [-1, tf.shape(operand)[-1]]), dtype)
    flat_grad = tf.cast(tf.reshape(target_grad, [-1, tf.shape(target_grad)[-1]]), dtype)
    return tf.cast(tf.matmul(flat_operand, flat_grad, transpose_a=True), kernel.dtype)


def _detach(tensor: tf.Tensor) -> tf.Tensor:
    """A copy of `tensor` that the caller's tapes do not watch (non-float tensors pass as they are)."""
    return tf.stop_gradient(tensor) if tensor.dtype.is_floating else tensor


class FastKernels(Kernels):
    """The trainer's kernels: same values as `REFERENCE`, gradients within float tolerance."""

    def recurrence(self, step, sequences, initial_state, memory, kernels, widths, dtype):
        """The loop runs with the kernels as constants, under its own tape; the custom gradient
        backpropagates through the loop with that tape, for everything but the kernels, then takes
        each kernel's gradient in one matmul (`_kernel_gradient`)."""
        sequence_names, kernel_names = sorted(sequences), sorted(kernels)
        output_names = sorted({"state", *widths})  # what the caller asked for, hence what gets upstream gradients
        # The loop also keeps the operands the kernel gradients need.
        loop_widths = {**widths, **{k.operand: k.kernel.shape[0] for k in kernels.values()
                                    if k.operand != PREVIOUS_STATE}}
        inputs = [*(sequences[name] for name in sequence_names), initial_state, *tf.nest.flatten(memory)]

        @tf.custom_gradient
        def loop(*args):
            # Only this function's own tape may watch the loop, and it is not persistent: a loop that
            # two tapes or a persistent one watch is built for higher-order gradients (wrapped in a
            # function, with more ops at every step). So each forward pass has one backward pass.
            args = [_detach(arg) for arg in args]
            loop_inputs, kernel_values = args[:len(inputs)], dict(zip(kernel_names, args[len(inputs):]))
            loop_initial = loop_inputs[len(sequence_names)]
            sources = [value for value in loop_inputs if value.dtype.is_floating]
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(sources)
                outputs = run_loop(step, dict(zip(sequence_names, loop_inputs)), loop_initial,
                                   tf.nest.pack_sequence_as(memory, loop_inputs[len(sequence_names) + 1:]),
                                   _constant_matmuls(kernel_values, dtype), loop_widths)

            def grad(*upstream):
                upstream = [tf.zeros_like(outputs[name]) if g is None else g for name, g in zip(output_names, upstream)]
                found = iter(tape.gradient([outputs[name] for name in output_names], sources,
                                           output_gradients=upstream))
                input_grads = [next(found) if value.dtype.is_floating else None for value in loop_inputs]
                sequence_grads = dict(zip(sequence_names, input_grads))
                return input_grads + [
                    _kernel_gradient(kernels[name], kernel_values[name], loop_initial, outputs,
                                     sequence_grads[kernels[name].target], dtype)
                    for name in kernel_names]

            return tuple(outputs[name] for name in output_names), grad

        results = loop(*inputs, *(kernels[name].kernel for name in kernel_names))
        return dict(zip(output_names, results))

    def cross_entropy(self, states, labels, kernel, bias, dtype, label_smoothing=0.0):
        """Fused and vocabulary-major: the logits are [V, N] (kernel · statesᵀ), so of the three
        matmuls the forward one and the kernel gradient are plain ones on the CPU."""
        labels = tf.cast(labels, tf.int32)
        smoothing = float(label_smoothing)

        @tf.custom_gradient
        def fused(states, kernel, bias):
            # Cast once for the forward and the backward matmuls (no-ops in float32).
            states_c, kernel_c = tf.cast(states, dtype), tf.cast(kernel, dtype)
            logits = tf.cast(tf.matmul(kernel_c, states_c, transpose_b=True), tf.float32) + bias[:, None]
            top = tf.reduce_max(logits, axis=0)
            exp = tf.exp(logits - top)
            total = tf.reduce_sum(exp, axis=0)
            label_positions = tf.stack([labels, tf.range(tf.shape(labels)[0])], axis=1)
            label_logit = tf.gather_nd(logits, label_positions)
            losses = tf.math.log(total) + top - (1.0 - smoothing) * label_logit
            if smoothing:
                losses -= smoothing * tf.reduce_mean(logits, axis=0)
            correct = tf.cast(label_logit >= top, tf.float32)

            def grad(upstream, _unused_correct_grad=None):
                # d loss / d logits = softmax - (1 - ε)·one-hot(label) - ε / V
                softmax_grad = exp * (upstream / total)
                if smoothing:
                    softmax_grad -= upstream * (smoothing / tf.cast(tf.shape(logits)[0], tf.float32))
                logits_grad = tf.tensor_scatter_nd_sub(softmax_grad, label_positions, (1.0 - smoothing) * upstream)
                logits_grad_c = tf.cast(logits_grad, dtype)
                states_grad = tf.matmul(logits_grad_c, kernel_c, transpose_a=True)
                kernel_grad = tf.matmul(logits_grad_c, states_c)
                return (tf.cast(states_grad, tf.float32), tf.cast(kernel_grad, tf.float32),
                        tf.reduce_sum(logits_grad, axis=1))

            return (losses, correct), grad

        return fused(states, tf.convert_to_tensor(kernel), tf.convert_to_tensor(bias))


REFERENCE: Kernels = ReferenceKernels()
FAST: Kernels = FastKernels()
