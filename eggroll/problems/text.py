"""Byte-level language modelling as an ES problem: corpus, baselines, fitness, training loop.

* :func:`load_corpus` reads a text file, or by default the English help topics
  that ship with every CPython (``pydoc_data.topics``, about 466 KB), so nothing
  is downloaded. :func:`split_bytes` keeps the last ``valid_fraction`` as the
  held-out validation split.
* :func:`unigram_bits` / :func:`bigram_bits` are the count-based baselines of
  the same split (additive smoothing), in bits per byte.
* :func:`bits_per_byte` is the fitness: the mean negative log2-likelihood of the
  next byte under the model's ``int8`` logits (``p ∝ 2**(logit/16)``). It is the
  one floating-point computation in a training generation: a log-sum-exp over
  256 logits per byte, in ``float32``; the model and the update stay integer,
  and integer EGGROLL only uses the sign of the pairwise difference.
* :func:`make_task` builds the strategy (:func:`eggroll.strategies.int_eggroll.int_eggroll`
  on an :mod:`eggroll.models.egg` model), the data streams and the jitted step;
  :func:`train_lm` trains it through the shared run loop (:mod:`eggroll.apps.lm`).

Data layout: the training bytes are cut into ``S = N / (2 G)`` contiguous
streams (``N`` members, groups of ``G`` antithetic pairs); at generation ``g``
every stream supplies its next chunk of ``chunk`` bytes, all ``2G`` members of a
group read the same chunk, and every member carries its hidden state from the
previous chunk (reset to zero when the streams wrap around).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from eggroll.models import egg
from eggroll.parallel import check_population_size, device_memory, map_members, replicate, replicated_tell
from eggroll.strategies.int_eggroll import MAX_FAN_IN, IntEggrollState, int_eggroll, member, z_threshold_schedule

LN2 = math.log(2.0)


# --------------------------------------------------------------------------- corpus and baselines


def default_corpus() -> bytes:
    """The ``pydoc_data.topics`` help texts (every CPython ships them), UTF-8, topics sorted."""
    from pydoc_data import topics

    return "".join(topics.topics[k] for k in sorted(topics.topics)).encode("utf-8")


def load_corpus(path: str | Path | None = None) -> bytes:
    """Read a corpus as raw bytes.

    Args:
        path: a file to read; ``None`` for :func:`default_corpus`.

    Returns:
        The bytes.
    """
    if path is None:
        return default_corpus()
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"corpus file {str(p)!r} does not exist; pass an existing text file or omit it.")
    data = p.read_bytes()
    if len(data) < 4096:
        raise ValueError(f"corpus {str(p)!r} has only {len(data)} bytes; need at least 4096 to train and validate.")
    return data


def split_bytes(data: bytes, valid_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Split bytes into ``(train, valid)`` ``uint8`` arrays; validation is the tail."""
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}.")
    arr = np.frombuffer(data, np.uint8)
    cut = int(round(len(arr) * (1 - valid_fraction)))
    return arr[:cut].copy(), arr[cut:].copy()


def unigram_bits(train: np.ndarray, evaluate: np.ndarray, smoothing: float = 1.0) -> float:
    """Bits per byte of ``evaluate`` under the byte frequencies of ``train`` (add-``smoothing``)."""
    counts = np.bincount(train, minlength=256).astype(np.float64) + smoothing
    logp = np.log2(counts / counts.sum())
    return float(-logp[evaluate].mean())


def bigram_bits(train: np.ndarray, evaluate: np.ndarray, smoothing: float = 0.1) -> float:
    """Bits per byte of ``evaluate[1:]`` given the previous byte, counts from ``train`` (add-``smoothing``)."""
    counts = np.full((256, 256), smoothing, np.float64)
    np.add.at(counts, (train[:-1], train[1:]), 1.0)
    logp = np.log2(counts / counts.sum(axis=1, keepdims=True))
    return float(-logp[evaluate[:-1], evaluate[1:]].mean())


