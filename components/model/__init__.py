"""The attention seq2seq (pure TensorFlow) and its greedy decoder, shared by trainer and exporter."""
from components.model.decoding import greedy_decode
from components.model.seq2seq import ATTENTIONS, Encoded, Seq2Seq

__all__ = ["ATTENTIONS", "Encoded", "Seq2Seq", "greedy_decode"]
