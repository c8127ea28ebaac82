"""The attention seq2seq in plain TensorFlow: embeddings, a GRU encoder, a GRU decoder with
Bahdanau (additive), Luong ("general", multiplicative) or no attention, and a vocabulary projection.

Pure `tf.Module` + `tf.Variable` (no Keras layers), so a SavedModel of it loads with a plain
`import tensorflow` and `saved_model_cli` can read it. Every variable is created in `__init__`, as
a direct attribute of the model (the attention mechanism only reads its own), so a checkpoint
restores into a freshly built model and its keys do not depend on how the code is organized.

Shapes: B batch, S source steps, T target steps, E embedding_dim, U units, V target vocabulary.
The decoder step, as in the seed: attention over the encoder states from the previous decoder
state, the context vector concatenated with the token embedding as the GRU input, the GRU state
projected to the vocabulary. Source padding gets zero attention weight.

What runs where: `encode` + `initial_state` + `step` are the decoding API (components/model/
decoding.py); `compute_loss` is the training loss, with the training kernels by default
(components/model/kernels.py); `__call__` is teacher forcing.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

import tensorflow as tf

from components.core.vocabulary import SPECIAL_TOKENS, UNK_ID
from components.model.attention import ATTENTIONS, Attention
from components.model.initializers import Initializer
from components.model.kernels import FAST, PREVIOUS_STATE, REFERENCE, Kernels, LoopKernel, Matmul
from components.model.ops import dense, gru_cell, matmul, project
from components.model.state import DecoderState, Encoded

PRECISIONS = ("float32", "mixed_bfloat16")
FIRST_WORD_ID = len(SPECIAL_TOKENS)
# The log-probability of an extended id no source token holds (copy attention): finite, like the
# decoders' forbidden tokens, so that sums and softmaxes stay free of NaN.
IMPOSSIBLE = -1e9


def mechanism_has_context(attention: str) -> bool:
    return ATTENTIONS[attention].has_context


class LossSums(NamedTuple):
    """Sums over a batch's real target tokens, so that sub-batches and replicas add up."""

    loss: tf.Tensor     # summed token cross-entropy
    tokens: tf.Tensor   # float32 count of real target tokens (<eos> included, padding not)
    correct: tf.Tensor  # tokens whose label has the top logit


class StepOutput(NamedTuple):
    logits: tf.Tensor     # [B, V]
    state: DecoderState
    attention: tf.Tensor  # [B, S] (zeros without attention)


class Noise(NamedTuple):
    """The model's training noise: dropout on embeddings and GRU outputs, and word dropout (a real
    token's id replaced by <unk>). `seeded` binds a stateless seed; without one both are identities,
    so evaluation, decoding and the exported model are deterministic."""

    dropout_rate: float
    word_dropout_rate: float
    seed: Optional[tf.Tensor] = None

    def seeded(self, seed: Optional[tf.Tensor], salt: int) -> "Noise":
        if seed is None:
            return self._replace(seed=None)
        return self._replace(seed=tf.random.experimental.stateless_fold_in(seed, salt))

    def dropout(self, x: tf.Tensor, salt: int) -> tf.Tensor:
        if self.seed is None or self.dropout_rate <= 0:
            return x
        return tf.nn.experimental.stateless_dropout(
            x, self.dropout_rate, tf.random.experimental.stateless_fold_in(self.seed, salt))

    def word_dropout(self, ids: tf.Tensor) -> tf.Tensor:
        """Real tokens become <unk>; <pad>, <bos> and <eos> stay (ids below the first word id)."""
        if self.seed is None or self.word_dropout_rate <= 0:
            return ids
        draw = tf.random.stateless_uniform(tf.shape(ids), tf.random.experimental.stateless_fold_in(self.seed, 0))
        dropped = tf.logical_and(draw < self.word_dropout_rate, ids >= FIRST_WORD_ID)
        return tf.where(dropped, tf.constant(UNK_ID, ids.dtype), ids)


