"""Export component: a training folder -> a self-contained, servable SavedModel.

Public entry points:
- `run_export(model_dir, out, overrides=())` writes the SavedModel (components/exporter/export.py);
- `components.exporter.serving.load_translator(dir)` loads one for Python callers;
- `components.exporter.plotting.plot_attention(...)` draws an attention heatmap;
- `components.exporter.translate.translate_main(args)` is `seq2seq translate`.
"""
from components.exporter.export import run_export

__all__ = ["run_export"]
