"""The attention seq2seq in plain TensorFlow: embeddings, a GRU encoder, a GRU decoder with
Bahdanau (additive), Luong ("general", multiplicative) or no attention, and a vocabulary projection.

Pure `tf.Module` + `tf.Variable` (no Keras layers), so a SavedModel of it loads with a plain
`import tensorflow` and `saved_model_cli` can read it. Every variable is created in `__init__`,
so a checkpoint restores into a freshly built model.

Shapes: B batch, S source steps, T target steps, E embedding_dim, U units, V target vocabulary.
The decoder step, as in the seed: attention over the encoder states from the previous decoder
state, the context vector concatenated with the token embedding as the GRU input, the GRU state
projected to the vocabulary. Source padding gets zero attention weight.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import tensorflow as tf

ATTENTIONS = ("bahdanau", "luong", "none")
PRECISIONS = ("float32", "mixed_bfloat16")
# Added to the scores of padded source positions; exp() of it underflows to exactly 0.
_MASK_PENALTY = -1e9


class Encoded(NamedTuple):
    """What `Seq2Seq.encode` computes once per batch and every decoder step reads."""

    states: tf.Tensor       # [B, S, U] encoder GRU states (zeros at padded positions)
    final_state: tf.Tensor  # [B, U] state after each row's last real token
    mask: tf.Tensor         # [B, S] bool, True at real source tokens
    keys: tf.Tensor         # [B, S, U] W1·enc (+b1) for bahdanau, enc·Wa for luong, [B, S, 0] for none


class _Init:
    """Deterministic (stateless) initializers, so the same seed builds the same model."""

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


def _deferred_kernel_gradient(kernel: tf.Tensor, steps: tf.Tensor, batch: tf.Tensor,
                              inputs: dict[str, tf.Tensor], dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Zeros [T, B, N] to add to `x_t · stop_gradient(kernel)` inside a loop, carrying the kernel's gradient.

    Inside a `tf.while_loop` the gradient of a kernel is one small [K, B] x [B, N] matmul plus a
    full-size accumulation per step. Instead the loop multiplies by the stopped kernel, and this
    zero tensor (read per step) receives the per-step output gradients; its own gradient is then
    the kernel's: one large [K, T*B] x [T*B, N] matmul over `inputs["x"]` ([T, B, K], the loop's
    per-step inputs to the matmul, set once the loop has run).
    """
    @tf.custom_gradient
    def zeros(k):
        def grad(upstream):
            x = tf.stop_gradient(inputs["x"])
            flat_x = tf.cast(tf.reshape(x, [-1, tf.shape(x)[-1]]), dtype)
            flat_upstream = tf.cast(tf.reshape(upstream, [-1, tf.shape(upstream)[-1]]), dtype)
            return tf.cast(tf.matmul(flat_x, flat_upstream, transpose_a=True), k.dtype)
        return tf.zeros(tf.stack([steps, batch, tf.shape(k)[1]]), k.dtype), grad

    return zeros(kernel)


def _matmul(x: tf.Tensor, kernel: tf.Tensor, dtype: tf.DType = tf.float32, transpose_kernel: bool = False) -> tf.Tensor:
    """x · kernel (or x · kernelᵀ) computed in `dtype` (float32, or bfloat16 for mixed precision),
    returned as float32."""
    return tf.cast(tf.matmul(tf.cast(x, dtype), tf.cast(kernel, dtype), transpose_b=transpose_kernel), tf.float32)


def _constant_kernel_matmul(x: tf.Tensor, kernel: tf.Tensor, kernel_t: tf.Tensor,
                            dtype: tf.DType = tf.float32) -> tf.Tensor:
    """x · kernel inside a recurrence, where the kernel is a constant (its gradient is deferred, see
    `_deferred_kernel_gradient`) and `kernel_t`, its transpose, was computed once before the loop:
    the per-step gradient dy · kernelᵀ then runs as a plain matmul, up to a third faster on the
    CPU than a matmul with a transposed operand ([B, 4U] x [4U, U] at U 256)."""
    @tf.custom_gradient
    def matmul(x):
        def grad(dy):
            return tf.cast(tf.matmul(tf.cast(dy, dtype), kernel_t), tf.float32)
        return _matmul(x, kernel, dtype), grad
    return matmul(x)