class Seq2Seq(tf.Module):
    """GRU encoder-decoder with `bahdanau`, `luong` or `none` attention."""

    def __init__(self, source_vocab_size: int, target_vocab_size: int, embedding_dim: int, units: int,
                 attention: str, seed: int = 0, precision: str = "float32", name: str = "seq2seq",
                 bidirectional: bool = False, dropout: float = 0.0, word_dropout: float = 0.0,
                 copy_attention: bool = False):
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
        self.bidirectional = bool(bidirectional)
        self.copy_attention = bool(copy_attention)
        if self.copy_attention and not mechanism_has_context(attention):
            raise ValueError("copy_attention copies through the attention weights: it needs an attention")
        # Applied only when `compute_loss` is given a training seed (see `Noise`).
        self.noise = Noise(float(dropout), float(word_dropout))
        mechanism = ATTENTIONS[attention]
        with self.name_scope:
            self._create_variables(mechanism, Initializer(seed))
        # A plain object (not tracked): it reads the variables above, it does not own them.
        self.attention_mechanism: Attention = mechanism(
            {spec.attribute: getattr(self, spec.attribute) for spec in mechanism.variable_specs}, self.compute_dtype)

    # Variables with one row (axis 0) per vocabulary entry, by side: a warm start across vocabulary
    # changes copies them token by token (components/trainer/warm_start.py).
    VOCABULARY_ROWS = {"source_embedding": "source", "target_embedding": "target", "output_kernel": "target",
                       "output_bias": "target"}

    def _create_variables(self, mechanism: type[Attention], init: Initializer) -> None:
        """In a fixed order: each initializer draws the next seed, so the order is the model."""
        E, U = self.embedding_dim, self.units

        def var(value: tf.Tensor, name: str) -> tf.Variable:
            return tf.Variable(value, name=name, trainable=True)

        def recurrent() -> tf.Tensor:
            return tf.concat([init.orthogonal(U, U) for _ in range(3)], axis=1)

        self.source_embedding = var(init.uniform([self.source_vocab_size, E], 0.05), "source_embedding")
        self.target_embedding = var(init.uniform([self.target_vocab_size, E], 0.05), "target_embedding")
        self.encoder_kernel = var(init.glorot([E, 3 * U]), "encoder_kernel")
        self.encoder_recurrent_kernel = var(recurrent(), "encoder_recurrent_kernel")
        self.encoder_bias = var(init.zeros([3 * U]), "encoder_bias")
        self.encoder_recurrent_bias = var(init.zeros([3 * U]), "encoder_recurrent_bias")
        if self.bidirectional:
            self.backward_encoder_kernel = var(init.glorot([E, 3 * U]), "backward_encoder_kernel")
            self.backward_encoder_recurrent_kernel = var(recurrent(), "backward_encoder_recurrent_kernel")
            self.backward_encoder_bias = var(init.zeros([3 * U]), "backward_encoder_bias")
            self.backward_encoder_recurrent_bias = var(init.zeros([3 * U]), "backward_encoder_recurrent_bias")
            self.bridge_kernel = var(init.glorot([2 * U, U]), "bridge_kernel")
            self.bridge_bias = var(init.zeros([U]), "bridge_bias")
        # The decoder GRU input is [context; embedding]; its kernel is kept in two parts so the
        # embedding part is applied to all target steps in one matmul under teacher forcing.
        self.decoder_kernel = var(init.glorot([E, 3 * U]), "decoder_kernel")
        if mechanism.has_context:
            self.decoder_context_kernel = var(init.glorot([U, 3 * U]), "decoder_context_kernel")
        self.decoder_recurrent_kernel = var(recurrent(), "decoder_recurrent_kernel")
        self.decoder_bias = var(init.zeros([3 * U]), "decoder_bias")
        self.decoder_recurrent_bias = var(init.zeros([3 * U]), "decoder_recurrent_bias")
        for spec in mechanism.variable_specs:
            setattr(self, spec.attribute, var(spec.initial(init, U), spec.name))
        # Stored [V, U], one row per target token: both `project` (states · kernelᵀ) and the fused
        # training loss (kernel · statesᵀ) are faster on the CPU with this layout than with [U, V]
        # (docs/training.md, "The train step").
        self.output_kernel = var(init.glorot([self.target_vocab_size, U]), "output_kernel")
        self.output_bias = var(init.zeros([self.target_vocab_size]), "output_bias")
        if self.copy_attention:
            # The generation gate p_gen = sigmoid(w · [decoder state; context] + b); created last, so
            # every other variable draws the initial value it has without copy attention.
            self.copy_gate_kernel = var(init.glorot([2 * U, 1])[:, 0], "copy_gate_kernel")
            self.copy_gate_bias = var(init.zeros([1]), "copy_gate_bias")

    @classmethod
    def from_config(cls, model_config, source_vocab_size: int, target_vocab_size: int,
                    seed: int = 0) -> "Seq2Seq":
        """Build from a `components.core.config.ModelConfig`."""
        return cls(source_vocab_size, target_vocab_size, model_config.embedding_dim, model_config.units,
                   model_config.attention, seed=seed, precision=model_config.precision,
                   bidirectional=model_config.bidirectional, dropout=model_config.dropout,
                   word_dropout=model_config.word_dropout, copy_attention=model_config.copy_attention)

    def shape_summary(self) -> dict[str, object]:
        """The hyperparameters a checkpoint depends on (compared on restore)."""
        return {"source_vocab_size": self.source_vocab_size, "target_vocab_size": self.target_vocab_size,
                "embedding_dim": self.embedding_dim, "units": self.units, "attention": self.attention,
                "bidirectional": self.bidirectional, "copy_attention": self.copy_attention,
                "precision": self.precision}

    # ---------------------------------------------------------------- encoder

    def encode(self, source_ids: tf.Tensor, source_length: tf.Tensor, kernels: Kernels = REFERENCE,
               seed: Optional[tf.Tensor] = None, copy_ids: Optional[tf.Tensor] = None) -> Encoded:
        """[B, S] int64 ids and [B] lengths -> `Encoded` (states, final state, mask, attention keys,
        copy ids). A copy-attention model needs `copy_ids` [B, S], the source tokens' extended
        target ids (components/text/copying.py).

        With a training `seed`, word dropout on the ids and dropout on the embeddings and states.
        """
        source_ids = tf.convert_to_tensor(source_ids, tf.int64)
        source_length = tf.convert_to_tensor(source_length, tf.int64)
        noise = self.noise.seeded(seed, salt=0)
        steps = tf.shape(source_ids)[1]
        mask = tf.sequence_mask(source_length, steps)
        embedded = noise.dropout(tf.gather(self.source_embedding, noise.word_dropout(source_ids)), 1)
        states, final_state = self._encoder_gru(embedded, source_length, kernels, backward=False)
        if self.bidirectional:
            # The backward GRU reads each row's real tokens last to first: reverse_sequence keeps
            # the padding at the end, so the same final-state read and masking apply.
            reversed_embedded = tf.reverse_sequence(embedded, source_length, seq_axis=1, batch_axis=0)
            backward, backward_final = self._encoder_gru(reversed_embedded, source_length, kernels, backward=True)
            states = states + tf.reverse_sequence(backward, source_length, seq_axis=1, batch_axis=0)
            final_state = tf.tanh(dense(tf.concat([final_state, backward_final], axis=-1), self.bridge_kernel,
                                        self.compute_dtype, self.bridge_bias))
            final_state = tf.where((source_length > 0)[:, None], final_state, 0.0)
        states = noise.dropout(states, 2) * tf.cast(mask, tf.float32)[:, :, None]
        if self.copy_attention:
            if copy_ids is None:
                raise ValueError("a copy-attention model needs the source's copy ids (source_copy_ids)")
            copy_ids = tf.convert_to_tensor(copy_ids, tf.int64)
        else:
            copy_ids = source_ids[:, :0]
        return Encoded(states, final_state, mask, self.attention_mechanism.keys(states), copy_ids)

    def _encoder_gru(self, embedded: tf.Tensor, source_length: tf.Tensor, kernels: Kernels,
                     backward: bool) -> tuple[tf.Tensor, tf.Tensor]:
        """One direction's GRU over [B, S, E] embeddings: (states [B, S, U], final state [B, U])."""
        prefix = "backward_encoder" if backward else "encoder"
        kernel, recurrent_kernel = getattr(self, f"{prefix}_kernel"), getattr(self, f"{prefix}_recurrent_kernel")
        bias, recurrent_bias = getattr(self, f"{prefix}_bias"), getattr(self, f"{prefix}_recurrent_bias")
        batch, steps = tf.shape(embedded)[0], tf.shape(embedded)[1]
        # x·W for every source step in one matmul; only h·U stays inside the recurrence.
        x_proj = dense(embedded, kernel, self.compute_dtype, bias)
        sequences = {"x_proj": tf.transpose(x_proj, [1, 0, 2]),
                     "recurrent_bias": tf.broadcast_to(recurrent_bias, [steps, batch, 3 * self.units])}
        loop_kernels = {"recurrent_kernel": LoopKernel(
            tf.convert_to_tensor(recurrent_kernel), PREVIOUS_STATE, "recurrent_bias")}
        # No masking inside the loop: padding only comes after a row's real tokens, so the final
        # state is read at each row's last real position afterwards, and padded states are zeroed.
        time_major = kernels.recurrence(_encoder_step, sequences, tf.zeros([batch, self.units]), (),
                                        loop_kernels, {}, self.compute_dtype)["state"]
        states = tf.ensure_shape(tf.transpose(time_major, [1, 0, 2]), [None, None, self.units])
        last = tf.gather(states, tf.maximum(source_length - 1, 0), batch_dims=1)
        final_state = tf.where((source_length > 0)[:, None], last, 0.0)
        return states, final_state

    # ---------------------------------------------------------------- decoder

    def step_weights(self) -> dict[str, tf.Tensor]:
        """The decoder step's weights, read once per batch.

        A `tf.while_loop` body that read the variables itself would make the gradient keep a copy
        of every kernel for every step. When the attention projects its query (Bahdanau's W2), that
        projection and the recurrent kernel both multiply the previous state, so they are fused
        into one [U, 3U + Q] matmul.
        """
        kernel = tf.convert_to_tensor(self.decoder_recurrent_kernel)
        bias = tf.convert_to_tensor(self.decoder_recurrent_bias)
        query = self.attention_mechanism.query_projection()
        if query is not None:
            kernel, bias = tf.concat([kernel, query[0]], axis=1), tf.concat([bias, query[1]], axis=0)
        weights = {"state_kernel": kernel, "state_bias": bias, **self.attention_mechanism.step_params()}
        if self.attention_mechanism.has_context:
            weights["context_kernel"] = tf.convert_to_tensor(self.decoder_context_kernel)
        return weights

    def _decoder_cell(self, x_proj: tf.Tensor, hidden: tf.Tensor, state_bias: tf.Tensor, memory: Encoded,
                      params: Mapping[str, tf.Tensor], multiply: Matmul) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """One decoder GRU step from the embedding projection: (new hidden, attention weights, context).

        The one place the step is written: decoding (`step`) and teacher forcing (`decoder_states`,
        with either kernels) differ only in how they multiply by the kernels (`multiply`).
        """
        mechanism = self.attention_mechanism
        state_proj = multiply("state_kernel", hidden) + state_bias
        if mechanism.projects_query:
            inner, query = tf.split(state_proj, [3 * self.units, -1], axis=-1)
        else:
            inner, query = state_proj, hidden
        context, weights = mechanism.attend(query, memory, params)
        if mechanism.has_context:
            x_proj = x_proj + multiply("context_kernel", context)
        return gru_cell(x_proj, inner, hidden), weights, context

    def initial_state(self, encoded: Encoded) -> DecoderState:
        """The decoder starts from the encoder's final state."""
        return DecoderState(encoded.final_state, encoded, self.step_weights())

    def step(self, previous_ids: tf.Tensor, state: DecoderState) -> StepOutput:
        """[B] previous tokens -> (logits [B, V], the next state, attention weights [B, S]).

        With copy attention the logits are [B, V + S], the log-probabilities of the extended
        vocabulary (components/text/copying.py), and a previous extended id reads as <unk>.
        """
        weights = state.weights
        previous_ids = tf.convert_to_tensor(previous_ids, tf.int64)
        if self.copy_attention:
            previous_ids = tf.where(previous_ids >= self.target_vocab_size, tf.constant(UNK_ID, tf.int64), previous_ids)
        embedded = tf.gather(self.target_embedding, previous_ids)
        x_proj = matmul(embedded, self.decoder_kernel, self.compute_dtype) + self.decoder_bias

        def multiply(name: str, x: tf.Tensor) -> tf.Tensor:
            return matmul(x, weights[name], self.compute_dtype)

        hidden, attention, context = self._decoder_cell(x_proj, state.hidden, weights["state_bias"], state.memory,
                                                        weights, multiply)
        logits = self.project(hidden)
        if self.copy_attention:
            logits = self._extended_log_probs(logits, hidden, context, attention, state.memory.copy_ids)
        return StepOutput(logits, state._replace(hidden=hidden), attention)

    def _generation_gate(self, hidden: tf.Tensor, context: tf.Tensor) -> tf.Tensor:
        """p_gen [N] from decoder states and context vectors [N, U]."""
        features = tf.concat([hidden, context], axis=-1)
        return tf.sigmoid(tf.linalg.matvec(features, self.copy_gate_kernel) + self.copy_gate_bias)

    def _extended_log_probs(self, logits: tf.Tensor, hidden: tf.Tensor, context: tf.Tensor, attention: tf.Tensor,
                            copy_ids: tf.Tensor) -> tf.Tensor:
        """log(p_gen · softmax(logits) + (1 - p_gen) · attention summed per copy id): [B, V + S]."""
        gate = self._generation_gate(hidden, context)[:, None]
        batch, source_steps = tf.shape(copy_ids)[0], tf.shape(copy_ids)[1]
        width = self.target_vocab_size + source_steps
        generated = tf.pad(gate * tf.nn.softmax(logits, axis=-1), [[0, 0], [0, source_steps]])
        rows = tf.cast(tf.range(batch)[:, None] * width, tf.int64)
        copied = tf.math.unsorted_segment_sum(tf.reshape((1.0 - gate) * attention, [-1]),
                                              tf.reshape(rows + copy_ids, [-1]), batch * width)
        mixture = generated + tf.reshape(copied, [batch, width])
        return tf.where(mixture > 0, tf.math.log(tf.maximum(mixture, 1e-30)), IMPOSSIBLE)

    def decode_step(self, token_ids: tf.Tensor, state: tf.Tensor, encoded: Encoded,
                    step_weights: Optional[dict[str, tf.Tensor]] = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """`step` on a bare hidden state [B, U]: (logits [B, V], new hidden [B, U], attention [B, S])."""
        weights = step_weights if step_weights is not None else self.step_weights()
        logits, new_state, attention = self.step(token_ids, DecoderState(state, encoded, weights))
        return logits, new_state.hidden, attention

    def project(self, states: tf.Tensor) -> tf.Tensor:
        """Decoder states [..., U] -> vocabulary logits [..., V], one matmul over all leading dims."""
        flat = tf.reshape(states, [-1, self.units])
        logits = project(flat, self.output_kernel, self.output_bias, self.compute_dtype)
        return tf.reshape(logits, tf.concat([tf.shape(states)[:-1], [self.target_vocab_size]], 0))

    def decoder_states(self, encoded: Encoded, target_input: tf.Tensor, with_attention: bool = True,
                       kernels: Kernels = REFERENCE, seed: Optional[tf.Tensor] = None,
                       with_context: bool = False) -> tuple[tf.Tensor, Any]:
        """Teacher forcing: [B, T] decoder inputs -> (states [B, T, U], attention [B, T, S] or None;
        with `with_context`, (attention, context vectors [B, T, U])).

        With a training `seed`, word dropout on the inputs and dropout on the embeddings and states.
        """
        target_input = tf.convert_to_tensor(target_input, tf.int64)
        if self.copy_attention:  # a copied (extended) id is read as <unk>
            target_input = tf.where(target_input >= self.target_vocab_size, tf.constant(UNK_ID, tf.int64), target_input)
        noise = self.noise.seeded(seed, salt=1)
        batch, steps = tf.shape(target_input)[0], tf.shape(target_input)[1]
        embedded = noise.dropout(tf.gather(self.target_embedding, noise.word_dropout(target_input)), 1)
        x_proj = dense(embedded, self.decoder_kernel, self.compute_dtype, self.decoder_bias)
        params = self.step_weights()
        state_kernel, state_bias = params.pop("state_kernel"), params.pop("state_bias")
        sequences = {"x_proj": tf.transpose(x_proj, [1, 0, 2]),
                     "state_bias": tf.broadcast_to(state_bias, tf.stack([steps, batch, tf.shape(state_bias)[0]]))}
        loop_kernels = {"state_kernel": LoopKernel(state_kernel, PREVIOUS_STATE, "state_bias")}
        if self.attention_mechanism.has_context:
            loop_kernels["context_kernel"] = LoopKernel(params.pop("context_kernel"), "context", "x_proj")

        def step(inputs, hidden, memory, multiply):
            hidden, attention, context = self._decoder_cell(
                inputs["x_proj"], hidden, inputs["state_bias"], memory[0], memory[1], multiply)
            return hidden, {"attention": attention, "context": context}

        widths = {"attention": None, "context": self.units} if with_context else {"attention": None}
        outputs = kernels.recurrence(step, sequences, encoded.final_state, (encoded, params), loop_kernels,
                                     widths if with_attention else {}, self.compute_dtype)
        states = noise.dropout(tf.ensure_shape(tf.transpose(outputs["state"], [1, 0, 2]), [None, None, self.units]), 2)
        if not with_attention:
            return states, None
        attention = tf.transpose(outputs["attention"], [1, 0, 2])
        if with_context:
            return states, (attention, tf.transpose(outputs["context"], [1, 0, 2]))
        return states, attention

    # ---------------------------------------------------------------- training

    def compute_loss(self, batch: Mapping[str, tf.Tensor], kernels: Kernels = FAST, seed: Optional[tf.Tensor] = None,
                     label_smoothing: float = 0.0) -> LossSums:
        """Masked token cross-entropy under teacher forcing, summed over the real target tokens.

        `batch` has the trainer's features: source_ids, source_length, target_input, target_output,
        target_length. Only the real decoder positions are projected to the vocabulary. `seed` (an
        int [2] tensor) turns on the model's training noise (dropout, word dropout), drawn
        deterministically from it; `label_smoothing` smooths the targets. Without them the loss
        is the plain cross-entropy of the deterministic model, the one that is exported.
        """
        if self.copy_attention:
            return self._copy_loss(batch, kernels, seed, label_smoothing)
        encoded = self.encode(batch["source_ids"], batch["source_length"], kernels, seed=seed)
        states, _ = self.decoder_states(encoded, batch["target_input"], with_attention=False, kernels=kernels,
                                        seed=seed)
        mask = tf.sequence_mask(batch["target_length"], tf.shape(batch["target_output"])[1])
        losses, correct = kernels.cross_entropy(tf.boolean_mask(states, mask),
                                                tf.boolean_mask(batch["target_output"], mask),
                                                self.output_kernel, self.output_bias, self.compute_dtype,
                                                label_smoothing)
        return LossSums(tf.reduce_sum(losses), tf.cast(tf.size(losses), tf.float32), tf.reduce_sum(correct))

    def _copy_loss(self, batch: Mapping[str, tf.Tensor], kernels: Kernels, seed: Optional[tf.Tensor],
                   label_smoothing: float) -> LossSums:
        """The pointer-generator loss: -log(p_gen · P_vocab(y) + (1 - p_gen) · Σ attention on source
        tokens with y's extended id), y from target_copy_output; label smoothing applies to the
        generation distribution."""
        encoded = self.encode(batch["source_ids"], batch["source_length"], kernels, seed=seed,
                              copy_ids=batch["source_copy_ids"])
        states, (attention, context) = self.decoder_states(encoded, batch["target_input"], kernels=kernels,
                                                           seed=seed, with_context=True)
        labels = batch["target_copy_output"]
        mask = tf.sequence_mask(batch["target_length"], tf.shape(labels)[1])
        rows = tf.where(mask)[:, 0]
        states, attention, context = (tf.boolean_mask(x, mask) for x in (states, attention, context))
        labels, copy_ids = tf.boolean_mask(labels, mask), tf.gather(encoded.copy_ids, rows)
        logits = project(states, self.output_kernel, self.output_bias, self.compute_dtype)
        gate = self._generation_gate(states, context)
        vocab_size = self.target_vocab_size
        vocab_probs = tf.nn.softmax(logits, axis=-1)
        generated = tf.where(labels < vocab_size, tf.gather(vocab_probs, tf.minimum(labels, vocab_size - 1),
                                                            batch_dims=1), 0.0)
        copied = tf.reduce_sum(attention * tf.cast(tf.equal(copy_ids, labels[:, None]), tf.float32), axis=1)
        label_prob = gate * generated + (1.0 - gate) * copied
        losses = -tf.math.log(label_prob + 1e-9)
        if label_smoothing:
            uniform = tf.reduce_logsumexp(logits, axis=-1) - tf.reduce_mean(logits, axis=-1)
            losses = (1.0 - label_smoothing) * losses + label_smoothing * uniform
        # Correct when no token is likelier: the best generated token, or any source token's id.
        same = tf.cast(tf.equal(copy_ids[:, :, None], copy_ids[:, None, :]), tf.float32)
        copy_candidates = (1.0 - gate)[:, None] * tf.linalg.matvec(same, attention) + gate[:, None] * tf.where(
            copy_ids < vocab_size, tf.gather(vocab_probs, tf.minimum(copy_ids, vocab_size - 1), batch_dims=1), 0.0)
        best = tf.maximum(gate * tf.reduce_max(vocab_probs, axis=-1), tf.reduce_max(copy_candidates, axis=-1))
        correct = tf.cast(label_prob >= best * (1.0 - 1e-6), tf.float32)
        return LossSums(tf.reduce_sum(losses), tf.cast(tf.size(losses), tf.float32), tf.reduce_sum(correct))

    def __call__(self, source_ids: tf.Tensor, source_length: tf.Tensor, target_input: tf.Tensor,
                 training: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
        """Teacher forcing: (logits [B, T, V], attention [B, T, S]); `training` uses the training
        kernels (same values, faster gradients)."""
        kernels = FAST if training else REFERENCE
        encoded = self.encode(source_ids, source_length, kernels)
        states, attention = self.decoder_states(encoded, target_input, kernels=kernels)
        return self.project(states), attention


def _encoder_step(inputs: Mapping[str, tf.Tensor], hidden: tf.Tensor, memory: tuple,
                  multiply: Matmul) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """One encoder GRU step; its input projection x·W + b was computed for all steps at once."""
    inner = multiply("recurrent_kernel", hidden) + inputs["recurrent_bias"]
    return gru_cell(inputs["x_proj"], inner, hidden), {}
