"""Recording driving episodes from the JAX simulator: a camera rig of yawed views, a noisy driver, and the writer.

`record_episodes` drives `spec.episodes` episodes at once (vmapped and jitted) and writes each as an episode
(`src.data.episodes.writer`). The driver is pure pursuit unless `spec.checkpoint` names a trained racing run;
loading such a policy needs the model and checkpoint code above this layer, so the caller passes the loader
(`load_driver`; the command `python -m src.training.record_episodes` passes the PPO one).
`ensure_episodes` records a demo set where a pretraining config's episode root is missing.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from src.config import DataConfig, ModelConfig
from src.data.episodes.writer import write_episode
from src.envs import controllers
from src.envs.racecar import env as racecar
from src.envs.racecar import sensors
from src.envs.racecar.params import make_params

DEFAULT_CAMERAS: tuple[str, ...] = ("front", "front_left", "front_right")
CAMERA_YAW_DEG: dict[str, float] = {"front": 0.0, "front_left": 30.0, "front_right": -30.0}


@dataclasses.dataclass(frozen=True)
class RecordSpec:
    """What `record_episodes` drives and writes.

    Cameras are named `front`, `front_left`, `front_right` (yaw 0, +30, -30 degrees, left positive) unless
    `yaw_deg` names others. The driver is pure pursuit at a per-episode target speed drawn from `speed_range`,
    plus Gaussian action noise (`noise` = std of [motor, steering]); episodes start at random centreline
    points. A frame is taken every `frame_every` control steps; each camera frame is dropped with `drop_prob`.
    With `checkpoint` (a jax_racecar PPO run directory) the driver is that run's deterministic policy (latest
    checkpoint, loaded by the caller's `DriverLoader`) plus the same noise, in an env with the run's settings
    (lidar, time limit, ...); `track` must then be the run's track.
    """

    episodes: int = 8
    frames: int = 64
    size: tuple[int, int] = (64, 64)
    cameras: tuple[str, ...] = DEFAULT_CAMERAS
    yaw_deg: tuple[tuple[str, float], ...] = ()
    drop_prob: float = 0.1
    seed: int = 0
    track: str = "default"
    frame_every: int = 2
    speed_range: tuple[float, float] = (2.0, 4.0)
    noise: tuple[float, float] = (0.05, 0.15)
    checkpoint: str = ""

    def camera_yaws(self) -> dict[str, float]:
        table = {**CAMERA_YAW_DEG, **dict(self.yaw_deg)}
        unknown = [c for c in self.cameras if c not in table]
        if unknown:
            raise ValueError(f"cameras {unknown} have no yaw; known: {sorted(table)} (give yaw_deg)")
        return {c: table[c] for c in self.cameras}


@dataclasses.dataclass(frozen=True)
class Driver:
    """A trained policy to drive with, and the env it was trained in (the recorder's env must match it)."""

    policy: Callable[[dict], jax.Array]  # ONE raw jax_racecar observation -> its [2] action; jit/vmap-able
    settings: dict[str, Any]  # the run's `make_params` settings besides the track
    track: str


DriverLoader = Callable[[str], Driver]  # a run directory (`spec.checkpoint`) -> its Driver


def _rollout(key: jax.Array, params: Any, spec: RecordSpec, policy: Any = None) -> dict[str, jax.Array]:
    """One episode in the JAX simulator, time-major: images [F, V, H, W, 3] uint8 and the ego record."""
    yaws = jnp.deg2rad(jnp.array(list(spec.camera_yaws().values()), jnp.float32))
    arm = params.camera_offset - params.lr  # centre of gravity -> camera, along the heading

    def view(state: Any, yaw: jax.Array) -> jax.Array:
        # The same optical centre turned by `yaw`: rotate the state's heading and move its centre of gravity so
        # that the camera (which sits `arm` ahead of it along the heading) stays where it was.
        turned = state.yaw + yaw
        dx = arm * (jnp.cos(state.yaw) - jnp.cos(turned))
        dy = arm * (jnp.sin(state.yaw) - jnp.sin(turned))
        return sensors.camera(params, state.replace(x=state.x + dx, y=state.y + dy, yaw=turned))

    k_reset, k_speed, k_run = jax.random.split(key, 3)
    obs, state = racecar.reset(k_reset, params)
    target = jax.random.uniform(k_speed, (), minval=spec.speed_range[0], maxval=spec.speed_range[1])
    noise = jnp.asarray(spec.noise, jnp.float32)

    def control(obs: dict, k: jax.Array) -> jax.Array:
        if policy is not None:
            a = policy(obs)
        else:
            pose = obs["pose"][jnp.array([0, 1, 5])]
            a = controllers.pure_pursuit(pose, obs["velocity"][0], params.centreline, target_speed=target)
        return jnp.clip(a + noise * jax.random.normal(k, (2,)), -1.0, 1.0)

    def frame(carry: tuple, k: jax.Array) -> tuple[tuple, dict[str, jax.Array]]:
        obs, state, done = carry
        keys = jax.random.split(k, 2 * spec.frame_every)
        record = {
            "images": jax.vmap(view, in_axes=(None, 0))(state, yaws),
            "pose": obs["pose"][jnp.array([0, 1, 5])],
            "velocity": obs["velocity"][jnp.array([0, 1, 5])],
            "acceleration": obs["imu"][3:],  # the contract IMU's specific force
            "time": state.time,
            "done": done,
        }
        for i in range(spec.frame_every):
            action = control(obs, keys[2 * i])
            if i == 0:
                record["action"] = action
            obs, state, _, terminated, truncated, _ = racecar.step(keys[2 * i + 1], state, action, params)
            done = done | terminated | truncated
        return (obs, state, done), record

    _, rec = jax.lax.scan(frame, (obs, state, jnp.zeros((), bool)), jax.random.split(k_run, spec.frames))
    return rec


def recording_env(spec: RecordSpec, load_driver: DriverLoader | None = None) -> tuple[Any, Any]:
    """(env params, policy or None) the recorder drives: with `spec.checkpoint`, the run's restored policy and
    its env settings (`load_driver`), so the policy sees the observations it was trained on."""
    # no camera: rendered per camera yaw in `_rollout`; 8 rays: the recorder keeps no scan
    settings: dict[str, Any] = {"camera": False, "lidar_rays": 8}
    policy = None
    if spec.checkpoint:
        if load_driver is None:
            raise ValueError(
                f"checkpoint={spec.checkpoint!r}: driving with a trained policy needs a driver loader "
                "(`python -m src.training.record_episodes --checkpoint RUN` passes the PPO one)"
            )
        driver = load_driver(spec.checkpoint)
        policy, settings = driver.policy, driver.settings
        if driver.track != spec.track:
            raise ValueError(f"{spec.checkpoint}: the run drove track {driver.track!r}, not {spec.track!r}")
    params = make_params(
        spec.track,
        **{**settings, "reset_mode": "random", "pose_noise": 0.0},
        camera_height=spec.size[0],
        camera_width=spec.size[1],
    )
    return params, policy


def simulate(spec: RecordSpec, load_driver: DriverLoader | None = None) -> dict[str, np.ndarray]:
    """All episodes at once (vmapped and jitted): images [N, F, V, H, W, 3] and the ego record [N, F, ...]."""
    params, policy = recording_env(spec, load_driver)
    keys = jax.random.split(jax.random.key(spec.seed), spec.episodes)
    run = jax.jit(jax.vmap(lambda k: _rollout(k, params, spec, policy)))
    return jax.tree.map(np.asarray, run(keys))


def record_episodes(out: str | Path, spec: RecordSpec, load_driver: DriverLoader | None = None) -> list[Path]:
    """Simulate `spec.episodes` episodes and write them under `out/ep_XXX/` (episode.json + PNGs).

    A new `out` is written in a temporary sibling directory and renamed into place when complete, so an
    interrupted recording never leaves a half-written set behind. An episode ends early at the frame after
    the car finished or ran out of time (it is not continued into a reset).
    """
    if not 0.0 <= spec.drop_prob < 1.0:
        raise ValueError(f"drop_prob={spec.drop_prob} must be in [0, 1)")
    out = Path(out)
    rec = simulate(spec, load_driver)
    yaws = spec.camera_yaws()
    rng = np.random.default_rng(spec.seed)
    keep_all = rng.random((spec.episodes, len(spec.cameras), spec.frames)) >= spec.drop_prob
    fresh = not out.exists()
    target = out.with_name(f".{out.name}.partial") if fresh else out
    if fresh and target.exists():
        shutil.rmtree(target)  # left over from an interrupted recording
    paths = []
    for e in range(spec.episodes):
        ended = np.flatnonzero(rec["done"][e])
        length = int(ended[0]) if len(ended) else spec.frames  # frame `ended[0]` is already after the end
        name = f"ep_{e:03d}"
        if (target / name).exists() and not fresh:
            raise FileExistsError(f"{target / name} exists; record into a new directory")
        header = {
            "episode_id": f"{spec.track}_s{spec.seed}_{name}",
            "source": "jax_racecar",
            "cameras": list(spec.cameras),
            "camera_yaw_deg": yaws,
            "image_size": list(spec.size),
            "track": spec.track,
            "driver": f"ppo:{Path(spec.checkpoint).name}+noise" if spec.checkpoint else "pure_pursuit+noise",
        }
        paths.append(
            write_episode(
                target / name,
                header,
                {c: rec["images"][e, :length, v] for v, c in enumerate(spec.cameras)},
                {c: keep_all[e, v, :length] for v, c in enumerate(spec.cameras)},
                {k: rec[k][e, :length] for k in ("pose", "velocity", "acceleration")},
                rec["time"][e, :length],
                rec["action"][e, :length],
            )
        )
    if fresh:
        target.rename(out)
        paths = [out / p.relative_to(target) for p in paths]
    return paths


def ensure_episodes(data_cfg: DataConfig, model_cfg: ModelConfig, seed: int = 0) -> Path:
    """`data_cfg.root`, recording a demo set there first when it is missing and `record_if_missing` allows it."""
    root = Path(data_cfg.root)
    if root.exists():
        return root
    if not data_cfg.record_if_missing:
        raise FileNotFoundError(
            f"episode root {root} does not exist; record one with "
            f"`python -m src.training.record_episodes --episodes N --out {root}` "
            "or set data.record_if_missing = true"
        )
    height, width = (
        tuple(model_cfg.modalities["rgb"].shape[:2]) if "rgb" in model_cfg.modalities else (64, 64)
    )
    record_episodes(
        root,
        RecordSpec(
            episodes=data_cfg.record_episodes,
            frames=data_cfg.record_frames,
            size=(height, width),
            cameras=data_cfg.episode_cameras,
            drop_prob=data_cfg.record_drop_prob,
            seed=seed,
        ),
    )
    return root
