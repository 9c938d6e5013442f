"""Running mean/variance of observations and of the discounted return (CleanRL's `norm_obs` / `norm_reward`),
as pytrees so that they live inside the jitted PPO state."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class RunningMeanStd(NamedTuple):
    """Elementwise running mean/variance of a pytree (Chan et al. parallel update), a jit-friendly state."""

    mean: Any
    var: Any
    count: jax.Array


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def rms_init(example: Any) -> RunningMeanStd:
    """Stats for one sample (no batch axis); non-float leaves (validity flags) keep mean 0 / var 1 and pass
    through unnormalised."""
    zeros = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.float32), example)
    ones = jax.tree.map(lambda x: jnp.ones(jnp.shape(x), jnp.float32), example)
    return RunningMeanStd(zeros, ones, jnp.asarray(1e-4, jnp.float32))


def rms_update(rms: RunningMeanStd, batch: Any) -> RunningMeanStd:
    """Fold a batch (leading axis) into the running statistics."""
    n = jnp.asarray(jax.tree.leaves(batch)[0].shape[0], jnp.float32)
    total = rms.count + n

    def merge(mean: jax.Array, var: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        if not _is_float(x):
            return mean, var
        x = x.astype(jnp.float32)
        b_mean, b_var = x.mean(0), x.var(0)
        delta = b_mean - mean
        new_mean = mean + delta * n / total
        m2 = var * rms.count + b_var * n + delta**2 * rms.count * n / total
        return new_mean, m2 / total

    pairs = jax.tree.map(merge, rms.mean, rms.var, batch)
    is_pair = lambda t: isinstance(t, tuple)  # noqa: E731
    mean = jax.tree.map(lambda t: t[0], pairs, is_leaf=is_pair)
    var = jax.tree.map(lambda t: t[1], pairs, is_leaf=is_pair)
    return RunningMeanStd(mean, var, total)


def rms_normalize(rms: RunningMeanStd, x: Any, clip: float) -> Any:
    """(x - mean) / std, clipped to [-clip, clip]; non-float leaves unchanged."""

    def norm(m: jax.Array, v: jax.Array, a: jax.Array) -> jax.Array:
        if not _is_float(a):
            return a
        return jnp.clip((a - m) / jnp.sqrt(v + 1e-8), -clip, clip).astype(a.dtype)

    return jax.tree.map(norm, rms.mean, rms.var, x)


def normalize_reward(
    ret_rms: RunningMeanStd, acc: jax.Array, reward: jax.Array, done: jax.Array, gamma: float, clip: float
) -> tuple[RunningMeanStd, jax.Array, jax.Array]:
    """Scale rewards by the running std of the discounted return (what gymnasium's NormalizeReward does)."""
    acc = acc * gamma + reward
    ret_rms = rms_update(ret_rms, acc)
    scaled = jnp.clip(reward / jnp.sqrt(ret_rms.var + 1e-8), -clip, clip)
    return ret_rms, jnp.where(done, 0.0, acc), scaled
