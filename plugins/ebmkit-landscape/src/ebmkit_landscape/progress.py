"""Rich progress bars for :func:`ebmkit_landscape.map_landscape` (one bar per stage)."""

from __future__ import annotations

from typing import Any

from .mapping import Progress


class RichProgress(Progress):
    """One rich progress bar per stage (minima, bracket rungs, mapping, barriers)."""

    def __init__(self, console: Any = None):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bars

        self.bars = Bars(TextColumn("{task.description:<18}"), BarColumn(), MofNCompleteColumn(),
                         TimeElapsedColumn(), TimeRemainingColumn(), console=console)
        self.task = None

    def __enter__(self):
        self.bars.__enter__()
        return self

    def __exit__(self, *exc):
        self._finish()
        return self.bars.__exit__(*exc)

    def _finish(self) -> None:
        if self.task is not None:
            t = self.bars.tasks[self.task]
            self.bars.update(self.task, completed=t.total)

    def stage(self, name: str, total: int) -> None:
        self._finish()
        self.task = self.bars.add_task(name, total=max(int(total), 1) if total else 0)

    def advance(self, n: int = 1) -> None:
        if self.task is not None and n:
            self.bars.advance(self.task, n)
