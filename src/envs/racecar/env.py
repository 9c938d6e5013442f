"""Pure-JAX racing env with racecar_gym's observations, actions, reward and info (docs/RACECAR_GYM.md).

Functional API, jit/vmap/scan-able:
    params = make_params("default", lidar_rays=1080, camera=True, ...)   # src.envs.racecar.params
    obs, state = reset(key, params)
    obs, state, reward, terminated, truncated, info = step(key, state, action, params)
`action` is [motor, steering] in [-1, 1] (racecar_gym's Dict action flattened in that order).

- Collisions (`dynamics`): a physics step that would put the car into a wall is undone, the car stopped, and
  `wall_collision` is set.
- Progress: a grid of nearest-centreline arc fraction; progress is unwrapped step to step (a jump over 0.5
  crosses the start line), so a lap only counts when the whole loop is driven in the right direction;
  reversing subtracts. `checkpoint` is the index of the lap section (of `n_checkpoints`) the car is in.
- Invalid actions: inside jit a NaN/inf action component is replaced by 0 and info["invalid_action"] is True;
  `check_action` is the host-side check that raises (`RacecarEnv.step` calls it).
- Auto-reset (`auto_reset=True`): when an episode ends, the returned obs/state are those of a fresh episode
  (reset with the step's key); `info` still describes the step that ended the old one (its progress, lap,
  `episode_return`, `episode_length`) and, when `final_obs=True`, info["final_obs"] holds its last obs
  (off by default: it doubles the sensor cost of every step under vmap).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from src.envs.racecar import sensors
from src.envs.racecar.dynamics import nearest_cell_value, physics_step, rear_axle
from src.envs.racecar.params import EnvParams, EnvState, make_params
from src.envs.tracks.geometry import Track

Obs = dict[str, jax.Array]


def observe(params: EnvParams, state: EnvState, accel: jax.Array, key: jax.Array) -> Obs:
    """racecar_gym's observation plus `imu` (the sensor contract's IMU) and `origin` (the episode's start)."""
    k_pose, k_lidar = jax.random.split(key)
    pose = sensors.pose(params, state)
    if params.pose_noise > 0:
        pose = pose + params.pose_noise * jax.random.normal(k_pose, (6,))
    obs = {
        "pose": pose,
        "velocity": sensors.velocity(state),
        "acceleration": accel,
        "lidar": sensors.lidar(params, state, k_lidar),
        "imu": sensors.imu(state, accel),
        "origin": state.origin,
    }
    if params.camera:
        obs["rgb_camera"] = sensors.camera(params, state)
    if params.terrain is not None and params.terrain.ground_image:
        obs["ground_image"] = sensors.ground_image(params, state)
    obs["time"] = state.time[None]
    return obs


def _progress(params: EnvParams, state: EnvState) -> jax.Array:
    return nearest_cell_value(params, params.progress_grid, rear_axle(params, state))


def _initial_state(key: jax.Array, params: EnvParams) -> EnvState:
    if params.reset_mode == "random":
        i = jax.random.randint(key, (), 0, params.centreline.shape[0])
        xr, yr, yaw = params.centreline[i, 0], params.centreline[i, 1], params.tangent_yaw[i]
    else:
        xr, yr, yaw = params.start[0], params.start[1], params.start[2]
    f = jnp.float32
    zero = jnp.zeros((), f)
    state = EnvState(
        x=xr + params.lr * jnp.cos(yaw),
        y=yr + params.lr * jnp.sin(yaw),
        yaw=yaw,
        vx=zero,
        vy=zero,
        omega=zero,
        steer=zero,
        prev_velocity=jnp.zeros(6, f),
        time=zero,
        steps=jnp.zeros((), jnp.int32),
        lap_progress=zero,
        total_progress=zero,
        episode_return=zero,
        origin=jnp.stack([xr, yr]).astype(f),
    )
    p = _progress(params, state)
    return state.replace(lap_progress=p, total_progress=jnp.where(p < 0.5, p, p - 1.0))


def reset(key: jax.Array, params: EnvParams) -> tuple[Obs, EnvState]:
    k_state, k_obs = jax.random.split(key)
    state = _initial_state(k_state, params)
    return observe(params, state, jnp.zeros(6, jnp.float32), k_obs), state


def reset_at(key: jax.Array, params: EnvParams, progress: jax.Array) -> tuple[Obs, EnvState]:
    """Reset with the rear axle on the centreline point nearest to arc-length fraction `progress` of the lap,
    facing the driving direction. Laps count from there (total_progress starts at 0), so an episode from any
    start drives one whole loop per lap; evaluation uses it to start from poses spread around the track."""
    k_state, k_obs = jax.random.split(key)
    c = params.centreline
    seg = jnp.linalg.norm(jnp.roll(c, -1, 0) - c, axis=1)
    frac = jnp.concatenate([jnp.zeros(1), jnp.cumsum(seg)[:-1]]) / jnp.sum(seg)
    i = jnp.argmin(jnp.abs(jnp.mod(frac - progress + 0.5, 1.0) - 0.5))  # nearest, across the start line
    yaw = params.tangent_yaw[i]
    state = _initial_state(k_state, params)
    state = state.replace(x=c[i, 0] + params.lr * jnp.cos(yaw), y=c[i, 1] + params.lr * jnp.sin(yaw), yaw=yaw)
    state = state.replace(lap_progress=_progress(params, state), total_progress=jnp.zeros((), jnp.float32))
    return observe(params, state, jnp.zeros(6, jnp.float32), k_obs), state


def step(
    key: jax.Array, state: EnvState, action: jax.Array, params: EnvParams
) -> tuple[Obs, EnvState, jax.Array, jax.Array, jax.Array, dict[str, Any]]:
    """One control step (`action_repeat` physics steps). action = [motor, steering]."""
    action = jnp.asarray(action, jnp.float32).reshape(2)
    finite = jnp.isfinite(action)
    action = jnp.where(finite, jnp.clip(action, -1.0, 1.0), 0.0)

    def sub(carry, _):
        s, hit = carry
        s, h = physics_step(params, s, action[0], action[1])
        return (s, hit | h), None

    (new, collided), _ = jax.lax.scan(sub, (state, jnp.zeros((), bool)), None, length=params.action_repeat)
    vel = sensors.velocity(new)
    accel = (vel - state.prev_velocity) / params.control_dt
    p = _progress(params, new)
    delta = p - state.lap_progress
    delta = jnp.where(delta > 0.5, delta - 1.0, jnp.where(delta < -0.5, delta + 1.0, delta))
    total = state.total_progress + delta
    progress_term = delta if params.signed_progress else jnp.abs(delta)
    reward = params.frame_reward + params.progress_reward * progress_term
    reward = reward + jnp.where(collided, params.collision_reward, 0.0)
    new = new.replace(
        prev_velocity=vel,
        time=state.time + params.control_dt,
        steps=state.steps + 1,
        lap_progress=p,
        total_progress=total,
        episode_return=state.episode_return + reward,
    )
    terminated = total >= params.laps
    if params.terminate_on_collision:
        terminated = terminated | collided
    truncated = (new.time >= params.time_limit - 1e-6) & ~terminated
    frac = total - jnp.floor(total)
    info = {
        "wall_collision": collided,
        "progress": frac,
        "total_progress": total,
        "lap": jnp.floor(jnp.maximum(total, 0.0)).astype(jnp.int32) + 1,
        "checkpoint": jnp.minimum((frac * params.n_checkpoints).astype(jnp.int32), params.n_checkpoints - 1),
        "wrong_way": delta * params.track_length < -1e-3,
        "time": new.time,
        "invalid_action": ~jnp.all(finite),
        "pose": sensors.pose(params, new),
        "velocity": vel,
        "acceleration": accel,
        "episode_return": new.episode_return,
        "episode_length": new.steps,
    }
    k_obs, k_reset = jax.random.split(key)
    if not params.auto_reset:
        return observe(params, new, accel, k_obs), new, reward, terminated, truncated, info
    done = terminated | truncated
    fresh = _initial_state(k_reset, params)
    nxt = jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, new)
    obs = observe(params, nxt, jnp.where(done, jnp.zeros_like(accel), accel), k_obs)
    if params.final_obs:
        info["final_obs"] = observe(params, new, accel, k_obs)
    return obs, nxt, reward, terminated, truncated, info


def check_action(action: Any) -> np.ndarray:
    """Host-side action check: an array [2] (or [B, 2]) of finite numbers, else ValueError."""
    a = np.asarray(action, np.float32)
    if a.shape[-1:] != (2,):
        raise ValueError(f"action: expected [..., 2] = [motor, steering], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"action contains NaN or inf: {a}")
    return a


class RacecarEnv:
    """Host-side convenience: `make_params` + jitted, vmapped reset/step over `num_envs` cars, with the
    host-side action check (NaN/inf actions raise here instead of being zeroed)."""

    def __init__(self, track: Track | str = "default", num_envs: int = 1, **settings: Any):
        self.params = make_params(track, **settings)
        self.num_envs = num_envs
        self._reset = jax.jit(jax.vmap(reset, in_axes=(0, None)))
        self._step = jax.jit(jax.vmap(step, in_axes=(0, 0, 0, None)))

    def reset(self, key: jax.Array) -> tuple[Obs, EnvState]:
        return self._reset(jax.random.split(key, self.num_envs), self.params)

    def step(self, key: jax.Array, state: EnvState, action: Any):
        a = check_action(action).reshape(self.num_envs, 2)
        return self._step(jax.random.split(key, self.num_envs), state, jnp.asarray(a), self.params)
