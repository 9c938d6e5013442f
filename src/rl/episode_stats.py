"""Episode figures of a rollout: per-env running return and length, and the means over the episodes that ended."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class EpisodeStats(NamedTuple):
    """Per-env accumulators of the raw (unnormalised) episode return and length."""

    ret: jax.Array
    length: jax.Array

    @classmethod
    def zeros(cls, n: int) -> EpisodeStats:
        return cls(jnp.zeros(n, jnp.float32), jnp.zeros(n, jnp.int32))


def summarize_episodes(
    returns: np.ndarray, lengths: np.ndarray, done: np.ndarray, extra: dict[str, Any]
) -> dict:
    """Mean over the episodes that ended in this iteration ([T, N] arrays; `extra` values at episode end)."""
    done = np.asarray(done, bool)
    n = int(done.sum())
    out: dict[str, float] = {"episodes": float(n)}
    if n:
        out["episode/return"] = float(np.asarray(returns)[done].mean())
        out["episode/length"] = float(np.asarray(lengths)[done].mean())
        for k, v in extra.items():
            out[f"episode/{k}"] = float(np.asarray(v, np.float64)[done].mean())
    return out


def info_at_end(info: dict, key: str, done: np.ndarray) -> np.ndarray:
    """info[key] per env, taken from the finished episode's `final_info` where it ended (SAME_STEP autoreset)."""
    n = done.shape[0]
    now = np.asarray(info.get(key, np.full(n, np.nan)), np.float64).reshape(n)
    final = info.get("final_info", {})
    if key in final:
        now = np.where(done, np.asarray(final[key], np.float64).reshape(n), now)
    return now
