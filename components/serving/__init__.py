"""The client side of an exported model: load a SavedModel as a server would and translate with it.

A library shared by the evaluator, the pusher's check, `seq2seq translate` and the tests; it knows
the ExportedModel artifact, not the component that wrote it.
"""
from components.serving.client import BeamOptions, Translation, Translator, load_translator, read_model_card

__all__ = ["BeamOptions", "Translation", "Translator", "load_translator", "read_model_card"]
