"""Which patches each sample shows its encoder: fixed per-modality budgets or a Dirichlet split of one budget.

The budgeting modes are described in `src.objectives.masked_modeling`'s docstring; shapes stay static under jit.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def sample_patch_masks(
    key: jax.Array,
    num_patches: dict[str, int],
    valid: dict[str, jax.Array],
    *,
    mask_ratio: float,
    dirichlet_alpha: float = 0.0,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Random visible patches per modality: (keep_idx int32 [B, S_m], keep_mask bool [B, S_m]).

    keep_idx holds S_m distinct grid positions (a random permutation's prefix); keep_mask marks which slots
    are visible. See the module docstring for the two budgeting modes.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    if dirichlet_alpha < 0.0:
        raise ValueError(f"dirichlet_alpha must be >= 0, got {dirichlet_alpha}")
    mods = tuple(num_patches)
    b = next(iter(valid.values())).shape[0]
    keys = jax.random.split(key, len(mods) + 1)
    perms = {
        m: jnp.argsort(jax.random.uniform(k, (b, num_patches[m])), axis=1).astype(jnp.int32)
        for m, k in zip(mods, keys[1:], strict=True)
    }
    if dirichlet_alpha == 0.0:
        keep_idx, keep_mask = {}, {}
        for m in mods:
            k_m = min(num_patches[m], max(1, _round(num_patches[m] * (1.0 - mask_ratio))))
            keep_idx[m] = perms[m][:, :k_m]
            keep_mask[m] = jnp.ones((b, k_m), bool)
        return keep_idx, keep_mask

    total = sum(num_patches.values())
    budget = min(total, max(1, _round(total * (1.0 - mask_ratio))))
    present = jnp.stack([jnp.asarray(valid[m], bool) for m in mods], axis=1)  # [B, M]
    cap = jnp.asarray([num_patches[m] for m in mods], jnp.int32)[None, :] * present
    weights = jax.random.gamma(keys[0], dirichlet_alpha, (b, len(mods))) * present
    weights = weights / jnp.maximum(weights.sum(axis=1, keepdims=True), 1e-30)
    target = jnp.minimum(budget, cap.sum(axis=1))  # [B]
    edges = jnp.minimum(
        jnp.floor(jnp.cumsum(weights, axis=1) * target[:, None] + 0.5).astype(jnp.int32), target[:, None]
    )
    counts = jnp.minimum(jnp.diff(edges, axis=1, prepend=0), cap)
    left = target - counts.sum(axis=1)
    for j in range(len(mods)):  # hand what did not fit (or was lost to rounding) to modalities with room
        extra = jnp.minimum(cap[:, j] - counts[:, j], left)
        counts = counts.at[:, j].add(extra)
        left = left - extra
    keep_idx, keep_mask = {}, {}
    for j, m in enumerate(mods):
        slots = min(num_patches[m], budget)
        keep_idx[m] = perms[m][:, :slots]
        keep_mask[m] = jnp.arange(slots)[None, :] < counts[:, j : j + 1]
    return keep_idx, keep_mask


def visible_positions(keep_idx: jax.Array, keep_mask: jax.Array, num_patches: int) -> jax.Array:
    """bool [B, N]: True at the grid positions that were encoded."""
    empty = jnp.zeros((keep_idx.shape[0], num_patches), bool)
    return jax.vmap(lambda e, i, k: e.at[i].set(k))(empty, keep_idx, keep_mask)