def _dense(x: tf.Tensor, kernel: tf.Tensor, dtype: tf.DType = tf.float32, bias=None) -> tf.Tensor:
    """[B, T, K] x [K, N] (+ bias) as one 2-D matmul, which the CPU runs faster than einsum or a
    batched matmul, and with BiasAdd, which grappler fuses into it."""
    flat = _matmul(tf.reshape(x, [-1, tf.shape(x)[-1]]), kernel, dtype)
    if bias is not None:
        flat = tf.nn.bias_add(flat, bias)
    return tf.reshape(flat, tf.concat([tf.shape(x)[:-1], [tf.shape(kernel)[-1]]], 0))


def _steps(batch_major: tf.Tensor) -> tf.TensorArray:
    """[B, T, ...] -> a TensorArray of T elements [B, ...], for per-step reads in a while loop."""
    return _steps_time_major(tf.transpose(batch_major, tf.concat([[1, 0], tf.range(2, tf.rank(batch_major))], 0)))


def _steps_time_major(time_major: tf.Tensor) -> tf.TensorArray:
    return tf.TensorArray(time_major.dtype, size=tf.shape(time_major)[0],
                          element_shape=time_major.shape[1:]).unstack(time_major)


class Seq2Seq(tf.Module):
    """GRU encoder-decoder with `bahdanau`, `luong` or `none` attention."""

    def __init__(self, source_vocab_size: int, target_vocab_size: int, embedding_dim: int, units: int,
                 attention: str, seed: int = 0, precision: str = "float32", name: str = "seq2seq"):
        super().__init__(name=name)
        if attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision
        # Variables, activations and every elementwise op stay float32; with mixed_bfloat16 the
        # matmuls take bfloat16 inputs (the CPU's AMX/AVX512-BF16 units) and return float32.
        self.compute_dtype = tf.bfloat16 if precision == "mixed_bfloat16" else tf.float32
        self.source_vocab_size = int(source_vocab_size)
        self.target_vocab_size = int(target_vocab_size)
        self.embedding_dim = int(embedding_dim)
        self.units = int(units)
        self.attention = attention
        E, U, init = self.embedding_dim, self.units, _Init(seed)
        context_dim = 0 if attention == "none" else U

        def var(value: tf.Tensor, name: str) -> tf.Variable:
            return tf.Variable(value, name=name, trainable=True)

        with self.name_scope:
            self.source_embedding = var(init.uniform([self.source_vocab_size, E], 0.05), "source_embedding")
            self.target_embedding = var(init.uniform([self.target_vocab_size, E], 0.05), "target_embedding")
            self.encoder_kernel = var(init.glorot([E, 3 * U]), "encoder_kernel")
            self.encoder_recurrent_kernel = var(self._recurrent(init), "encoder_recurrent_kernel")
            self.encoder_bias = var(tf.zeros([3 * U]), "encoder_bias")
            self.encoder_recurrent_bias = var(tf.zeros([3 * U]), "encoder_recurrent_bias")
            # The decoder GRU input is [context; embedding]; its kernel is kept in two parts so the
            # embedding part is applied to all target steps in one matmul under teacher forcing.
            self.decoder_kernel = var(init.glorot([E, 3 * U]), "decoder_kernel")
            if context_dim:
                self.decoder_context_kernel = var(init.glorot([context_dim, 3 * U]), "decoder_context_kernel")
            self.decoder_recurrent_kernel = var(self._recurrent(init), "decoder_recurrent_kernel")
            self.decoder_bias = var(tf.zeros([3 * U]), "decoder_bias")
            self.decoder_recurrent_bias = var(tf.zeros([3 * U]), "decoder_recurrent_bias")
            if attention == "bahdanau":
                self.attention_key_kernel = var(init.glorot([U, U]), "attention_W1")
                self.attention_key_bias = var(tf.zeros([U]), "attention_b1")
                self.attention_query_kernel = var(init.glorot([U, U]), "attention_W2")
                self.attention_query_bias = var(tf.zeros([U]), "attention_b2")
                self.attention_v = var(init.glorot([U, 1])[:, 0], "attention_V")
            elif attention == "luong":
                self.attention_key_kernel = var(init.glorot([U, U]), "attention_Wa")
            # Stored [V, U], one row per target token: `project` (states · kernelᵀ) and the training
            # loss (kernel · statesᵀ, components/trainer/loss.py) both multiply it 15-25% faster on
            # the CPU than a [U, V] kernel (measured at V 5k-18k, U 256).
            self.output_kernel = var(init.glorot([self.target_vocab_size, U]), "output_kernel")
            self.output_bias = var(tf.zeros([self.target_vocab_size]), "output_bias")

    def _recurrent(self, init: _Init) -> tf.Tensor:
        U = self.units
        return tf.concat([init.orthogonal(U, U) for _ in range(3)], axis=1)

    @classmethod
    def from_config(cls, model_config, source_vocab_size: int, target_vocab_size: int,
                    seed: int = 0) -> "Seq2Seq":
        """Build from a `pipeline.config.ModelConfig`."""
        return cls(source_vocab_size, target_vocab_size, model_config.embedding_dim, model_config.units,
                   model_config.attention, seed=seed, precision=getattr(model_config, "precision", "float32"))

    def shape_summary(self) -> dict[str, object]:
        """The hyperparameters a checkpoint depends on (compared on restore)."""
        return {"source_vocab_size": self.source_vocab_size, "target_vocab_size": self.target_vocab_size,
                "embedding_dim": self.embedding_dim, "units": self.units, "attention": self.attention,
                "precision": self.precision}

    # ---------------------------------------------------------------- encoder

    def encode(self, source_ids: tf.Tensor, source_length: tf.Tensor) -> Encoded:
        """[B, S] int64 ids and [B] lengths -> `Encoded` (states, final state, mask, attention keys)."""
        source_ids = tf.convert_to_tensor(source_ids, tf.int64)
        source_length = tf.convert_to_tensor(source_length, tf.int64)
        steps = tf.shape(source_ids)[1]
        mask = tf.sequence_mask(source_length, steps)
        embedded = tf.gather(self.source_embedding, source_ids)
        # x·W for every source step in one matmul; only h·U stays inside the recurrence.
        x_proj = _dense(embedded, self.encoder_kernel, self.compute_dtype, self.encoder_bias)
        # Per-step inputs are read from TensorArrays: slicing a captured tensor inside the loop
        # would make the gradient add a full [S, B, 3U] tensor at every step.
        batch = tf.shape(source_ids)[0]
        previous: dict[str, tf.Tensor] = {}
        # Cast once, outside the loop; the loop uses the kernel as a constant.
        recurrent_kernel = tf.stop_gradient(tf.cast(self.encoder_recurrent_kernel, self.compute_dtype))
        recurrent_kernel_t = tf.transpose(recurrent_kernel)
        recurrent_offset = self.encoder_recurrent_bias + _deferred_kernel_gradient(
            tf.convert_to_tensor(self.encoder_recurrent_kernel), steps, batch, previous, self.compute_dtype)
        x_proj_t, offset_t = _steps(x_proj), _steps_time_major(recurrent_offset)
        h0 = tf.zeros([batch, self.units])
        states_ta = tf.TensorArray(tf.float32, size=steps, element_shape=tf.TensorShape([None, self.units]))

        # No masking inside the loop: padding only comes after a row's real tokens, so the final
        # state is read at each row's last real position afterwards, and padded states are zeroed.
        def body(t, h, states):
            inner = _constant_kernel_matmul(h, recurrent_kernel, recurrent_kernel_t, self.compute_dtype)
            h = gru_cell(x_proj_t.read(t), inner + offset_t.read(t), h)
            return t + 1, h, states.write(t, h)

        _, _, states_ta = tf.while_loop(
            lambda t, *_: t < steps, body, (tf.constant(0), h0, states_ta), maximum_iterations=steps)
        time_major = states_ta.stack()
        previous["x"] = tf.concat([h0[None], time_major[:-1]], axis=0)
        states = tf.ensure_shape(tf.transpose(time_major, [1, 0, 2]), [None, None, self.units])
        last = tf.gather(states, tf.maximum(source_length - 1, 0), batch_dims=1)
        final_state = tf.where((source_length > 0)[:, None], last, 0.0)
        states = states * tf.cast(mask, tf.float32)[:, :, None]
        return Encoded(states, final_state, mask, self._keys(states))

    def _keys(self, states: tf.Tensor) -> tf.Tensor:
        """The per-batch half of the attention score, computed once, not at every decoder step."""
        if self.attention == "bahdanau":
            return _dense(states, self.attention_key_kernel, self.compute_dtype, self.attention_key_bias)
        if self.attention == "luong":
            return _dense(states, self.attention_key_kernel, self.compute_dtype)
        return states[:, :, :0]

    # ---------------------------------------------------------------- decoder

    def _step_weights(self) -> dict[str, tf.Tensor]:
        """The decoder-step weights, read once per batch.

        A `tf.while_loop` body that read the variables itself would make the gradient keep a copy
        of every kernel for every step. For bahdanau the recurrent kernel and the attention query
        kernel (W2) both multiply the previous state, so they are fused into one [U, 4U] matmul.
        """
        w = {"state_kernel": tf.convert_to_tensor(self.decoder_recurrent_kernel),
             "state_bias": tf.convert_to_tensor(self.decoder_recurrent_bias)}
        if self.attention == "bahdanau":
            w["state_kernel"] = tf.concat([w["state_kernel"], self.attention_query_kernel], axis=1)
            w["state_bias"] = tf.concat([w["state_bias"], self.attention_query_bias], axis=0)
            w["attention_v"] = tf.convert_to_tensor(self.attention_v)
        if self.attention != "none":
            w["context_kernel"] = tf.convert_to_tensor(self.decoder_context_kernel)
        return w

    def _attend(self, state: tf.Tensor, query: tf.Tensor, encoded: Encoded,
                w: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        """(context [B, U], weights [B, S]); padded source positions weigh exactly 0."""
        if self.attention == "bahdanau":  # V·tanh(W1·enc + W2·h), W1·enc precomputed as keys
            scores = tf.linalg.matvec(tf.tanh(encoded.keys + query[:, None, :]), w["attention_v"])
        else:  # luong "general": h·Wa·enc, enc·Wa precomputed as keys
            scores = tf.linalg.matvec(encoded.keys, state)
        scores = tf.where(encoded.mask, scores, _MASK_PENALTY)
        weights = tf.nn.softmax(scores, axis=-1)
        context = tf.linalg.matvec(encoded.states, weights, transpose_a=True)
        return context, weights

    def attend(self, state: tf.Tensor, encoded: Encoded) -> tuple[tf.Tensor, tf.Tensor]:
        """Decoder state [B, U] -> (context [B, U], attention weights [B, S])."""
        if self.attention == "none":
            raise ValueError("attention 'none' has no attention to compute")
        w = self._step_weights()
        query = (_matmul(state, w["state_kernel"], self.compute_dtype)[:, 3 * self.units:]
                 + w["state_bias"][3 * self.units:])
        return self._attend(state, query, encoded, w)

    def _step(self, x_proj: tf.Tensor, state: tf.Tensor, encoded: Encoded,
              w: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One decoder GRU step from the embedding projection: (new_state, attention weights, context)."""
        state_proj = self._step_matmul(state, w, "state_kernel") + w["state_bias"]
        if self.attention == "bahdanau":
            inner, query = tf.split(state_proj, [3 * self.units, self.units], axis=-1)
        else:
            inner, query = state_proj, None
        if self.attention == "none":
            weights = tf.zeros(tf.shape(encoded.mask), tf.float32)
            context = state[:, :0]
        else:
            context, weights = self._attend(state, query, encoded, w)
            x_proj = x_proj + self._step_matmul(context, w, "context_kernel")
        return gru_cell(x_proj, inner, state), weights, context

    def _step_matmul(self, x: tf.Tensor, w: dict[str, tf.Tensor], name: str) -> tf.Tensor:
        """x · w[name]; under teacher forcing the loop also has the kernel's transpose (`name`_t)."""
        if f"{name}_t" in w:
            return _constant_kernel_matmul(x, w[name], w[f"{name}_t"], self.compute_dtype)
        return _matmul(x, w[name], self.compute_dtype)

    def step_weights(self) -> dict[str, tf.Tensor]:
        """The decoder step's weights, read (and fused) once: pass them to every `decode_step` of a
        decoding loop so the loop body does not re-read and re-concatenate them at each step."""
        return self._step_weights()

    def decode_step(self, token_ids: tf.Tensor, state: tf.Tensor, encoded: Encoded,
                    step_weights: Optional[dict[str, tf.Tensor]] = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """[B] previous tokens, [B, U] state -> (logits [B, V], new state [B, U], attention [B, S])."""
        embedded = tf.gather(self.target_embedding, tf.convert_to_tensor(token_ids, tf.int64))
        x_proj = _matmul(embedded, self.decoder_kernel, self.compute_dtype) + self.decoder_bias
        w = step_weights if step_weights is not None else self._step_weights()
        new_state, attention, _ = self._step(x_proj, state, encoded, w)
        return self.project(new_state), new_state, attention

    def project(self, states: tf.Tensor) -> tf.Tensor:
        """Decoder states [..., U] -> vocabulary logits [..., V], one matmul over all leading dims."""
        flat = tf.reshape(states, [-1, self.units])
        logits = tf.nn.bias_add(_matmul(flat, self.output_kernel, self.compute_dtype, transpose_kernel=True),
                                self.output_bias)
        return tf.reshape(logits, tf.concat([tf.shape(states)[:-1], [self.target_vocab_size]], 0))

    def decoder_states(self, encoded: Encoded, target_input: tf.Tensor,
                       with_attention: bool = True) -> tuple[tf.Tensor, Optional[tf.Tensor]]:
        """Teacher forcing: [B, T] decoder inputs -> (states [B, T, U], attention [B, T, S] or None)."""
        target_input = tf.convert_to_tensor(target_input, tf.int64)
        steps = tf.shape(target_input)[1]
        embedded = tf.gather(self.target_embedding, target_input)
        x_proj = _dense(embedded, self.decoder_kernel, self.compute_dtype, self.decoder_bias)
        # The kernels multiplying loop values get their gradients after the loop (see
        # _deferred_kernel_gradient); inside it they are constants.
        batch = tf.shape(target_input)[0]
        w = self._step_weights()
        previous: dict[str, tf.Tensor] = {}
        contexts: dict[str, tf.Tensor] = {}
        state_offset = w["state_bias"] + _deferred_kernel_gradient(
            w["state_kernel"], steps, batch, previous, self.compute_dtype)
        loop_w = {name: tf.stop_gradient(tf.cast(value, self.compute_dtype) if "kernel" in name else value)
                  for name, value in w.items()}
        x_proj = tf.transpose(x_proj, [1, 0, 2])
        if self.attention != "none":
            x_proj += _deferred_kernel_gradient(w["context_kernel"], steps, batch, contexts, self.compute_dtype)
        if self.attention == "bahdanau":
            loop_w["attention_v"] = w["attention_v"]  # a vector: its per-step gradient is cheap
        for name in [n for n in loop_w if n.endswith("kernel")]:
            loop_w[f"{name}_t"] = tf.transpose(loop_w[name])
        x_proj_t, offset_t = _steps_time_major(x_proj), _steps_time_major(state_offset)

        def array(width=None) -> tf.TensorArray:
            return tf.TensorArray(tf.float32, size=steps, element_shape=tf.TensorShape([None, width]))

        def body(t, h, states, attention, context_steps):
            h_new, weights, context = self._step(
                x_proj_t.read(t), h, encoded, {**loop_w, "state_bias": offset_t.read(t)})
            if with_attention:
                attention = attention.write(t, weights)
            return t + 1, h_new, states.write(t, h_new), attention, context_steps.write(t, context)

        loop_vars = (tf.constant(0), encoded.final_state, array(self.units), array(),
                     array(self.units if self.attention != "none" else 0))
        _, _, states_ta, attention_ta, context_ta = tf.while_loop(
            lambda t, *_: t < steps, body, loop_vars, maximum_iterations=steps)
        time_major_states = states_ta.stack()
        # The state each step started from: the encoder's final state, then the decoder's own.
        previous["x"] = tf.concat([encoded.final_state[None], time_major_states[:-1]], axis=0)
        contexts["x"] = context_ta.stack()
        states = tf.ensure_shape(tf.transpose(time_major_states, [1, 0, 2]), [None, None, self.units])
        if not with_attention:
            return states, None
        return states, tf.transpose(attention_ta.stack(), [1, 0, 2])

    def __call__(self, source_ids: tf.Tensor, source_length: tf.Tensor, target_input: tf.Tensor,
                 training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """Teacher forcing: (logits [B, T, V], attention [B, T, S]); the projection is one batched matmul."""
        del training  # no dropout: kept for the conventional call signature
        encoded = self.encode(source_ids, source_length)
        states, attention = self.decoder_states(encoded, target_input)
        return self.project(states), attention
