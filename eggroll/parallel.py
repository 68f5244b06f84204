"""Scale out: split the population over a device mesh, on one host or many.

Noise in eggroll is a pure function of counters (see :mod:`eggroll.noise`), so
a generation needs only one exchange between devices: the fitness vector.

* ``ask`` runs with the population axis sharded: every device draws the noise
  of its own members only (threefry is partitionable, so the bits do not depend
  on the number of devices).
* evaluation runs under :func:`jax.shard_map`: every device scores its slice of
  members with the user's unchanged fitness function.
* the ``N`` fitness values are all-gathered (``N`` floats, the only collective).
* ``tell`` runs replicated: every device regenerates all the noise and forms
  the same update, so nothing of the size of the parameters is ever sent.

The switch is one argument::

    step = eggroll.parallel.generation_step(es, fitness_fn, mesh=eggroll.parallel.make_mesh())
    state, fn_state, metrics = step(key, state, params)

or, in a hand-written ask / evaluate / tell loop, wrap the strategy with
:func:`sharded` and score with :func:`evaluate` instead of
:func:`eggroll.evaluate`. Several hosts join with :func:`init_distributed`
before anything else touches JAX; the mesh then spans every process's devices.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from eggroll import population as pop_lib
from eggroll.types import Strategy

DEFAULT_AXIS = "population"

__all__ = [
    "DEFAULT_AXIS",
    "Collective",
    "check_fits",
    "check_population_size",
    "collectives",
    "evaluate",
    "generation_step",
    "init_distributed",
    "make_mesh",
    "mesh_from_option",
    "replicate",
    "sharded",
    "to_host",
]


# ----------------------------------------------------------------------------- mesh

_FAKE_DEVICES = (
    "On CPU, fake devices come from XLA_FLAGS=--xla_force_host_platform_device_count=8 set before JAX is imported."
)


def make_mesh(
    num_devices: int | None = None, *, axis_name: str = DEFAULT_AXIS, devices: Sequence[Any] | None = None
) -> Mesh:
    """A 1-D mesh over which the population axis is split.

    Args:
        num_devices: how many devices to use (default: all of them, across all
            processes after :func:`init_distributed`).
        axis_name: the mesh axis name.
        devices: explicit devices (default ``jax.devices()``).

    Returns:
        A :class:`jax.sharding.Mesh` with one ``Auto`` axis.

    Raises:
        ValueError: more devices asked for than exist.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices) if num_devices is None else num_devices
    if not 1 <= n <= len(devices):
        raise ValueError(
            f"num_devices={num_devices} but {len(devices)} device(s) are available ({devices[0].platform}). "
            + _FAKE_DEVICES
        )
    return Mesh(np.array(devices[:n]), (axis_name,), axis_types=(jax.sharding.AxisType.Auto,))


def mesh_from_option(devices: str | int | None, *, axis_name: str = DEFAULT_AXIS) -> Mesh | None:
    """The mesh named by a command line ``--devices`` option.

    Args:
        devices: ``None`` or ``"auto"``: one device in a single-process run, all
            devices (of every process) in a multi-process run; ``"all"``: every
            device; an integer ``N`` (or its string): the first ``N`` devices.
        axis_name: the mesh axis name.

    Returns:
        ``None`` for a single device (plain, unsharded programs), else a 1-D mesh.

    Raises:
        ValueError: a malformed value, or more devices than exist.
    """
    text = "auto" if devices is None else str(devices).strip().lower()
    if text == "auto":
        return make_mesh(axis_name=axis_name) if jax.process_count() > 1 else None
    n = None  # "all": every device
    if text != "all":
        try:
            n = int(text)
        except ValueError:
            raise ValueError(f"--devices takes a number of devices, 'all' or 'auto'; got {devices!r}.") from None
        if n < 1:
            raise ValueError(f"--devices must be >= 1, got {n}.")
    available = jax.devices()
    if n is not None and n > len(available):  # make_mesh's check, in the option's words
        raise ValueError(
            f"--devices {n}: only {len(available)} device(s) are available ({available[0].platform}); use "
            f"--devices {len(available)} or all. " + _FAKE_DEVICES
        )
    mesh = make_mesh(n, axis_name=axis_name)
    return None if mesh.size == 1 and jax.process_count() == 1 else mesh


