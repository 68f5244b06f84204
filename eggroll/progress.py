"""Progress display for long runs (rich), shared by the demo and the CLI commands."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()


@contextmanager
def generation_progress(total: int, description: str = "generations"):
    """A rich progress bar with a free-text status column; yields ``update(advance, status)``."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def update(advance: int = 1, status: str = "") -> None:
            progress.update(task, advance=advance, status=status)

        yield update
