"""The project's data contracts: the raw record rules and the TFRecord feature spec.

Preprocessing writes examples with `feature_spec`, and the trainer parses them with the same spec,
so the two can never disagree about a feature's name, type or width.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

RECORD_SCHEMA = "record.schema.json"
EXAMPLES_SCHEMA = "examples.schema.json"


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    return json.loads(resources.files(__name__).joinpath(name).read_text(encoding="utf-8"))


def reject_reasons() -> tuple[str, ...]:
    """Every reason a record may be quarantined for."""
    return tuple(load_schema(RECORD_SCHEMA)["rules"])


def quarantine_raw_chars() -> int:
    return int(load_schema(RECORD_SCHEMA)["quarantine_raw_chars"])


def feature_shapes(max_source_length: int, max_target_length: int) -> dict[str, list[int]]:
    """Concrete feature shapes for the given preprocess widths."""
    sizes = {"max_source_length": max_source_length, "max_target_length": max_target_length}
    features = load_schema(EXAMPLES_SCHEMA)["features"]
    return {name: [sizes[dim] for dim in spec["shape"]] for name, spec in features.items()}


def feature_spec(max_source_length: int, max_target_length: int) -> dict[str, Any]:
    """`tf.io.parse_example` spec for the TFRecords written with these widths."""
    import tensorflow as tf

    features = load_schema(EXAMPLES_SCHEMA)["features"]
    shapes = feature_shapes(max_source_length, max_target_length)
    return {
        name: tf.io.FixedLenFeature(shapes[name], tf.dtypes.as_dtype(spec["dtype"]), spec.get("default"))
        for name, spec in features.items()
    }