def _auto_mesh(mesh: Mesh) -> Mesh:
    """The same mesh with ``Auto`` axis types (sharding constraints need them)."""
    if all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(jax.sharding.AxisType.Auto,) * len(mesh.axis_names))


def _axis(mesh: Mesh, axis_name: str | None) -> str:
    if axis_name is None:
        if len(mesh.axis_names) != 1:
            raise ValueError(
                f"The mesh has axes {mesh.axis_names}; pass axis_name= to say which one splits the population."
            )
        return mesh.axis_names[0]
    if axis_name not in mesh.axis_names:
        raise ValueError(f"axis_name={axis_name!r} is not an axis of the mesh {mesh.axis_names}.")
    return axis_name


# ----------------------------------------------------------------------------- multi-host


def _env_int(names: Sequence[str]) -> int | None:
    for name in names:
        if os.environ.get(name, "").strip():
            try:
                return int(os.environ[name])
            except ValueError:
                raise ValueError(f"Environment variable {name}={os.environ[name]!r} must be an integer.") from None
    return None


def init_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: Sequence[int] | None = None,
    cpu_collectives: str | None = "gloo",
    timeout_s: int = 300,
    peer_timeout_s: float | None = None,
) -> bool:
    """Join a multi-process (multi-host) JAX run; call before any other JAX work.

    Arguments left as ``None`` are read from ``EGGROLL_COORDINATOR``,
    ``EGGROLL_NUM_PROCESSES`` and ``EGGROLL_PROCESS_ID``, then from JAX's own
    ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``. If
    no coordinator is known and ``num_processes`` is unset, nothing happens
    (a single-process run) and ``False`` is returned; cluster auto-detection
    (SLURM, Cloud TPU ...) is then still available by calling
    :func:`jax.distributed.initialize` yourself.

    Args:
        coordinator: ``"host:port"`` of process 0.
        num_processes: total number of processes.
        process_id: this process's id in ``[0, num_processes)``.
        local_device_ids: restrict this process to these local devices.
        cpu_collectives: collectives backend for CPU devices (``"gloo"`` or
            ``"mpi"``); ``None`` keeps JAX's default. Needed for CPU-only runs.
        timeout_s: how long to wait for the other processes to join (a message says who is waiting after
            a few seconds).
        peer_timeout_s: once running, a process that shows no sign of life for this many seconds (killed,
            its host gone) stops every other one with a one-line error and exit code 1, instead of
            leaving them blocked in a collective (default: ``EGGROLL_PEER_TIMEOUT`` or 60). Restart all
            processes with ``--resume``: the newest checkpoint is kept.

    Returns:
        ``True`` if this process joined a multi-process run.

    Raises:
        ValueError: a partial or inconsistent configuration.
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    coordinator = coordinator or os.environ.get("EGGROLL_COORDINATOR") or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = _env_int(["EGGROLL_NUM_PROCESSES", "JAX_NUM_PROCESSES"]) if num_processes is None else num_processes
    process_id = _env_int(["EGGROLL_PROCESS_ID", "JAX_PROCESS_ID"]) if process_id is None else process_id
    if coordinator is None and num_processes in (None, 1):
        return False
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    missing = [name for name, value in given.items() if value is None]
    if missing:
        raise ValueError(
            f"Multi-process run is missing {', '.join(missing)}. Set EGGROLL_COORDINATOR=host:port, "
            "EGGROLL_NUM_PROCESSES=<total> and EGGROLL_PROCESS_ID=<0..total-1> on every process "
            "(or pass them as arguments / CLI options)."
        )
    if num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1 (the processes of the run), got {num_processes}.")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process_id={process_id} must be in [0, {num_processes}).")
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    peer_timeout_s = float(os.environ.get("EGGROLL_PEER_TIMEOUT", 60)) if peer_timeout_s is None else peer_timeout_s
    if not peer_timeout_s > 0:
        raise ValueError(f"the peer timeout must be a positive number of seconds, got {peer_timeout_s}")
    if process_id == 0:  # it serves the coordinator: a port in use crashed inside jax.distributed (SIGSEGV)
        _check_port_free(coordinator)
    others = f"the other {num_processes - 1} process{'es' if num_processes > 2 else ''}"
    message = f"process {process_id}: waiting for {others} at {coordinator} (up to {timeout_s} s)..."
    waiting = threading.Timer(3.0, lambda: print(message, file=sys.stderr, flush=True))
    waiting.daemon = True
    waiting.start()
    try:
        jax.distributed.initialize(
            coordinator,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
            initialization_timeout=timeout_s,
            heartbeat_timeout_seconds=int(peer_timeout_s) + 30,  # JAX's own abort comes after the watch's message
        )
    except jax.errors.JaxRuntimeError as err:  # e.g. process 0 cannot listen on the coordinator's port
        what = "listen on" if process_id == 0 else "join the run at"
        raise ValueError(
            f"process {process_id} could not {what} {coordinator} ({str(err).splitlines()[0]}); is the port free "
            "(or another run's coordinator)? Choose another --coordinator port for every process"
        ) from err
    finally:
        waiting.cancel()
    _PeerWatch(process_id, num_processes, peer_timeout_s).start()
    return True


def _check_port_free(coordinator: str) -> None:
    """Raise a ValueError when the coordinator's port is taken on this host (process 0 listens on it)."""
    import socket

    port = coordinator.rsplit(":", 1)[-1]
    if not port.isdigit():
        raise ValueError(f"--coordinator {coordinator!r} must be host:port")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # refused by a listener, not by TIME_WAIT
        try:
            probe.bind(("0.0.0.0", int(port)))
        except OSError as err:
            raise ValueError(
                f"process 0 cannot listen on port {port} of --coordinator {coordinator} ({err.strerror}): another "
                "program (or run) uses it; choose another port for every process"
            ) from None


