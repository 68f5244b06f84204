"""The one progress display of every command (rich): a bar, done / total, elapsed, remaining, a status line."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()

__all__ = ["ProgressBar", "console"]


def _columns() -> tuple:
    return (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )


class ProgressBar:
    """A progress bar over ``total`` steps that starts at ``done`` (a resumed run); a no-op when disabled.

    Example:
        >>> with ProgressBar("rl CartPole-v1", total=50, enabled=False) as bar:
        ...     bar.update(1, "mean 20.0")
    """

    def __init__(self, label: str, total: int, done: int = 0, *, enabled: bool = True):
        self.label, self.total, self.done, self.enabled = label, total, done, enabled
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            self._progress = Progress(*_columns(), console=console, transient=False)
            self._progress.__enter__()
            self._task = self._progress.add_task(self.label, total=self.total, completed=self.done, status="")
        return self

    def update(self, completed: int, status: str = "") -> None:
        """Show ``completed`` steps done and a status line."""
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, status=status)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None
