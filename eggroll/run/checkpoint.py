"""Checkpoints with orbax: save every K generations and on SIGTERM / Ctrl-C, resume bit for bit.

A checkpoint holds a dict of pytrees (typically the strategy state, which
includes the mean parameters, the optimizer state and the noise key; the
fitness function's state, e.g. observation statistics; and the run's RNG key)
plus a small JSON record (generation, a fingerprint of the run's
configuration, anything you add). Steps are numbered by completed generations.

Safety: orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and renames it
only when every file is written, so a process killed in the middle of a save
leaves the previous steps untouched; the unfinished directory is never read
and is cleaned up by the next run. Once a step is on disk, a SHA-256 of every
one of its files is written beside them (``<step>/eggroll-checksum.json``, the
step is then *sealed*); a restore checks it, so a step damaged later (a bad
disk, a half-copied folder, a stray write) is refused with its name and the
newest step that still verifies. The newest ``max_to_keep`` sealed steps are
kept: a step is deleted only when that many newer ones are sealed, so the
newest verified step is never removed.

Example:
    >>> ckpt = Checkpointer("/tmp/run1", every=50)             # doctest: +SKIP
    >>> ckpt.save(100, {"state": state, "key": key})           # doctest: +SKIP
    >>> items, meta = ckpt.restore({"state": state, "key": key})  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "CHECKSUM_FILE",
    "CheckpointError",
    "Checkpointer",
    "GracefulInterrupt",
    "defer_interrupts",
    "interrupt_early",
    "check_settings",
    "fingerprint",
    "step_checksums",
    "verify_step",
]

_TMP_MARK = ".orbax-checkpoint-tmp"
CHECKSUM_FILE = "eggroll-checksum.json"


def write_json(path: Path, record: Any) -> Path:
    """Write JSON atomically (a killed process leaves the old file, never half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, default=_json_default))
    tmp.replace(path)
    return path


