"""Small file helpers shared by the runner and the components (all through tf.io.gfile)."""
from __future__ import annotations

import json
import posixpath
from typing import Any


def write_json_atomic(path: str, data: Any) -> None:
    """Write JSON to PATH.tmp, then rename it over PATH, so readers never see a partial file."""
    import tensorflow as tf

    tf.io.gfile.makedirs(posixpath.dirname(path))
    tmp = f"{path}.tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)
