"""The experiment's envs: the multi-track training env (one track per slice of the env batch) and the evaluation
tracks with their minimum-time laps."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from src import config
from src.envs import laptime
from src.envs.racecar import env as racecar
from src.envs.racecar.params import make_params
from src.envs.tracks.geometry import Track
from src.envs.tracks.procedural import procedural_track
from src.envs.tracks.registry import get_track
from src.rl import envs as rl_envs
from src.rl import evaluate, ppo, train_jax
from src.transfer.config import (
    TransferConfig,
    rl_config,
)


def load_track(spec: str) -> Track:
    """"procedural:<seed>" -> `procedural_track(seed)`; anything else -> `get_track` (name or map .yaml)."""
    if spec.startswith("procedural:"):
        try:
            seed = int(spec.split(":", 1)[1])
        except ValueError:
            raise config.ConfigError(f"track {spec!r}: expected procedural:<integer seed>") from None
        return procedural_track(seed)
    return get_track(spec)


def env_params(cfg: TransferConfig, track: Track, reset_mode: str | None = None) -> Any:
    """The racing env on `track` with the experiment's car: the run's sensors and task, the camera at the
    model's rgb size, `transfer.max_speed` and the time cost per step."""
    settings = rl_envs.env_settings(rl_config(cfg))
    if reset_mode is not None:
        settings["reset_mode"] = reset_mode
    if "rgb" in cfg.model.modalities:
        h, w = cfg.model.modalities["rgb"].shape[:2]
        settings.update(camera=True, camera_height=h, camera_width=w)
    return make_params(
        track, **settings, max_speed=cfg.transfer.max_speed, frame_reward=cfg.transfer.frame_reward
    )


def multi_track_env(cfg: TransferConfig, tracks: list[Track]) -> tuple[train_jax.JaxEnv, list[Any]]:
    """`env.num_envs` cars split into equal contiguous slices, slice k on track k.

    Why slices: a track is a set of arrays of its own shapes (walls, distance and progress grids), so cars on
    different tracks cannot share one vmapped step; each slice is one vmapped step on its own track's constant
    arrays, all inside the engine's one jitted iteration (K copies of the env code, no gather of track data)."""
    n, k = cfg.env.num_envs, len(tracks)
    if k < 1 or n % k:
        raise config.ConfigError(f"env.num_envs={n} must be a multiple of the {k} transfer.train_tracks")
    per = n // k
    params = [env_params(cfg, t) for t in tracks]
    obs_fn = rl_envs.contract_obs_fn(rl_config(cfg), params[0])

    def cut(tree: Any, i: int) -> Any:
        return jax.tree.map(lambda x: x[i * per : (i + 1) * per], tree)

    def cat(trees: list[Any]) -> Any:
        return jax.tree.map(lambda *xs: jnp.concatenate(xs), *trees)

    def reset_batch(keys: jax.Array) -> tuple[Any, Any]:
        outs = [jax.vmap(lambda key, p=p: racecar.reset(key, p))(cut(keys, i)) for i, p in enumerate(params)]
        return cat([o[0] for o in outs]), cat([o[1] for o in outs])

    def step_batch(keys: jax.Array, state: Any, action: jax.Array) -> tuple:
        outs = [
            jax.vmap(lambda key, s, a, p=p: racecar.step(key, s, a, p))(cut(keys, i), cut(state, i), cut(action, i))
            for i, p in enumerate(params)
        ]
        return tuple(cat([o[j] for o in outs]) for j in range(6))

    env = train_jax.JaxEnv(
        reset=lambda key: racecar.reset(key, params[0]),
        step=lambda key, state, action: racecar.step(key, state, action, params[0]),
        obs_fn=obs_fn,
        episode_info=evaluate.RACING_INFO,
        reset_batch=reset_batch,
        step_batch=step_batch,
    )
    return env, params


def env_example(env: train_jax.JaxEnv) -> Any:
    """One agent observation (no batch axis) of the env: what the agent is sized for."""
    return jax.jit(lambda key: env.obs_fn(env.reset(key)[0]))(jax.random.PRNGKey(0))


@dataclasses.dataclass
class EvalTrack:
    name: str
    min_lap_time: float
    rollout: Callable[[ppo.Learner, Any], dict[str, np.ndarray]]  # stacked states [S] -> figures [S, E]


def eval_track(cfg: TransferConfig, spec: str) -> EvalTrack:
    """A jitted, seed-vmapped evaluation on one track: `eval.start_positions` starts spread around the lap,
    one deterministic episode each (one lap or `eval.max_steps` steps)."""
    track = load_track(spec)
    params = env_params(cfg, track, reset_mode="grid")
    env = train_jax.JaxEnv(
        reset=lambda key: racecar.reset(key, params),
        step=lambda key, state, action: racecar.step(key, state, action, params),
        obs_fn=rl_envs.contract_obs_fn(rl_config(cfg), params),
        episode_info=evaluate.RACING_INFO,
    )
    k = cfg.eval.start_positions
    starts = jnp.arange(k, dtype=jnp.float32) / k

    def reset(keys: jax.Array) -> tuple[Any, Any]:
        return jax.vmap(lambda key, p: racecar.reset_at(key, params, p))(keys, starts)

    compiled: dict[int, Callable] = {}

    def rollout(learner: ppo.Learner, states: ppo.TrainState) -> dict[str, np.ndarray]:
        if id(learner) not in compiled:
            one = lambda s, key: evaluate.jax_eval_rollout(  # noqa: E731
                learner, env, s, key, k, cfg.eval.max_steps, reset
            )
            compiled[id(learner)] = jax.jit(jax.vmap(one, in_axes=(0, None)))
        rec = jax.device_get(compiled[id(learner)](states, jax.random.PRNGKey(cfg.run.seed + 10_000)))
        n_seeds = len(rec["done"])
        per = [evaluate.episode_figures({k_: v[s] for k_, v in rec.items()}, params.control_dt) for s in range(n_seeds)]
        return {key: np.stack([p[key] for p in per]) for key in ("return", "clean", "lap_time")}

    limits = laptime.CarLimits.from_params(params)
    return EvalTrack(track.name, laptime.min_lap_time(track, limits), rollout)
