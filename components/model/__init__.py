"""The attention seq2seq (pure TensorFlow), its attention mechanisms, training kernels and decoders.

Layout (docs/model.md): seq2seq.py the model; attention.py the mechanisms and their registry;
kernels.py the CPU training kernels beside plain references; decoding.py the decoding strategies;
state.py the tensors passed between them; ops.py and initializers.py the shared building blocks.
"""
from components.model.attention import ATTENTIONS, Attention, BahdanauAttention, LuongAttention, NoAttention
from components.model.decoding import DecodingStrategy, GreedySearch, greedy_decode
from components.model.kernels import FAST, REFERENCE, Kernels
from components.model.seq2seq import LossSums, Seq2Seq, StepOutput
from components.model.state import DecoderState, Encoded

__all__ = ["ATTENTIONS", "Attention", "BahdanauAttention", "DecoderState", "DecodingStrategy", "Encoded", "FAST",
           "GreedySearch", "Kernels", "LossSums", "LuongAttention", "NoAttention", "REFERENCE", "Seq2Seq",
           "StepOutput", "greedy_decode"]
