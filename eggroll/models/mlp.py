"""MLP policies (Flax linen) for neuroevolution.

:class:`MLPPolicy` maps a flat observation to an action. Its hidden layers are
``nn.Dense`` (so EGGROLL's Flax bridge can perturb their kernels in low-rank
form without materialising per-member matrices) and its head turns the last
layer's output into an action:

========================  ============================================================
head                      action
========================  ============================================================
``"argmax"``              ``argmax(logits)`` (discrete, always deterministic)
``"categorical"``         a sample from ``softmax(logits)`` when given a key, else argmax
``"tanh"``                ``low + (tanh(y) + 1) / 2 * (high - low)`` (continuous, deterministic)
``"gaussian"``            the tanh-squashed mean plus ``exp(log_std) * N(0, 1)`` noise when
                          given a key, clipped to ``[low, high]``; the mean without a key
========================  ============================================================

Example:
    >>> import jax, jax.numpy as jnp
    >>> policy = MLPPolicy(action_dim=2, hidden=(8,), head="argmax")
    >>> variables = policy.init(jax.random.key(0), jnp.zeros(4))
    >>> policy.apply(variables, jnp.ones(4)).shape
    ()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "elu": jax.nn.elu,
    "leaky_relu": jax.nn.leaky_relu,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}
DISCRETE_HEADS = ("argmax", "categorical")
CONTINUOUS_HEADS = ("tanh", "gaussian")
HEADS = DISCRETE_HEADS + CONTINUOUS_HEADS


def get_activation(activation: str | Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """Resolve an activation given by name (``"tanh"``, ``"relu"`` ...) or as a callable.

    Raises:
        ValueError: for an unknown name (the message lists the known ones).
    """
    if callable(activation):
        return activation
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(
            f"unknown activation {activation!r}; use one of {sorted(ACTIVATIONS)} or pass a callable"
        ) from None


class MLPPolicy(nn.Module):
    """A multilayer perceptron policy with a discrete or continuous head.

    Attributes:
        action_dim: number of discrete actions, or the dimension of a continuous action.
        hidden: widths of the hidden layers, e.g. ``(32, 32)``; ``()`` gives a linear policy.
        activation: name of the hidden activation (see :data:`ACTIVATIONS`) or a callable.
        head: one of ``"argmax"``, ``"categorical"``, ``"tanh"``, ``"gaussian"``.
        action_low: lower bound(s) of a continuous action (scalar or one per dimension).
        action_high: upper bound(s) of a continuous action.
        init_log_std: initial log standard deviation of the ``"gaussian"`` head
            (a learned vector parameter ``log_std``).
        kernel_init: initialiser of the Dense kernels.
    """

    action_dim: int
    hidden: Sequence[int] = (32, 32)
    activation: str | Callable[[jax.Array], jax.Array] = "tanh"
    head: str = "argmax"
    action_low: float | Sequence[float] = -1.0
    action_high: float | Sequence[float] = 1.0
    init_log_std: float = -1.0
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, obs: jax.Array, key: jax.Array | None = None) -> jax.Array:
        """Compute the action for one observation (or a batch with a leading axis).

        Args:
            obs: flat observation(s), shape ``(obs_dim,)`` or ``(batch, obs_dim)``.
            key: PRNG key for a stochastic head; ``None`` gives the deterministic action.

        Returns:
            an ``int32`` action index (discrete heads) or a float vector of
            ``action_dim`` values within ``[action_low, action_high]``.
        """
        if self.head not in HEADS:
            raise ValueError(f"unknown policy head {self.head!r}; use one of {HEADS}")
        act = get_activation(self.activation)
        x = obs.astype(jnp.float32)
        for i, width in enumerate(self.hidden):
            x = act(nn.Dense(int(width), kernel_init=self.kernel_init, name=f"hidden_{i}")(x))
        y = nn.Dense(self.action_dim, kernel_init=self.kernel_init, name="out")(x)
        if self.head == "argmax" or (self.head == "categorical" and key is None):
            return jnp.argmax(y, axis=-1).astype(jnp.int32)
        if self.head == "categorical":
            return jax.random.categorical(key, y, axis=-1).astype(jnp.int32)
        low = jnp.broadcast_to(jnp.asarray(self.action_low, jnp.float32), (self.action_dim,))
        high = jnp.broadcast_to(jnp.asarray(self.action_high, jnp.float32), (self.action_dim,))
        half = 0.5 * (high - low)
        low, half = jnp.broadcast_to(low, y.shape), jnp.broadcast_to(half, y.shape)
        mean = low + (jnp.tanh(y) + 1.0) * half
        if self.head == "tanh":
            return mean
        log_std = self.param("log_std", nn.initializers.constant(self.init_log_std), (self.action_dim,))
        if key is None:
            return mean
        noise = jnp.broadcast_to(jnp.exp(log_std), y.shape) * half * jax.random.normal(key, y.shape)
        return jnp.clip(mean + noise, low, low + 2.0 * half)


def default_head(discrete: bool, stochastic: bool) -> str:
    """The head that fits an action space: argmax / categorical, or tanh / gaussian."""
    if discrete:
        return "categorical" if stochastic else "argmax"
    return "gaussian" if stochastic else "tanh"
