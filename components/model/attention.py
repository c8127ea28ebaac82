"""Attention over the encoder states: Bahdanau (additive), Luong ("general") or none.

Each mechanism, as JoeyNMT's attention classes, splits its score into a per-batch half, the keys
computed once from the encoder states (`keys`), and a per-step half (`attend`), which scores the
keys against the decoder's query, gives padded source positions exactly zero weight, and averages
the encoder states into the context vector.

The mechanisms are plain Python objects, not `tf.Module`s: their variables are attributes of the
`Seq2Seq` that owns them (created from `variable_specs`), so checkpoints and SavedModels keep the
keys `model/attention_key_kernel/...` they always had; a mechanism only reads them.
"""
from __future__ import annotations

import abc
from typing import Callable, ClassVar, Mapping, NamedTuple, Optional

import tensorflow as tf

from components.model.initializers import Initializer
from components.model.ops import dense
from components.model.state import Encoded

# Added to the scores of padded source positions; exp() of it underflows to exactly 0.
MASK_PENALTY = -1e9


class VariableSpec(NamedTuple):
    """A variable a mechanism needs: the model creates it, in this order, as `model.<attribute>`."""

    attribute: str  # the Seq2Seq attribute, hence the checkpoint key
    name: str       # the tf.Variable's name
    initial: Callable[[Initializer, int], tf.Tensor]  # (initializer, units) -> initial value


def _glorot_square(init: Initializer, units: int) -> tf.Tensor:
    return init.glorot([units, units])


def _zeros(init: Initializer, units: int) -> tf.Tensor:
    return init.zeros([units])


def _glorot_vector(init: Initializer, units: int) -> tf.Tensor:
    return init.glorot([units, 1])[:, 0]


class Attention(abc.ABC):
    """The interface the decoder uses; subclasses define the score."""

    # True: the mechanism returns a context vector, which the decoder GRU reads beside the embedding.
    has_context: ClassVar[bool] = True
    # True: the query is a projection of the decoder state that the decoder computes in its own
    # state matmul (`query_projection`), so both share one matmul per step.
    projects_query: ClassVar[bool] = False
    variable_specs: ClassVar[tuple[VariableSpec, ...]] = ()

    def __init__(self, variables: Mapping[str, tf.Variable], compute_dtype: tf.DType = tf.float32):
        self._variables = dict(variables)
        self.compute_dtype = compute_dtype

    def keys(self, states: tf.Tensor) -> tf.Tensor:
        """Encoder states [B, S, U] -> keys [B, S, K], once per batch rather than at every step."""
        return states[:, :, :0]

    def query_projection(self) -> Optional[tuple[tf.Tensor, tf.Tensor]]:
        """(kernel [U, Q], bias [Q]) for `projects_query` mechanisms, else None (the query is the state)."""
        return None

    def step_params(self) -> dict[str, tf.Tensor]:
        """The per-step weights, read once per batch and passed to every `attend`."""
        return {}

    @abc.abstractmethod
    def score(self, keys: tf.Tensor, query: tf.Tensor, params: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Keys [B, S, K], query [B, Q] -> unnormalized scores [B, S]."""

    def attend(self, query: tf.Tensor, memory: Encoded,
               params: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        """(context [B, U], weights [B, S]); padded source positions weigh exactly 0."""
        scores = tf.where(memory.mask, self.score(memory.keys, query, params), MASK_PENALTY)
        weights = tf.nn.softmax(scores, axis=-1)
        context = tf.linalg.matvec(memory.states, weights, transpose_a=True)
        return context, weights


class BahdanauAttention(Attention):
    """Additive: V·tanh(W1·enc + b1 + W2·h + b2); W1·enc + b1 are the keys."""

    projects_query = True
    variable_specs = (
        VariableSpec("attention_key_kernel", "attention_W1", _glorot_square),
        VariableSpec("attention_key_bias", "attention_b1", _zeros),
        VariableSpec("attention_query_kernel", "attention_W2", _glorot_square),
        VariableSpec("attention_query_bias", "attention_b2", _zeros),
        VariableSpec("attention_v", "attention_V", _glorot_vector),
    )

    def keys(self, states: tf.Tensor) -> tf.Tensor:
        return dense(states, self._variables["attention_key_kernel"], self.compute_dtype,
                     self._variables["attention_key_bias"])

    def query_projection(self) -> Optional[tuple[tf.Tensor, tf.Tensor]]:
        return (tf.convert_to_tensor(self._variables["attention_query_kernel"]),
                tf.convert_to_tensor(self._variables["attention_query_bias"]))

    def step_params(self) -> dict[str, tf.Tensor]:
        return {"attention_v": tf.convert_to_tensor(self._variables["attention_v"])}

    def score(self, keys: tf.Tensor, query: tf.Tensor, params: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return tf.linalg.matvec(tf.tanh(keys + query[:, None, :]), params["attention_v"])


class LuongAttention(Attention):
    """Multiplicative, "general": h·Wa·enc; enc·Wa are the keys."""

    variable_specs = (VariableSpec("attention_key_kernel", "attention_Wa", _glorot_square),)

    def keys(self, states: tf.Tensor) -> tf.Tensor:
        return dense(states, self._variables["attention_key_kernel"], self.compute_dtype)

    def score(self, keys: tf.Tensor, query: tf.Tensor, params: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return tf.linalg.matvec(keys, query)


class NoAttention(Attention):
    """The seed's first model: no context vector; the attention weights are all zeros."""

    has_context = False

    def score(self, keys: tf.Tensor, query: tf.Tensor, params: Mapping[str, tf.Tensor]) -> tf.Tensor:
        return tf.zeros(tf.shape(keys)[:2], tf.float32)

    def attend(self, query: tf.Tensor, memory: Encoded,
               params: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        return query[:, :0], tf.zeros(tf.shape(memory.mask), tf.float32)


# The config's `model.attention` -> its mechanism.
ATTENTIONS: dict[str, type[Attention]] = {
    "bahdanau": BahdanauAttention,
    "luong": LuongAttention,
    "none": NoAttention,
}