class _PeerWatch(threading.Thread):
    """Every second: publish this process's heartbeat in JAX's key-value store and read the others'.

    A peer whose heartbeat stops for ``timeout`` seconds without its "done" mark (killed, host lost), or
    a store that stops answering (process 0, which holds it, is gone), ends this process with one
    line on stderr and exit code 1: it would otherwise wait in a collective until JAX aborts it.
    """

    def __init__(self, process_id: int, num_processes: int, timeout: float):
        super().__init__(name="eggroll-peer-watch", daemon=True)
        from jax._src import distributed

        self.client, self.me, self.timeout = distributed.global_state.client, process_id, timeout
        self.stop = threading.Event()
        self.seen = {p: ("", time.monotonic()) for p in range(num_processes) if p != process_id}  # last beat, when
        atexit.register(self.finish)  # runs before JAX's own shutdown (registered earlier)

    def finish(self) -> None:
        """Mark this process done (its silence is then no failure) and stop watching. If a peer is dead, end
        the process here: JAX's shutdown barrier would wait for the peer and then abort with a C++ stack."""
        self.stop.set()
        dead = {p: value for p, (value, _) in self.seen.items()}  # until a new beat or its done mark shows otherwise
        try:
            self.client.key_value_set(f"eggroll/done/{self.me}", "1", allow_overwrite=True)
            deadline = time.monotonic() + 3.0  # live peers beat every second
            while dead and time.monotonic() < deadline:
                beats, done = self._read()
                dead = {p: v for p, v in dead.items() if p not in done and beats.get(p, "") == v}
                time.sleep(0.2 if dead else 0)
        except Exception:  # noqa: BLE001 - the store is gone: process 0 died
            dead = dead or {0: ""}
        if dead:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)

    def run(self) -> None:
        beat, seen = 0, self.seen
        while not self.stop.wait(1.0):
            try:
                beat += 1
                self.client.key_value_set(f"eggroll/beat/{self.me}", str(beat), allow_overwrite=True)
                beats, done = self._read()
            except Exception:  # noqa: BLE001 - the store itself is gone: process 0 died
                self._fail(0, "the coordinator (process 0) stopped answering")
                return
            now = time.monotonic()
            for peer, (value, since) in seen.items():
                current = beats.get(peer, "")
                if current != value:
                    seen[peer] = (current, now)
                elif peer not in done and now - since > self.timeout:
                    self._fail(peer, f"process {peer} showed no sign of life for {self.timeout:g} s")

    def _read(self) -> tuple[dict[int, str], set[int]]:
        """The peers' last heartbeats and the processes marked done, from the store."""
        get = self.client.key_value_dir_get
        beats = {int(k.rsplit("/", 1)[-1]): v for k, v in get("eggroll/beat/")}
        return beats, {int(k.rsplit("/", 1)[-1]) for k, _ in get("eggroll/done/")}

    def _fail(self, peer: int, why: str) -> None:
        if self.stop.is_set():
            return
        print(
            f"error: {why} (killed, or its host is gone); process {self.me} stops too. Restart every process "
            "with the same command plus --resume: the newest checkpoint is kept. (EGGROLL_PEER_TIMEOUT sets the "
            "seconds to wait.)",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a host pytree on every device of ``mesh`` (works across processes).

    Every process must pass the same values (e.g. built from the same seed).
    Typed PRNG keys are supported.
    """
    sharding = NamedSharding(_auto_mesh(mesh), P())

    def put(x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
    """NumPy copy of a pytree of (possibly multi-process) arrays.

    Replicated arrays are read from a local shard; sharded ones spanning other
    processes are all-gathered. Typed keys come back as their key data.
    """
    from jax.experimental import multihost_utils

    def get(x):
        if not isinstance(x, jax.Array):
            return x
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if x.is_fully_addressable:
            return np.asarray(x)
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(get, tree)


# ----------------------------------------------------------------------------- population layout


def check_population_size(population_size: int, num_devices: int, *, antithetic: bool) -> None:
    """Raise a clear error if the population cannot be split evenly.

    Each device must hold the same number of members, and with antithetic
    sampling whole mirrored pairs (so a device draws the noise of its own
    members only).
    """
    unit = 2 * num_devices if antithetic else num_devices
    if population_size % unit:
        lo, hi = population_size // unit * unit, (population_size // unit + 1) * unit
        sizes = f"{lo} or {hi}" if lo else f"{hi}"
        what = f"2 x {num_devices} devices = {unit} (antithetic pairs stay on one device)" if antithetic else unit
        raise ValueError(
            f"population_size={population_size} cannot be split over {num_devices} devices: it must be a multiple "
            f"of {what}. Use population_size={sizes}, or a mesh with fewer devices."
        )


def device_memory(device: Any) -> int:
    """Bytes a computation may use on ``device``: an accelerator's allocator limit, or the host's RAM for a CPU
    device (the CPU devices of one process share it)."""
    stats = getattr(device, "memory_stats", lambda: None)() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram // max(1, sum(d.platform == "cpu" for d in jax.local_devices()) if device.platform == "cpu" else 1)


def check_fits(compiled: Any, what: str, hint: str) -> None:
    """Refuse a compiled computation whose buffers (XLA's memory analysis) exceed its device's memory.

    Call it on ``jitted.lower(...).compile()`` before the first call (the call then reuses the compilation):
    a population too large for the machine is refused in one line instead of failing minutes later.

    Raises:
        ValueError: naming the memory needed and available, and ``hint`` (what to change).
    """
    analysis = compiled.memory_analysis()
    if analysis is None:  # a backend without the analysis: nothing to check
        return
    need = sum(getattr(analysis, f"{k}_size_in_bytes", 0) for k in ("temp", "argument", "output", "generated_code"))
    device = jax.local_devices()[0]
    have = device_memory(device)
    if need > have:
        raise ValueError(
            f"{what} needs about {need / 2**30:,.1f} GiB per device, more than the {have / 2**30:,.1f} GiB of "
            f"{device.platform} memory here; {hint}"
        )


def _population_specs(population: Any, axis: str) -> Any:
    """``PartitionSpec`` pytree of a population: the population type says how it splits
    (``partition_specs(axis)``: e.g. low-rank members keep their mean replicated); a
    stacked population splits every leaf along its member axis."""
    if hasattr(population, "partition_specs"):
        return population.partition_specs(axis)
    return jax.tree.map(lambda _: P(axis), population)


def _replicated(tree: Any, mesh: Mesh) -> Any:
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, P()))  # one sharding: a prefix of the tree


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    fn: Callable[..., jax.Array], population: Any, *args: Any, mesh: Mesh, axis_name: str | None = None
) -> jax.Array:
    """Sharded :func:`eggroll.evaluate`: each device scores its own members.

    ``fn(member_params, *args) -> scalar`` is the same function you give
    :func:`eggroll.evaluate`; ``args`` are replicated (shared by all members).
    EGGROLL members are rebuilt from the device's local factors, so no noise
    crosses devices.

    Args:
        fn: scores one member.
        population: what a (sharded) ``ask`` returned.
        *args: extra arguments passed unchanged to ``fn``.
        mesh: the device mesh.
        axis_name: the mesh axis that splits the population.

    Returns:
        ``float[N]`` fitness, sharded over ``axis_name``.
    """
    mesh = _auto_mesh(mesh)
    axis = _axis(mesh, axis_name)
    n = pop_lib.member_ids(population).shape[0]
    if n % mesh.shape[axis]:
        raise ValueError(
            f"The population has {n} members, not a multiple of the {mesh.shape[axis]} devices of mesh axis "
            f"{axis!r}; choose a population size that is a multiple of the device count."
        )
    if isinstance(population, pop_lib.LowRankPopulation):
        pairs = jax.tree.leaves(population.noise)[0].shape[0]
        if pairs % mesh.shape[axis]:
            raise ValueError(
                f"{n} members form {pairs} antithetic pairs, not a multiple of {mesh.shape[axis]} devices; "
                f"use a population size that is a multiple of {2 * mesh.shape[axis]}."
            )

    def local(pop, *a):
        if isinstance(pop, pop_lib.LowRankPopulation):
            # Local member ids: with whole pairs per device, member j of this
            # slice uses local noise index j // 2 and sign (-1)**j, as globally.
            pop = pop.replace(index=jnp.arange(pop.index.shape[0], dtype=jnp.int32))
        return pop_lib.evaluate(fn, pop, *a).astype(jnp.float32)

    in_specs = (_population_specs(population, axis), *(jax.tree.map(lambda _: P(), a) for a in args))
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=P(axis))(population, *args)


def map_members(
    fn: Callable[..., Any],
    population: Any,
    *member_args: Any,
    member: Callable[[Any, jax.Array], Any],
    mesh: Mesh | None = None,
    axis_name: str | None = None,
) -> Any:
    """``fn(member(population, i), *member_args_i)`` for every member ``i``, on one device or split over a mesh.

    ``member_args`` are pytrees with a leading member axis (per-member inputs or
    states, e.g. a recurrent hidden state). With a ``mesh`` the member axis of
    the ids, of ``member_args`` and of the outputs is split over ``axis_name``
    (:func:`jax.shard_map`; the population says how it splits through its
    ``partition_specs``): each device rebuilds its own members from the
    replicated mean and counters, so nothing crosses devices. Member ids stay
    global, so results do not depend on the number of devices.

    Args:
        fn: ``(member_params, *args_i) -> pytree`` for one member.
        population: from ``ask`` (with an ``index`` of member ids, e.g.
            :class:`eggroll.strategies.int_eggroll.IntPopulation`).
        *member_args: per-member inputs, leading axis ``N``.
        member: ``member(population, i) -> member_params`` (e.g.
            ``lambda p, i: int_eggroll.member(p, i, rank)``).
        mesh: ``None`` (one device) or a mesh whose ``axis_name`` splits the members.
        axis_name: the mesh axis (default: the only one).

    Returns:
        The stacked outputs, leading axis ``N`` (sharded over ``axis_name`` with a mesh).
    """

    def local(pop, *args):
        return jax.vmap(lambda i, *a: fn(member(pop, i), *a))(pop.index, *args)

    if mesh is None:
        return local(population, *member_args)
    axis = _axis(mesh, axis_name)
    check_population_size(population.index.shape[0], mesh.shape[axis], antithetic=True)
    in_specs = (_population_specs(population, axis), *(jax.tree.map(lambda _: P(axis), a) for a in member_args))
    return jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=P(axis))(population, *member_args)


def replicated_tell(es: Strategy, mesh: Mesh, key, population, fitness, state, params) -> tuple[Any, dict]:
    """``es.tell`` computed identically on every device of ``mesh``.

    The fitness vector (``N`` values, typically sharded over the members) is
    all-gathered at the boundary of a :func:`jax.shard_map` whose inputs and
    outputs are all replicated; inside, every device regenerates all the noise
    and forms the same update, so nothing of the size of the parameters crosses
    devices and the result is exactly the single-device one.
    """
    population = _population_for_tell(es, population)
    return jax.shard_map(es.tell, mesh=mesh, in_specs=P(), out_specs=P())(key, population, fitness, state, params)


def _population_for_tell(es: Strategy, population: Any) -> Any:
    """``None`` where ``es.tell`` regenerates a stacked population: every device then rebuilds the noise instead
    of gathering parameter-sized members (a low-rank population is counters and factors: it is kept)."""
    regenerate = getattr(es, "regenerates", False) and not isinstance(population, pop_lib.LowRankPopulation)
    return None if regenerate else population


# ----------------------------------------------------------------------------- sharded strategy


def sharded(es: Strategy, mesh: Mesh, axis_name: str | None = None) -> Strategy:
    """Wrap a strategy so its population axis is split over ``mesh``.

    ``init`` / ``tell`` return replicated state; ``ask`` returns a population
    whose member (and noise) axis is sharded, drawn locally on each device;
    ``tell`` all-gathers the fitness (``N`` floats) and regenerates the noise
    on every device. Score the population with :func:`evaluate` (same
    fitness function as for :func:`eggroll.evaluate`).

    Unlike the unsharded ``tell``, the sharded one does not read a stacked
    population (OpenAI-ES, or EGGROLL with ``dense_population=True``): reading
    it would sum parameter-sized arrays across devices. Members changed after
    ``ask`` (clipped to bounds, say) are therefore not honoured here; clip
    inside the fitness function instead.

    Args:
        es: any strategy built by :func:`eggroll.eggroll` or :func:`eggroll.open_es`.
        mesh: the device mesh (see :func:`make_mesh`).
        axis_name: the mesh axis for the population (default: the only axis).

    Returns:
        A :class:`~eggroll.types.Strategy` with the same call signatures.

    Raises:
        ValueError: the population does not split evenly over the devices.
    """
    mesh = _auto_mesh(mesh)
    axis = _axis(mesh, axis_name)
    check_population_size(es.population_size, mesh.shape[axis], antithetic=bool(getattr(es, "antithetic", False)))

    def ask(key, state, params):
        population, state = es.ask(key, state, params)
        specs = _population_specs(population, axis)
        sharding = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, P))
        return jax.lax.with_sharding_constraint(population, sharding), _replicated(state, mesh)

    def tell(key, population, fitness, state, params):
        fitness = _replicated(jnp.asarray(fitness), mesh)  # the all-gather: N floats
        return _replicated(es.tell(key, _population_for_tell(es, population), fitness, state, params), mesh)

    def materialize(population):
        return jax.lax.with_sharding_constraint(es.materialize(population), NamedSharding(mesh, P(axis)))

    return es._replace(  # the same strategy (params, size, flags, get_mean) with sharded functions
        init=jax.jit(lambda key, mean, params: _replicated(es.init(key, mean, params), mesh)),
        ask=jax.jit(ask),
        tell=jax.jit(tell),
        name=f"{es.name}[sharded x{mesh.shape[axis]}]",
        materialize=jax.jit(materialize),
    )


def generation_step(
    es: Strategy,
    fitness_fn: Callable[..., Any],
    *,
    mesh: Mesh | None = None,
    axis_name: str | None = None,
    population_level: bool = False,
) -> Callable[..., tuple[Any, Any, dict[str, Any]]]:
    """One jitted generation (ask, evaluate, tell), on one device or over a mesh.

    Args:
        es: the strategy.
        fitness_fn: either a member-level function
            ``fitness_fn(member_params, key, *args) -> scalar`` (vmapped, and
            split over the mesh with :func:`evaluate`), or, with
            ``population_level=True``, a stateful evaluator
            ``fitness_fn(key, population, fn_state, *args) -> (fitness[N], fn_state)``
            (e.g. ``RLFitness.evaluate``, which updates observation statistics);
            under a mesh the latter runs in the same program with the
            population sharded and XLA placing its collectives.
        mesh: ``None`` for a single device; a mesh to split the population.
        axis_name: mesh axis of the population (default: the only one).
        population_level: see ``fitness_fn``.

    Returns:
        ``step(key, state, params, fn_state=None, *args) -> (state, fn_state, metrics)``;
        ``key`` is the evaluation key of this generation (shared by all
        members), ``metrics`` is what ``tell`` returned.
    """
    if mesh is not None:
        mesh = _auto_mesh(mesh)
        es = sharded(es, mesh, axis_name)

    def score(key, population, fn_state, args):
        if population_level:
            fitness, fn_state = fitness_fn(key, population, fn_state, *args)
            return fitness, fn_state if mesh is None else _replicated(fn_state, mesh)
        if mesh is None:
            return pop_lib.evaluate(fitness_fn, population, key, *args), fn_state
        return evaluate(fitness_fn, population, key, *args, mesh=mesh, axis_name=axis_name), fn_state

    def step(key, state, params, fn_state=None, *args):
        population, state = es.ask(key, state, params)
        fitness, fn_state = score(key, population, fn_state, args)
        state, metrics = es.tell(key, population, fitness, state, params)
        return state, fn_state, metrics

    return jax.jit(step, out_shardings=None if mesh is None else NamedSharding(mesh, P()))


# ----------------------------------------------------------------------------- HLO inspection

_COLLECTIVE_OPS = (
    "all-gather",
    "all-reduce",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
    "collective-broadcast",
    "ragged-all-to-all",
)
_OP_RE = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+(?P<op>" + "|".join(_COLLECTIVE_OPS) + r")(?P<start>-start)?\("
)
_ARRAY_RE = re.compile(r"(?P<dtype>[a-z]+[0-9]*)\[(?P<dims>[0-9,]*)\]")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4}
_DTYPE_BYTES.update({"s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 1, "u4": 1})


class Collective(NamedTuple):
    """One cross-device operation in a compiled program.

    Attributes:
        op: the HLO op (``all-gather``, ``all-reduce`` ...).
        shapes: the result array shapes (a tuple op has several).
        dtypes: their dtypes.
        bytes: total bytes of the result per device (for an all-gather, the
            gathered size; for an all-reduce, the reduced size).
        line: the HLO line.
    """

    op: str
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    bytes: int
    line: str

    @property
    def elements(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


def collectives(hlo_text: str) -> list[Collective]:
    """The collectives of a compiled program's text.

    Args:
        hlo_text: ``jax.jit(f).lower(...).compile().as_text()``.

    Returns:
        One :class:`Collective` per collective instruction (async pairs counted once).
    """
    out = []
    for m in filter(None, map(_OP_RE.match, hlo_text.splitlines())):
        arrays = _ARRAY_RE.findall(m.group("shape"))
        if m.group("start"):  # async start: the result tuple holds (operand, result); keep the result
            arrays = arrays[-1:]
        shapes = tuple(tuple(int(d) for d in dims.split(",") if d) for _, dims in arrays)
        dtypes = tuple(dt for dt, _ in arrays)
        nbytes = sum(math.prod(s) * _DTYPE_BYTES.get(dt, 4) for s, dt in zip(shapes, dtypes, strict=True))
        out.append(Collective(m.group("op"), shapes, dtypes, nbytes, m.string.strip()))
    return out
