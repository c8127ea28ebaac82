"""The shared core every component builds on: config types, errors, one file layer, artifact handles.

It imports nothing above it (only `schemas`); tests/test_layers.py checks that."""
