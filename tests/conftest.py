"""Suite-wide test ordering.

With `--dist=loadfile` each test file runs on one xdist worker, and a worker takes a new file when
its current one is nearly done. xdist's default order (most tests first) leaves the files with a few
long tests (whole pipeline runs, multi-process clusters) to the end, where one core runs them while
the other idles. So the slowest files come first (the Makefile passes --no-loadscope-reorder to
keep this order); the rest keep their collection order.
"""
from __future__ import annotations

# The slowest files, slowest first, as `pytest --durations=0` on 2 cores measures them.
SLOWEST_FIRST = (
    "test_export.py",
    "test_multi_worker.py",
    "test_pipeline_run.py",
    "test_trainer.py",
    "test_faults_serving.py",
    "test_preprocess_faults.py",
    "test_copy_attention.py",
    "test_trainer_resume.py",
    "test_quality_recipe.py",
    "test_translate.py",
    "test_model.py",
    "test_runner_units.py",
    "test_faults_training.py",
    "test_encode_parity.py",
    "test_test_set.py",
    "test_preprocess_tokenizers.py",
    "test_preprocess_runner.py",
    "test_run_interrupts.py",
)


def _rank(item) -> int:
    name = item.path.name
    return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)


def pytest_collection_modifyitems(session, config, items) -> None:
    items.sort(key=_rank)  # stable: within a file, and among the other files, the order is kept
