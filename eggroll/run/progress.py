"""The one progress display of every command (rich): a bar, done / total, elapsed, remaining, a status line."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()

__all__ = ["ProgressBar", "console"]


class ProgressBar:
    """A progress bar over ``total`` steps that starts at ``done`` (a resumed run); a no-op when disabled.

    Example:
        >>> with ProgressBar("rl CartPole-v1", total=50, enabled=False) as bar:
        ...     bar.update(1, "mean 20.0")
    """

    def __init__(self, label: str, total: int, done: int = 0, *, enabled: bool = True):
        self.label, self.total, self.done, self.enabled = label, total, done, enabled
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        columns += (TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
        self._progress = Progress(*columns, console=console, transient=False, disable=not enabled)
        self._task = self._progress.add_task(label, total=total, completed=done, status="")

    def __enter__(self) -> ProgressBar:
        self._progress.start()  # a disabled display shows nothing
        return self

    def update(self, completed: int, status: str = "") -> None:
        """Show ``completed`` steps done and a status line."""
        self._progress.update(self._task, completed=completed, status=status)

    def __exit__(self, *exc) -> None:
        self._progress.stop()
