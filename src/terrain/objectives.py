"""Terrain objectives: triplet margin loss (with swap), multi-view VICReg, and the pairwise cost ranking loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from src.objectives.contrastive import l2_normalize

_DIST_EPS = 1e-12  # inside the square root, so the gradient at identical embeddings stays finite


def pair_distance(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum((a - b) ** 2, axis=-1) + _DIST_EPS)


def triplet_margin_loss(
    anchor: jax.Array, positive: jax.Array, negative: jax.Array, margin: float = 1.0, swap: bool = True
) -> jax.Array:
    """mean(relu(d(a, p) - d(a, n) + margin)) on L2-normalised embeddings; with `swap` the negative distance is
    min(d(a, n), d(p, n)) (the harder of the two anchors, as in Balntas et al. 2016)."""
    a, p, n = l2_normalize(anchor), l2_normalize(positive), l2_normalize(negative)
    d_neg = pair_distance(a, n)
    if swap:
        d_neg = jnp.minimum(d_neg, pair_distance(p, n))
    return jnp.mean(jax.nn.relu(pair_distance(a, p) - d_neg + margin))


def _off_diagonal_sq(c: jax.Array) -> jax.Array:
    return jnp.sum(c**2) - jnp.sum(jnp.diag(c) ** 2)


def vicreg_loss(
    z1: jax.Array, z2: jax.Array, sim: float = 25.0, std: float = 25.0, cov: float = 1.0, eps: float = 1e-4
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """VICReg (Bardes et al. 2022) on two views' features [B, D]: sim * MSE + std * mean hinge of the per-dim
    std at 1 (averaged over the views) + cov * squared off-diagonal covariance / D (summed over the views)."""
    b, d = z1.shape
    invariance = jnp.mean((z1 - z2) ** 2)
    spread, decorrelation = 0.0, 0.0
    for z in (z1, z2):
        zc = z - z.mean(axis=0)
        spread += jnp.mean(jax.nn.relu(1.0 - jnp.sqrt(zc.var(axis=0, ddof=1) + eps))) / 2
        decorrelation += _off_diagonal_sq(zc.T @ zc / (b - 1)) / d
    total = sim * invariance + std * spread + cov * decorrelation
    return total, {"invariance": invariance, "variance": spread, "covariance": decorrelation}


def preference_loss(c1: jax.Array, c2: jax.Array, label: jax.Array, margin: float = 1.0) -> jax.Array:
    """Mean over pairs of the margin ranking loss relu(-label * (c1 - c2) + margin) for label -1 (first cheaper by
    `margin`) or 1 (second cheaper), and relu(|c1 - c2| - 0.1 * margin) for label 0 (equally preferable)."""
    ranking = jax.nn.relu(-label * (c1 - c2) + margin)
    equal = jax.nn.relu(jnp.abs(c1 - c2) - 0.1 * margin)
    return jnp.mean(jnp.where(label == 0, equal, ranking))
