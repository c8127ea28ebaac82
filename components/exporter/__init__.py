"""Export component: a training folder -> a self-contained, servable SavedModel.

Public entry points:
- `run_export(model_dir, out, overrides=())` writes the SavedModel (components/exporter/export.py);
- `components.serving.client.load_translator(dir)` loads one for Python callers;
- `components.serving.plotting.plot_attention(...)` draws an attention heatmap;
- `components.serving.translate.translate_main(args)` is `seq2seq translate`.
"""
from components.exporter.export import run_export

__all__ = ["run_export"]
