"""Deterministic evaluation of a PPO policy (the squashed mean): rollouts on a jitted or a host env recorded
time-major [T, E], per-episode figures (return, laps, clean laps, lap time) and their mean and spread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from src import config
from src.config import RLConfig
from src.rl.episode_stats import info_at_end
from src.rl.ppo import Learner, TrainState
from src.rl.train_jax import JaxEnv

RACING_INFO = ("total_progress", "lap", "wall_collision")


def host_eval_rollout(
    learner: Learner,
    state: TrainState,
    env: Any,
    obs_fn: Callable,
    action_fn: Callable,
    max_steps: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Deterministic episodes on a vector env, recorded time-major [T, E] up to every env's first episode end."""
    act = jax.jit(learner.act_deterministic)
    obs, _ = env.reset(seed=seed)
    n = env.num_envs
    ended = np.zeros(n, bool)
    rec: dict[str, list] = {"reward": [], "done": [], "pose": [], **{k: [] for k in RACING_INFO}}
    for _ in range(max_steps):
        action = np.asarray(act(state, obs_fn(obs)))
        obs, reward, terminated, truncated, info = env.step(action_fn(action))
        done = np.logical_or(terminated, truncated)
        rec["reward"].append(np.asarray(reward, np.float64))
        rec["done"].append(done)
        for k in RACING_INFO:
            rec[k].append(info_at_end(info, k, done))
        pose = info.get("pose")
        rec["pose"].append(
            np.asarray(pose, np.float64)[:, [0, 1, 5]] if pose is not None else np.full((n, 3), np.nan)
        )
        ended |= done
        if ended.all():
            break
    return {k: np.stack(v) for k, v in rec.items()}


def eval_starts(cfg: RLConfig, episodes: int) -> np.ndarray:
    """Lap fraction at which each evaluation episode starts: episode e at (e % K) / K, K = eval.start_positions,
    so episode 0 starts on the start line and K starts are spread evenly around the track."""
    k = cfg.eval.start_positions
    if k < 1 or episodes < k:
        raise config.ConfigError(
            f"eval.start_positions={k} must be at least 1 and at most eval.episodes={episodes} "
            "(every start position is driven at least once)"
        )
    return (np.arange(episodes) % k) / k


def jitted_eval(
    cfg: RLConfig, env: JaxEnv, reset_for: Callable[[int], Callable] | None = None
) -> Callable[[Learner, TrainState, int], dict[str, np.ndarray]]:
    """`evaluate(learner, state, episodes)`: `jax_eval_rollout` compiled once per learner and episode count;
    `reset_for(episodes)` gives the rollout's batched reset (default `env.reset` per episode)."""
    compiled: dict[tuple[int, int], Callable] = {}

    def evaluate(learner: Learner, state: TrainState, episodes: int) -> dict[str, np.ndarray]:
        key = (id(learner), episodes)
        if key not in compiled:
            reset = reset_for(episodes) if reset_for is not None else None
            compiled[key] = jax.jit(
                lambda s, k: jax_eval_rollout(learner, env, s, k, episodes, cfg.eval.max_steps, reset)
            )
        return jax.tree.map(np.asarray, compiled[key](state, jax.random.PRNGKey(cfg.run.seed + 10_000)))

    return evaluate


def jax_eval_rollout(
    learner: Learner,
    env: JaxEnv,
    state: TrainState,
    key: jax.Array,
    episodes: int,
    max_steps: int,
    reset: Callable[[jax.Array], tuple[Any, Any]] | None = None,
) -> dict[str, jax.Array]:
    """Deterministic episodes without auto-reset, recorded [T, E] (steps after an episode's end are ignored).
    `reset` maps the [E] episode keys to the initial (obs, state) batch (default: `env.reset` per episode)."""
    keys = jax.random.split(key, episodes + 1)
    obs, env_state = (reset or jax.vmap(env.reset))(keys[1:])

    def step(carry: tuple, k: jax.Array) -> tuple[tuple, dict]:
        obs, env_state = carry
        action = learner.act_deterministic(state, jax.vmap(env.obs_fn)(obs))
        obs, env_state, reward, terminated, truncated, info = jax.vmap(env.step)(
            jax.random.split(k, episodes), env_state, action
        )
        rec = {"reward": reward, "done": terminated | truncated}
        if isinstance(obs, dict) and "pose" in obs:
            rec["pose"] = obs["pose"][:, jnp.array([0, 1, 5])]
        rec.update({name: info[name] for name in env.episode_info})
        return (obs, env_state), rec

    _, rec = jax.lax.scan(step, (obs, env_state), jax.random.split(keys[0], max_steps))
    return rec


def episode_figures(rec: dict[str, np.ndarray], control_dt: float) -> dict[str, np.ndarray]:
    """Per-episode figures [E] from a [T, E] record: return, and for racing laps, progress, collision, clean
    lap and lap time (NaN where no lap was completed)."""
    done = np.asarray(rec["done"], bool)
    t_len, n = done.shape
    ended = done.any(0)
    last = np.where(ended, done.argmax(0), t_len - 1)  # index of each episode's final step
    live = np.arange(t_len)[:, None] <= last[None, :]
    out = {"return": (np.asarray(rec["reward"], np.float64) * live).sum(0)}
    if control_dt > 0:
        lap = np.asarray(rec["lap"], np.float64)
        laps_done = np.where(live, lap - 1.0, 0.0).max(0)
        first_lap = np.where(live & (lap >= 2.0), np.arange(t_len)[:, None], t_len).min(0)
        collided = (np.asarray(rec["wall_collision"], bool) & live).any(0)
        out.update(
            {
                "laps": laps_done,
                # laps + lap fraction at the episode's end (a start just behind the line counts from 0)
                "progress": np.maximum(
                    np.asarray(rec["total_progress"], np.float64)[last, np.arange(n)], 0.0
                ),
                "collided": collided.astype(np.float64),
                "clean": ((laps_done >= 1.0) & ~collided).astype(np.float64),
                "lap_time": np.where(laps_done >= 1.0, (first_lap + 1) * control_dt, np.nan),
            }
        )
    return out


def _spread(name: str, values: np.ndarray) -> dict[str, float]:
    """Mean, std, min and max of `values` (NaNs left out; all NaN if none is finite)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    stats = (v.mean(), v.std(), v.min(), v.max()) if v.size else (np.nan,) * 4
    return dict(zip((name, f"{name}_std", f"{name}_min", f"{name}_max"), map(float, stats), strict=True))


def summarize_eval(rec: dict[str, np.ndarray], control_dt: float) -> dict[str, Any]:
    """Evaluation figures from a [T, E] record: mean and spread (std, min, max) of the return over episodes;
    for racing also of the lap time (over the episodes that completed a lap) and of the clean-lap fraction
    over start positions (`rec["start"]`, each episode's start lap fraction, where given), and the mean laps,
    progress and collision rate."""
    per = episode_figures(rec, control_dt)
    n = per["return"].shape[0]
    out: dict[str, Any] = {"episodes": n, **_spread("return", per["return"])}
    if control_dt > 0:
        starts = np.asarray(rec.get("start", np.zeros(n)), np.float64)
        groups = np.unique(starts)
        clean = np.array([per["clean"][starts == g].mean() for g in groups])
        out.update(
            {
                "start_positions": len(groups),
                "laps": float(per["laps"].mean()),
                "progress": float(per["progress"].mean()),
                "collision_rate": float(per["collided"].mean()),
                **_spread("lap_completed_clean", clean),
                **_spread("lap_time", per["lap_time"]),
            }
        )
    return out
