"""What every command shares: the common options, one error line, one way to end.

Every command takes the same options with the same names and meanings
(``--out --generations --population --seed --checkpoint-every --resume
--devices --time-budget --quiet``), writes the same files into ``--out``
(``result.json``, ``metrics/``, ``checkpoints/``, its plot) through
:func:`eggroll.run.loop.run`, and exits the same way: 0 done, 2 bad input
(one line saying what to change), 130 Ctrl-C, 143 SIGTERM (both after a
checkpoint, with the hint to add ``--resume``).
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

import click
import typer
import typer.core
from typer.core import TyperGroup

from eggroll.run.progress import console

_click = getattr(typer.core, "_click", click)  # typer >= 0.24 raises its own copy of click's exceptions
_NoArgsIsHelp = getattr(_click.exceptions, "NoArgsIsHelpError", type("NoArgsIsHelpError", (Exception,), {}))


class OneLineErrors(TyperGroup):
    """The ``eggroll`` group: a usage error (a bad value, an unknown option) is one line on stderr, exit 2.

    Click would print a usage box; every command's own errors (:func:`eggroll.commands._common.fail`) are
    one ``error: ...`` line, and so are these.
    """

    def main(self, args: Any = None, prog_name: Any = None, complete_var: Any = None, standalone_mode=True, **kw):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **kw)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **kw)
        except _NoArgsIsHelp as err:
            typer.echo(err.ctx.get_help())
            sys.exit(err.exit_code)
        except _click.exceptions.ClickException as err:
            where = f" ({err.ctx.command_path} --help lists the options)" if getattr(err, "ctx", None) else ""
            typer.secho(f"error: {' '.join(err.format_message().split())}{where}", fg=typer.colors.RED, err=True)
            sys.exit(err.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # Ctrl-C outside the loop's care (before it, or a second one): say so, exit 130
            typer.secho(
                "stopped by Ctrl-C (SIGINT); what was saved before it is kept (a checkpoint: continue with the same "
                "command plus --resume)",
                fg=typer.colors.YELLOW,
                err=True,
            )
            raise typer.Exit(130) from None


def out_option(default: str | None) -> Any:
    return typer.Option(default, "--out", help="The run's folder: result.json, metrics/, checkpoints/ and the plot.")


def generations_option(default: int, unit: str = "generations") -> Any:
    return typer.Option(
        default, "--generations", min=1, help=f"{unit.capitalize()} to run in total (a resume counts those done)."
    )


def population_option(default: int, extra: str = "", minimum: int = 2) -> Any:
    return typer.Option(default, "--population", min=minimum, help=f"Population size (members per generation){extra}.")


SEED = typer.Option(0, "--seed", help="Random seed of the whole run.")
CHECKPOINT_EVERY = typer.Option(
    None,
    "--checkpoint-every",
    min=1,
    help="Checkpoint every K generations (always on SIGTERM / Ctrl-C and at the end).",
)
RESUME = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint (same settings).")
RESUME_FROM = typer.Option(
    None, "--resume-from", min=1, help="With --resume: continue from this checkpoint step (when a newer is damaged)."
)
DEVICES = typer.Option(
    "auto", "--devices", help="Split the population over devices: a number, 'all', or 'auto' (1; all if multi-process)."
)
TIME_BUDGET = typer.Option(
    None,
    "--time-budget",
    help="Seconds: stop early enough that the whole command (last evaluation, files and exit included) ends "
    "within them.",
)
END_RESERVE = 2.0
"""Seconds a ``--time-budget`` keeps free after the last generation: the plot and files, and the process's exit
(about 1-1.5 s on the 2-core CPU; the loop cannot time them in advance)."""
QUIET = typer.Option(False, "--quiet", help="No progress display.")


def _process_age() -> float:
    """Seconds since this process started (Linux ``/proc``; 0 where that cannot be read)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time, in clock ticks after boot
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


STARTED = time.perf_counter() - _process_age()  # --time-budget counts from here: the whole command fits it


def fail(message: Any) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit 2 (bad input)."""
    text = " ".join(str(message).split()) or type(message).__name__
    typer.secho(f"error: {text}", fg=typer.colors.RED, err=True)
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized():  # several processes: a peer may be dead, and JAX's
        sys.stdout.flush()  # shutdown barrier would then wait for it and abort with a C++ stack
        sys.stderr.flush()
        os._exit(2)
    raise typer.Exit(2)


def from_options(cls: Callable[..., Any], values: Mapping[str, Any], /, renamed: Mapping[str, str] = {}, **kw: Any):
    """``cls(...)`` from a command's option values: each parameter of ``cls`` that ``values`` holds by its
    own name or by the option name ``renamed`` maps to it (``{"lr": "learning_rate"}``); ``kw`` on top."""
    names = set(inspect.signature(cls).parameters)
    given = {renamed.get(k, k): v for k, v in values.items()}
    return cls(**{**{k: v for k, v in given.items() if k in names}, **kw})


def check_values(values: Mapping[str, Any]) -> None:
    """Exit 2 (one line) for a NaN or infinite number among the command's option ``values``, an ``out``
    folder that cannot be created, or a ``plot`` / ``cache`` file that cannot be written; checked before
    anything is written or loaded (a run must not end in a file it cannot save). Every run command calls
    this first; from here on a Ctrl-C waits for the run's loop (:func:`eggroll.run.checkpoint.defer_interrupts`)."""
    from eggroll.run.checkpoint import defer_interrupts

    defer_interrupts()
    for name, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            fail(f"--{name.replace('_', '-')} must be a finite number, got {value}")
    for name in ("out", "plot", "cache"):
        if values.get(name) is not None:
            _check_writable(name, Path(values[name]), folder=name == "out")