def bits_per_byte(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean ``-log2 p(target)`` over the last-but-one axis, with ``p ∝ 2**(logit/16)``.

    Args:
        logits: ``int8`` (or integer-valued float) ``(..., T, 256)``.
        targets: byte ids ``(..., T)``.

    Returns:
        ``float32`` bits per byte, shape ``(...)``.
    """
    z = logits.astype(jnp.float32) * (LN2 / egg.ONE)
    nats = jax.nn.logsumexp(z, axis=-1) - jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), -1)[..., 0]
    return jnp.mean(nats, axis=-1) / LN2


# --------------------------------------------------------------------------- training


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Everything that defines a training run (a JSON-able record for checkpoints).

    Attributes:
        width: model width ``D``.
        depth: number of blocks.
        mlp_ratio: MLP hidden width / ``D``.
        population: ES population ``N`` (even).
        rank: rank of the matrix perturbations.
        sigma_shift: ``sigma = 2**-sigma_shift``.
        chunk: bytes per member per generation.
        group_pairs: antithetic pairs that share one chunk (``G``).
        generations: length of the threshold schedule (and default run length).
        alpha_start: z-test level at generation 0 (1 = move every weight with ``Z != 0``).
        alpha_end: z-test level at the last generation.
        noise_reuse: generations that share the same perturbations.
        valid_fraction: tail of the corpus held out.
        seed: seed of the model and the noise.
    """

    width: int = 64
    depth: int = 2
    mlp_ratio: int = 4
    population: int = 512
    rank: int = 1
    sigma_shift: int = 4
    chunk: int = 64
    group_pairs: int = 1
    generations: int = 1000
    alpha_start: float = 1.0
    alpha_end: float = 1 / 16
    noise_reuse: int = 1
    valid_fraction: float = 0.1
    seed: int = 0

    def validate(self) -> LMConfig:
        """Raise a ``ValueError`` naming the bad setting; return ``self`` otherwise."""
        self.model.validate()
        for name in ("chunk", "group_pairs", "generations", "noise_reuse"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")

        def shapes(depth: int) -> list:  # abstract: nothing is allocated
            model = egg.EggConfig(self.width, depth, self.mlp_ratio)
            return jax.tree.leaves(jax.eval_shape(lambda: egg.init(jax.random.key(0), model)))

        one, two = shapes(1), shapes(2)
        fan_in = max(s.shape[1] for s in one if s.ndim == 2)
        if fan_in > MAX_FAN_IN:
            raise ValueError(
                f"the model's widest matrix has a fan-in of {fan_in}, above the {MAX_FAN_IN} an int32 perturbation "
                "holds; use a smaller --width or --mlp-ratio."
            )
        block = sum(s.size for s in two) - sum(s.size for s in one)
        size = sum(s.size for s in one) + block * (self.depth - 1) + self.population * self.depth * self.width
        if 4 * size > device_memory(jax.local_devices()[0]):  # int8 weights x (mean, template, update), states
            raise ValueError(
                f"{self.depth} blocks of width {self.width} and population {self.population} need at least "
                f"{4 * size / 2**30:,.1f} GiB, more than this machine has; use a smaller --depth, --width or "
                "--population."
            )
        if not 0 <= self.sigma_shift <= 10:  # int8 products reach 2^14: a larger shift rounds every perturbation to 0
            raise ValueError(f"sigma_shift must be in 0..10 (sigma = 2^-sigma_shift), got {self.sigma_shift}.")
        if self.population < 2 or self.population % (2 * self.group_pairs):
            pairs = 2 * self.group_pairs
            raise ValueError(
                f"population (--population) must be a positive multiple of 2 * group_pairs (--group-pairs), "
                f"{pairs}; got {self.population}: use {max(pairs, -(-self.population // pairs) * pairs)}."
            )
        return self

    @property
    def model(self) -> egg.EggConfig:
        return egg.EggConfig(self.width, self.depth, self.mlp_ratio)

    @property
    def streams(self) -> int:
        return self.population // (2 * self.group_pairs)


class Carry(NamedTuple):
    """What a training run carries from one generation to the next (checkpointed)."""

    es_state: IntEggrollState
    hidden: jax.Array  # (N, depth, width) int8
    generation: jax.Array  # int32


class LMTask(NamedTuple):
    """The pieces of a run, built by :func:`make_task`."""

    config: LMConfig
    strategy: Any
    train_streams: np.ndarray  # (S, L) uint8
    valid_streams: np.ndarray  # (V, Lv) uint8
    init: Callable[[], Carry]
    step: Callable[[Carry, jax.Array, jax.Array, jax.Array], tuple[Carry, dict]]
    validate: Callable[[Any], jax.Array]
    mesh: Any = None  # a jax.sharding.Mesh splitting the members, or None (one device)

    @property
    def chunks_per_pass(self) -> int:
        return (self.train_streams.shape[1] - 1) // self.config.chunk

    def put(self, x: np.ndarray) -> jax.Array:
        """A host array as a device input of :attr:`step` (replicated over the mesh, if any)."""
        return jnp.asarray(x) if self.mesh is None else replicate(x, self.mesh)

    def batch(self, generation: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """``(inputs, targets, reset)`` for a generation: ``(S, chunk)`` each; reset at a wrap."""
        t = self.config.chunk
        pos = (generation % self.chunks_per_pass) * t
        window = self.train_streams[:, pos : pos + t + 1]
        return window[:, :-1], window[:, 1:], pos == 0


def _streams(data: np.ndarray, count: int, min_len: int, what: str) -> np.ndarray:
    length = len(data) // count
    if length < min_len:
        raise ValueError(
            f"the {what} split ({len(data)} bytes) is too short for {count} streams of at least {min_len} bytes; "
            "use a smaller population / larger group_pairs / shorter chunk, or a bigger corpus."
        )
    return data[: count * length].reshape(count, length)


def make_task(config: LMConfig, train: np.ndarray, valid: np.ndarray, valid_streams: int = 16, *, mesh=None) -> LMTask:
    """Build the strategy, the data streams and the jitted step / validation functions.

    Args:
        config: the run's settings.
        train: training bytes.
        valid: validation bytes.
        valid_streams: the validation split is scored as this many contiguous
            streams, each from a zero state.
        mesh: ``None`` for one device, or a 1-D :class:`jax.sharding.Mesh`
            (e.g. from :func:`eggroll.parallel.mesh_from_option`) whose axis
            splits the population: each device evaluates its own members and
            carries their hidden states; only the ``N`` fitness values are
            all-gathered, and the integer update is computed identically on
            every device, so the result equals the one-device run exactly.

    Returns:
        An :class:`LMTask`.

    Raises:
        ValueError: a bad setting, a corpus too short for the streams, or a
            population that does not split into whole antithetic pairs per device.
    """
    config.validate()
    if mesh is not None:
        check_population_size(config.population, mesh.devices.size, antithetic=True)
    train_s = _streams(train, config.streams, config.chunk + 1, "training")
    valid_s = _streams(valid, valid_streams, 2, "validation")
    es, init, step, validate = _compiled(config, mesh)
    task = LMTask(config, es, train_s, valid_s, init, step, None, mesh)
    xs, ys = task.put(valid_s[:, :-1]), task.put(valid_s[:, 1:])
    return task._replace(validate=lambda mean: validate(mean, xs, ys))


@functools.lru_cache(maxsize=8)
def _compiled(config: LMConfig, mesh=None):
    """Strategy and jitted functions for a config (and mesh), cached so a second task with the
    same settings in one process (e.g. a resumed run) reuses the compiled code."""
    mcfg = config.model
    template = jax.eval_shape(lambda: egg.init(jax.random.key(0), mcfg))
    template = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), template)
    es = int_eggroll(
        config.population,
        template,
        rank=config.rank,
        sigma_shift=config.sigma_shift,
        z_thresholds=z_threshold_schedule(config.generations, config.alpha_start, config.alpha_end),
        noise_reuse=config.noise_reuse,
    )
    group = 2 * config.group_pairs

    def init() -> Carry:
        key = jax.random.key(config.seed)
        params = egg.init(jax.random.fold_in(key, 0), mcfg)
        state = es.init(jax.random.fold_in(key, 1), params, es.default_params)
        hidden = jnp.zeros((config.population, mcfg.depth, mcfg.width), jnp.int8)
        return Carry(state, hidden, jnp.int32(0))

    def step(carry: Carry, inputs, targets, reset):
        params = es.default_params
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 2), carry.generation)
        pop, state = es.ask(key, carry.es_state, params)
        hidden = jnp.where(reset, jnp.zeros_like(carry.hidden), carry.hidden)
        x = jnp.repeat(inputs, group, axis=0)
        y = jnp.repeat(targets, group, axis=0)

        def one(member_params, h, xi, yi):
            logits, h = egg.apply(member_params, xi, h)
            return bits_per_byte(logits, yi), h

        view = functools.partial(member, rank=config.rank)
        fitness, hidden = map_members(one, pop, hidden, x, y, member=view, mesh=mesh)
        if mesh is None:
            state, metrics = es.tell(key, pop, fitness, state, params)
        else:  # the all-gather of the N fitness values; the update is replicated
            state, metrics = replicated_tell(es, mesh, key, pop, fitness, state, params)
        return Carry(state, hidden, carry.generation + 1), metrics

    def validate(mean, xs, ys) -> jax.Array:
        zero = jnp.zeros((mcfg.depth, mcfg.width), jnp.int8)
        logits = jax.vmap(lambda t: egg.apply(mean, t, zero)[0])(xs)
        return jnp.mean(bits_per_byte(logits, ys))

    if mesh is None:
        return es, jax.jit(init), jax.jit(step, donate_argnums=0), jax.jit(validate)
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    rep = NamedSharding(mesh, P())
    shardings = jax.tree.map(lambda _: rep, jax.eval_shape(init))
    shardings = shardings._replace(hidden=NamedSharding(mesh, P(mesh.axis_names[0])))
    inputs = jax.ShapeDtypeStruct((config.streams, config.chunk), jnp.uint8)  # the step's abstract arguments
    metrics = jax.eval_shape(step, jax.eval_shape(init), inputs, inputs, jax.ShapeDtypeStruct((), jnp.bool_))[1]
    step_out = (shardings, jax.tree.map(lambda _: rep, metrics))
    step = jax.jit(step, donate_argnums=0, out_shardings=step_out)
    return es, jax.jit(init, out_shardings=shardings), step, jax.jit(validate, out_shardings=rep)


