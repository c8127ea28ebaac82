"""What `seq2seq run` shows of its components while they run (pipeline/runner.py uses it).

Light on purpose: rich and logging only, no TensorFlow or Beam (pipeline.pipeline imports every
component), so the console tests start it in a fresh process in a fraction of a second.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Optional

logger = logging.getLogger("pipeline.runner")  # its lines are the runner's

SUCCEEDED, CACHED, SKIPPED = "succeeded", "cached", "skipped"  # as in pipeline.runner

# The bar's resolution: a component's `progress` record gives a fraction in [0, 1].
BAR_STEPS = 1000
STAGE_WIDTH = 90  # characters of a log message shown as the running component's stage


def _rich_console() -> Any:
    """The terminal console logging writes to (pipeline/cli.py's RichHandler), or None."""
    from rich.logging import RichHandler

    console = next((h.console for h in logging.getLogger().handlers if isinstance(h, RichHandler)), None)
    return console if console is not None and console.is_terminal else None


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _Hook(logging.Handler):
    """Feeds the records logged while a component runs to the live display."""

    def __init__(self, progress: "Progress"):
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.progress.on_record(record)
        except Exception:  # noqa: BLE001 - the display never fails the run
            self.handleError(record)


class Progress:
    """What `seq2seq run` shows of its components while they run.

    Every component's end is a log line (`train: succeeded in 3m35s`), on the console and in run.log.
    On a terminal, when logging goes through Rich (pipeline/cli.py), a live table on the same console
    sits below the log lines, which scroll above it: a row per component with its elapsed time, the
    running one's bar, and its stage, the last line its code logged; the trainer's progress records
    (their `progress` attribute, see components/trainer/training.py) fill the bar with its steps and
    time budget. The table is gone once the run ends (its summary follows). Anywhere else (a pipe, a
    file) there are only the log lines."""

    def __init__(self, names: list[str]):
        self.running: Optional[str] = None
        self._started: dict[str, float] = {}
        self._measured: set[str] = set()
        self._hook = _Hook(self)
        self._progress: Any = None
        console = _rich_console()
        if console is None:
            return
        from rich.progress import BarColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress
        from rich.text import Text

        class Spinner(SpinnerColumn):  # only the running component spins
            def render(self, task: Any) -> Any:
                return super().render(task) if task.started and not task.finished else Text(" ")

        self._progress = RichProgress(Spinner(), TextColumn("{task.description:<11}"), BarColumn(bar_width=20),
                                      TimeElapsedColumn(), TextColumn("{task.fields[state]}"),
                                      console=console, transient=True, redirect_stdout=False)  # stdout: the summary's
        self._tasks = {n: self._progress.add_task(n, total=1, state="waiting", start=False) for n in names}

    def __enter__(self) -> "Progress":
        logging.getLogger().addHandler(self._hook)
        if self._progress is not None:
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        logging.getLogger().removeHandler(self._hook)
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start(self, name: str) -> None:
        self.running, self._started[name] = name, time.time()
        if self._progress is not None:
            self._progress.start_task(self._tasks[name])
            self._progress.update(self._tasks[name], total=None, state="running")  # a pulsing bar until measured

    def done(self, name: str, what: str, why: Optional[str] = None) -> None:
        """NAME ended as WHAT (succeeded, failed, interrupted, cached, skipped), WHY when it says more."""
        started = self._started.pop(name, None)
        if self.running == name:
            self.running = None
        if what != CACHED:  # a cache hit has its own line, naming the run it reuses
            took = f" after {_duration(time.time() - started)}" if started is not None else ""
            if what == SUCCEEDED:
                took = took.replace(" after ", " in ")
            logger.info("%s: %s%s%s", name, what, took, f" ({why})" if why else "")
        if self._progress is not None:
            task = self._tasks[name]
            if what in (SUCCEEDED, CACHED, SKIPPED):
                self._progress.update(task, total=1, completed=1)
            elif self._progress.tasks[task].total is None:
                self._progress.update(task, total=1, completed=0)
            self._progress.update(task, state=what)
            self._progress.stop_task(task)

    def on_record(self, record: logging.LogRecord) -> None:
        name = self.running
        if self._progress is None or name is None:
            return
        task = self._tasks[name]
        progress = getattr(record, "progress", None)
        if isinstance(progress, dict):
            self._measured.add(name)
            fraction = min(max(float(progress.get("fraction", 0.0)), 0.0), 1.0)
            self._progress.update(task, total=BAR_STEPS, completed=round(fraction * BAR_STEPS),
                                  state=str(progress.get("text", "")))
        elif name not in self._measured and record.name.startswith("components."):
            stage = record.getMessage().strip().split("\n", 1)[0]
            if stage:
                self._progress.update(task, state=stage[:STAGE_WIDTH] + ("…" if len(stage) > STAGE_WIDTH else ""))