def _check_writable(name: str, path: Path, folder: bool) -> None:
    """Exit 2 unless ``path`` (a folder, or a file) can be created where it is, or written if it exists."""
    option = f"--{name} {path}"
    if not folder and path.is_dir():
        fail(f"{option} is a folder: give a file name")
    parent = path.absolute() if folder else path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        fail(f"{option}: {parent} is a file, not a folder; choose another --{name}")
    try:  # a probe, removed at once: os.access alone misses read-only file systems when run as root
        os.rmdir(tempfile.mkdtemp(prefix=".eggroll-probe-", dir=parent))
    except OSError as err:
        what = "folder" if folder else "file"
        fail(f"{option}: cannot create a {what} in {parent} ({err.strerror}); choose a folder you can write to")


def options(values: Mapping[str, Any] = {}, /, **kwargs: Any):
    """:class:`eggroll.run.loop.RunOptions` from the command's option ``values`` (those named like its
    fields) and ``kwargs`` on top, validated (:func:`check_values`; bad values exit 2)."""
    from eggroll.run.loop import RunOptions

    check_values({**values, **kwargs})
    try:
        return from_options(RunOptions, {**values, "started": STARTED, "end_reserve": END_RESERVE, **kwargs}).validate()
    except ValueError as err:
        fail(err)


def execute(build: Callable[[], Any], run_options: Any, **run_kwargs: Any):
    """Build the task and run it through the one loop; bad input (settings, files, checkpoints) exits 2."""
    from eggroll.run.loop import run

    def build_and_run():
        task = build()
        if run_options.time_budget is not None:
            _warm_up_plotting()  # before the loop's estimate, not after the last generation
        return run(task, run_options, **run_kwargs)

    result = execute_result(build_and_run)
    if not result.began:  # a Ctrl-C before the loop began: nothing ran, so the command has nothing to report
        finish(result)
    return result


def _warm_up_plotting() -> None:
    """Import matplotlib and draw once (fonts, backend): every command ends with a plot, and --time-budget's
    estimate counts generations and evaluations only, so a first plot's second at the end would overrun it."""
    import io

    from matplotlib.figure import Figure

    Figure(figsize=(2, 2)).subplots().plot([0, 1]).pop().figure.savefig(io.BytesIO(), format="png")


def execute_result(run_it: Callable[[], Any]):
    """Return ``run_it()``; bad input it raises (ValueError, CheckpointError, a missing or unwritable file)
    and a failed generation (what is saved is named): one line, exit 2."""
    from eggroll.run.checkpoint import CheckpointError
    from eggroll.run.loop import GenerationFailed

    try:
        return run_it()
    except (ValueError, CheckpointError, FileNotFoundError, GenerationFailed) as err:
        fail(err)
    except OSError as err:  # e.g. a folder that cannot be created or written
        fail(
            f"{err.strerror or err}: {err.filename} (check the path, or choose another --out)" if err.filename else err
        )
    except Exception as err:
        if type(err).__name__ not in ("JaxRuntimeError", "XlaRuntimeError"):
            raise
        jax = sys.modules["jax"]
        if jax.distributed.is_initialized():  # a collective lost its peer
            fail(
                f"a collective between processes failed ({err}); another process is gone: restart every process "
                "with the same command plus --resume (the newest checkpoint is kept)"
            )
        fail(f"the computation failed on the device: {err}")


def finish(result: Any) -> None:
    """Report where the files are and end the command with the run's exit status (0, 130, 143)."""
    if result.resumed_from is not None:
        console.print(f"resumed from {result.unit} {result.resumed_from} ({result.checkpoint_dir})")
    files = dict(result.record.get("files", {}))  # relative to --out (the loop records them so)
    if result.out is not None and result.began:
        files["result"] = "result.json"
    width = max(map(len, files), default=0)
    for name, path in files.items():
        console.print(f"  {name:{width}s} {Path(result.out or '.') / path}")
    if not result.began:  # a Ctrl-C before the loop began
        kept = f"its checkpoint of {result.unit} {result.resumed_from} is unchanged" if result.resumed_from else ""
        console.print(f"[yellow]stopped by {result.stopped_by} before the run began[/]: {kept or 'nothing was saved'}")
    elif result.stopped_by in ("SIGTERM", "SIGINT") and result.checkpoint_dir is None:
        console.print(
            f"[yellow]stopped by {result.stopped_by} after {result.unit} {result.generation}[/] (this run kept no "
            "checkpoint: add --checkpoint-every K to make it resumable)"
        )
    elif result.stopped_by in ("SIGTERM", "SIGINT"):
        console.print(
            f"[yellow]stopped by {result.stopped_by} after {result.unit} {result.generation}[/]; checkpoint saved, "
            "continue with the same command plus --resume"
        )
    elif result.stopped_by in ("time_budget", "target"):
        console.print(f"stopped after {result.unit} {result.generation}: {result.stopped_by.replace('_', ' ')} reached")
    if result.note:
        console.print(f"[yellow]note:[/] {result.note}")
    if result.exit_code:
        raise typer.Exit(result.exit_code)