def _json_default(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON")


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def step_checksums(step_dir: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of every file in a step's folder (relative path -> hex digest), the checksum file left out."""
    root = Path(step_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != CHECKSUM_FILE)
    return {str(p.relative_to(root)): _digest(p) for p in files}


def verify_step(step_dir: str | os.PathLike) -> str | None:
    """What is wrong with a sealed step's files (``None``: they match their checksums, or it has none).

    Returns:
        ``None`` when every file matches (or the step was never sealed: nothing to compare), else one
        sentence naming the first file that is missing, changed or unexpected.
    """
    root = Path(step_dir)
    try:
        saved = json.loads((root / CHECKSUM_FILE).read_text())["sha256"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return f"its checksum file {CHECKSUM_FILE} is unreadable"
    now = step_checksums(root)
    for name, digest in saved.items():
        if name not in now:
            return f"{name} is missing"
        if now[name] != digest:
            return f"{name} does not match its checksum"
    extra = sorted(set(now) - set(saved))
    return f"{extra[0]} was not part of it" if extra else None


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the directory and what to do."""


def fingerprint(tree: Any) -> dict[str, Any]:
    """Structure, shapes and dtypes of a pytree, as JSON (to detect mismatched resumes)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return {
        "treedef": str(treedef),
        "leaves": {jax.tree_util.keystr(p): [list(np.shape(x)), _dtype_name(x)] for p, x in flat},
    }


def check_settings(
    saved: Mapping[str, Any] | None,
    wanted: Mapping[str, Any],
    where: str | os.PathLike,
    *,
    may_change: str = "",
    names: Mapping[str, str] | None = None,
) -> None:
    """Refuse to resume a run whose settings differ from the checkpoint's, naming each difference.

    Args:
        saved: the settings recorded in the checkpoint's metadata.
        wanted: this run's settings (JSON values; only these keys are compared).
        where: the checkpoint folder, for the message.
        may_change: what may differ on resume, e.g. ``"--generations"`` (said in the message).
        names: how to call each key in the message (e.g. ``{"dims": "--dims"}``).

    Raises:
        ValueError: e.g. ``the checkpoint in runs/x was written with other settings (sigma: 0.05 in the
            checkpoint, 0.1 now); resume with the same settings ...``.
    """
    if not saved:  # a checkpoint that records no settings (eggroll.run.train wrote none before): nothing to compare
        return
    names = names or {}
    diff = [(names.get(k, k), saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v]
    if diff:
        listed = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, a, b in diff)
        allowed = f" (only {may_change} may change)" if may_change else ""
        raise ValueError(
            f"the checkpoint in {where} was written with other settings ({listed}); resume with the same "
            f"settings{allowed}, or choose another --out to start a new run"
        )


def _dtype_name(x: Any) -> str:
    return str(x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype)


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _encode(tree: Any) -> Any:
    """Typed PRNG keys become their uint32 key data (orbax stores plain arrays)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _decode(tree: Any, template: Any) -> Any:
    def back(x, t):
        return jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x

    return jax.tree.map(back, tree, template)


def _abstract(tree: Any) -> Any:
    def one(x):
        x = x if isinstance(x, jax.Array) else jnp.asarray(x)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)

    return jax.tree.map(one, tree)


class Checkpointer:
    """Periodic, atomic, resumable checkpoints of a training run (orbax).

    Args:
        directory: where the steps live (created if missing).
        every: save every ``every`` generations (``None``: only when asked).
        max_to_keep: newest sealed steps kept on disk (>= 2 keeps a fallback).
        async_save: write in a background thread (the arrays are copied to the
            host first, so training continues safely).

    Raises:
        CheckpointError: the directory exists but is not a directory.
    """

    def __init__(
        self, directory: str | os.PathLike, *, every: int | None = None, max_to_keep: int = 3, async_save: bool = True
    ):
        import orbax.checkpoint as ocp

        self.directory = Path(directory).absolute()
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"Checkpoint path {self.directory} exists and is not a directory.")
        if every is not None and every < 1:
            raise ValueError(f"every={every} must be a positive number of generations (or None).")
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep={max_to_keep} must be >= 1.")
        self.every, self.max_to_keep = every, max_to_keep
        self._ocp = ocp
        self._closed = False
        self._intact: set[int] = set()
        self._created = not self.directory.exists()  # removed again if it stays empty (a mistyped --resume path)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(  # old steps are pruned here, after newer ones are sealed
                max_to_keep=None, enable_async_checkpointing=async_save, create=True
            ),
            item_handlers={"items": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        )

    # ------------------------------------------------------------------ queries
    def steps(self) -> list[int]:
        """Completed (finalised) steps, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest finalised step, or ``None``."""
        return self._manager.latest_step()

    def refuse_fresh_run(self, resume: bool, what: str = "a run") -> None:
        """Without ``resume``, refuse (and close) a directory that already holds checkpoints.

        Raises:
            ValueError: the directory holds steps and ``resume`` is false; nothing is overwritten.
        """
        steps = self.steps()
        if resume or not steps:
            return
        self.close()
        raise ValueError(
            f"{self.directory} already holds checkpoints of {what} (steps {steps}); pass --resume (resume=True) "
            "to continue it, or choose another --out to start a new run"
        )

    def check_settings(self, saved: Mapping[str, Any] | None, wanted: Mapping[str, Any], **options: Any) -> None:
        """:func:`check_settings` for this directory (``options``: its ``may_change`` and ``names``); closes the
        checkpointer before raising."""
        try:
            check_settings(saved, wanted, self.directory, **options)
        except ValueError:
            self.close()
            raise

    def should_save(self, step: int) -> bool:
        """Whether ``step`` falls on the ``every`` schedule."""
        return self.every is not None and step > 0 and step % self.every == 0

    # ------------------------------------------------------------------ save / restore
    def save(self, step: int, items: dict[str, Any], meta: dict[str, Any] | None = None) -> bool:
        """Save ``items`` (a dict of pytrees) and JSON ``meta`` as ``step``.

        Returns:
            ``False`` if that step already exists (nothing written), else ``True``.
        """
        if step in self._manager.all_steps():
            return False
        # JSON now (NumPy scalars and arrays as numbers and lists): a value that is not fails here, not in orbax's
        # background save
        meta = json.loads(json.dumps(dict(meta or {}), default=_json_default))
        self._seal()  # the previous save is on disk by now: checksum it, prune what it replaces
        meta.setdefault("step", int(step))
        meta["fingerprint"] = fingerprint(items)
        args = self._ocp.args.Composite(
            items=self._ocp.args.StandardSave(_encode(items)), meta=self._ocp.args.JsonSave(meta)
        )
        return bool(self._manager.save(step, args=args, force=True))

    def wait(self) -> None:
        """Block until background saves are finalised and sealed on disk."""
        self._seal()

    def close(self) -> None:
        """Finish pending saves, seal them, and release the manager (a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._seal()
        finally:
            self._manager.close()

    def sealed(self, step: int) -> bool:
        """Whether ``step`` carries its checksum file."""
        return (self.directory / str(step) / CHECKSUM_FILE).is_file()

    def _seal(self) -> None:
        """Wait for background saves; write the checksum of every finished step that has none (process 0;
        written after the data, atomically); then delete steps older than the newest ``max_to_keep`` sealed."""
        self._manager.wait_until_finished()
        steps = self.steps()
        if jax.process_index() == 0:
            for step in steps:
                folder = self.directory / str(step)
                if folder.is_dir() and not self.sealed(step):
                    write_json(folder / CHECKSUM_FILE, {"step": step, "sha256": step_checksums(folder)})  # atomically
        if jax.process_count() > 1:  # orbax's delete is a collective: every process prunes, after the sealing
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("eggroll-checkpoints-sealed")
        keep = [s for s in steps if self.sealed(s)][-self.max_to_keep :]
        for step in steps:
            if keep and step < keep[0]:
                self._manager.delete(step)

    def set_aside(self, after: int) -> list[int]:
        """Move the steps newer than ``after`` to ``<directory>.set-aside/`` (kept for inspection, never read
        again), so that a run resumed from ``after`` can save those generations anew."""
        moved = [s for s in self.steps() if s > after]
        for step in moved:
            target = self.directory.with_name(self.directory.name + ".set-aside") / str(step)
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.directory / str(step)), str(target))
        if moved:
            self._manager.reload()
        return moved

    def read_meta(self, step: int | None = None) -> dict[str, Any]:
        """The JSON record of ``step`` (default: the newest), once the step verifies against its checksums."""
        step = self._step_or_latest(step)
        self._check_intact(step)
        return dict(self._read(step, meta=self._ocp.args.JsonRestore())["meta"])

    def restore(self, template: dict[str, Any], step: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore ``step`` (default: the newest) into the structure of ``template``.

        Args:
            template: a dict of pytrees like the one saved (e.g. the freshly
                initialised state); arrays are restored with its shapes, dtypes
                and shardings.
            step: which step.

        Returns:
            ``(items, meta)``.

        Raises:
            CheckpointError: no checkpoint, a checkpoint of a different run
                configuration, or an unreadable (corrupt) checkpoint; the message
                names the directory and what to do.
        """
        step = self._step_or_latest(step)
        meta = self.read_meta(step)
        self._check_match(step, meta.get("fingerprint"), fingerprint(template))
        out = self._read(step, items=self._ocp.args.StandardRestore(_abstract(_encode(template))))
        return _decode(out["items"], template), meta

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ errors
    def _step_or_latest(self, step: int | None) -> int:
        steps = self.steps()
        if step is None:
            if not steps:
                found = self.directory.glob(f"*{_TMP_MARK}*") if self.directory.exists() else []
                partial = sorted(p.name for p in found)
                extra = f" (only unfinished saves: {', '.join(partial)})" if partial else ""
                if self._created and self.directory.is_dir() and not any(self.directory.iterdir()):
                    self.directory.rmdir()  # do not leave an empty folder behind a mistyped path
                raise CheckpointError(
                    f"No finished checkpoint in {self.directory}{extra}. Start without --resume, or point the "
                    "command (its --out or checkpoint directory) at the folder of the run to continue."
                )
            return steps[-1]
        if step not in steps:
            raise CheckpointError(f"Step {step} is not in {self.directory}; available steps: {steps}.")
        return step

    def _check_intact(self, step: int) -> None:
        """Raise naming the damage if ``step`` fails its checksum, and the newest older step that verifies."""
        if step in self._intact:
            return
        damage = verify_step(self.directory / str(step))
        if damage is None:
            self._intact.add(step)  # (read_meta and restore both ask; the files are hashed once)
            return
        good = next(
            (s for s in reversed(self.steps()) if s < step and verify_step(self.directory / str(s)) is None), None
        )
        then = (
            f"The newest step that verifies is {good}: continue from it with --resume --resume-from {good} "
            f"(resume_from={good} in Python; the newer steps are moved to {self.directory.name}.set-aside/)."
            if good is not None
            else "No older step verifies: start the run again in a new --out."
        )
        raise CheckpointError(f"Checkpoint step {step} in {self.directory} is damaged: {damage}. {then}")

    def _read(self, step: int, **args: Any) -> Any:
        """Restore the items ``args`` names from ``step``; a failure is named, with the step to fall back to."""
        try:
            return self._manager.restore(step, args=self._ocp.args.Composite(**args))
        except Exception as error:  # noqa: BLE001 - any read failure is a corrupt checkpoint to the user
            older = [s for s in self.steps() if s < step]
            fallback = (
                f"continue from the step before it with --resume --resume-from {older[-1]} (resume_from={older[-1]} "
                "in Python)"
                if older
                else "start the run again in a new --out"
            )
            raise CheckpointError(
                f"Checkpoint step {step} in {self.directory} could not be read ({type(error).__name__}); it is corrupt "
                f"or incomplete. To go on, {fallback}."
            ) from error

    def _check_match(self, step: int, saved: dict[str, Any] | None, expected: dict[str, Any]) -> None:
        where = self.directory / str(step)
        advice = (
            "Resume with the same configuration (strategy, population size, model, fitness function), or start a "
            "new run in a fresh checkpoint folder (another --out)."
        )
        if saved is None:
            raise CheckpointError(f"Checkpoint {where} has no fingerprint; it was not written by eggroll. {advice}")
        got, want = saved["leaves"], expected["leaves"]
        for name in want:
            if name not in got:
                raise CheckpointError(f"Checkpoint {where} does not match this run: it has no leaf {name}. {advice}")
            if got[name] != want[name]:
                (s1, d1), (s2, d2) = got[name], want[name]
                raise CheckpointError(
                    f"Checkpoint {where} does not match this run: leaf {name} is {d1}{s1} in the checkpoint but "
                    f"{d2}{s2} here. {advice}"
                )
        extra = sorted(set(got) - set(want))
        if extra or saved["treedef"] != expected["treedef"]:
            detail = f"it has extra leaves {extra[:3]}" if extra else "the pytree structures differ"
            raise CheckpointError(f"Checkpoint {where} does not match this run: {detail}. {advice}")


_EARLY: dict[str, Any] = {"signal": None, "armed": False}


def _early_handler(signum, frame):
    if signum == signal.SIGTERM and not _EARLY["armed"]:  # the default action: end the process now
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    if not _EARLY["armed"] or _EARLY["signal"] is not None:
        raise KeyboardInterrupt
    _EARLY["signal"] = signum
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    sys.stderr.write(f"\n{name}: the run stops before its first generation (Ctrl-C again: at once)\n")


def interrupt_early() -> None:
    """Ctrl-C before a run's loop begins (imports, model loading, compiling) is kept for the loop, as during it.

    Python's own handler raises :class:`KeyboardInterrupt` wherever the program is: inside a callback whose
    exceptions are only printed (JAX's garbage-collection callback is one) the interrupt was lost and the run
    went on to its end; inside a native module's import it became an ``ImportError``; inside XLA it could
    crash the process. With this handler (the CLI installs it at its start, and a run command arms it with
    :func:`defer_interrupts` once its options are checked) the first Ctrl-C is a flag that
    :class:`GracefulInterrupt` takes as its own, so the loop stops before the first generation; a second
    raises :class:`KeyboardInterrupt` at once. Unarmed (``eggroll evollm serve``, ``lm sample``, after the
    loop) it raises :class:`KeyboardInterrupt` as Python's own handler does. A handler of the program's own
    is left in place; an ignored SIGINT (a background job's) is replaced, as :class:`GracefulInterrupt`
    replaces it. SIGTERM (a scheduler's preemption while the run loads) is kept the same way; unarmed it
    ends the process as its default action does. The CLI calls this again after ``jax.distributed.initialize``,
    whose preemption notifier would otherwise swallow a SIGTERM that arrives before the loop.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, signal.SIG_IGN, signal.SIG_DFL):
        signal.signal(signal.SIGINT, _early_handler)
    # SIGTERM too (a scheduler's preemption while the run loads): kept for the loop, or, unarmed, the default
    # exit. Called again after jax.distributed.initialize, whose preemption notifier would swallow it.
    signal.signal(signal.SIGTERM, _early_handler)


def defer_interrupts() -> None:
    """Arm :func:`interrupt_early`'s handler: a run is about to be built, so a Ctrl-C now waits for its loop."""
    _EARLY["armed"] = True


class GracefulInterrupt:
    """Turn SIGTERM and the first Ctrl-C into a flag the training loop polls.

    The loop finishes the current generation, saves a checkpoint and stops. A
    second Ctrl-C raises :class:`KeyboardInterrupt` at once. Handlers are only
    installed from the main thread and are restored on exit.

    Example:
        >>> with GracefulInterrupt() as stop:       # doctest: +SKIP
        ...     while not stop.requested: ...
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = signals
        self.requested: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.requested).name if self.requested is not None else ""

    def __enter__(self) -> GracefulInterrupt:
        if _EARLY["signal"] is not None:  # a Ctrl-C before the loop (interrupt_early)
            self.requested, _EARLY["signal"] = _EARLY["signal"], None
        _EARLY["armed"] = False  # after this run, a Ctrl-C (in the command's last files) stops at once
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