def train_lm(task: LMTask, carry: Carry | None = None, **options: Any) -> tuple[Carry, list[dict]]:
    """Run integer EGGROLL on a text task through the shared run loop, without files.

    The same call as :func:`eggroll.apps.lm.train_lm` (options: ``generations``, ``time_budget``,
    ``valid_every``, ``callback``, ``validate_first``, ``stop``); returns ``(carry, history)``.
    The jitted step donates its carry, so a ``carry`` passed in is copied once first: it stays
    usable, and continuing it twice gives the same result.
    """
    from eggroll.apps.lm import train_lm as run_lm

    return run_lm(task, carry, **options)  # (it copies the carry)


def plot_learning_curve(history: list[dict], baselines: dict[str, float], path: str | Path, title: str = "") -> Path:
    """Save a PNG of train / validation bits per byte against the generation, with the baselines.

    Args:
        history: records from :func:`train_lm` (or a run's ``history``).
        baselines: ``unigram_valid`` / ``bigram_valid`` (and optional ``_train``) values.
        path: output file.
        title: plot title.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    tr = [(r["generation"], r["train_bpb"]) for r in history if r.get("train_bpb") is not None]
    va = [(r["generation"], r["valid_bpb"]) for r in history if r.get("valid_bpb") is not None]
    if tr:
        ax.plot(*zip(*tr, strict=True), lw=0.8, alpha=0.6, label="train (population mean)")
    if va:
        ax.plot(*zip(*va, strict=True), "o-", ms=3, label="validation (mean model)")
    for name, style in (("unigram_valid", "--"), ("bigram_valid", ":")):
        if name in baselines:
            ax.axhline(baselines[name], color="gray", ls=style, label=f"{name.split('_')[0]} {baselines[name]:.2f}")
    ax.set(xlabel="generation", ylabel="bits per byte", ylim=(None, min(8.5, max([v for _, v in va] + [5.0]) + 0.2)))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
