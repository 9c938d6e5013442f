"""PyBullet racing env with racecar_gym's observation/action/info interface (gymnasium), registered as
`raceformer/BulletRace-v0` (`src/envs/__init__.py`).

`BulletRaceEnv` puts a `Track` into a `RacecarSim` (`bullet.sim`) and adds racecar_gym's maximize_progress task
(reward, laps, time limit, collision handling). `pose` observations report the rear-axle pose as
(x, y, z, roll, pitch, yaw); racecar_gym's `acceleration` is the finite difference of the body-frame velocity.
Beyond racecar_gym's keys, observations carry `imu` (the sensor contract's IMU) and `origin`, the (x, y) of the
pose at reset (GPS positions are relative to it).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from src.envs.bullet.sim import RacecarSim, SimConfig
from src.envs.tracks.geometry import Track
from src.envs.tracks.registry import get_track
from src.envs.tracks.validation import check_track


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """racecar_gym's maximize_progress task: reward = frame + collision (if hit) + progress_reward * |d progress|."""

    laps: int = 1
    time_limit: float = 120.0  # s of simulated time, then truncated
    progress_reward: float = 100.0
    collision_reward: float = 0.0
    frame_reward: float = 0.0
    terminate_on_collision: bool = False
    checkpoints: int = 10  # the lap is split into this many sections (info['checkpoint'])


def _split_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    sim_keys = {f.name for f in dataclasses.fields(SimConfig)}
    task_keys = {f.name for f in dataclasses.fields(TaskConfig)}
    unknown = sorted(set(overrides) - sim_keys - task_keys)
    if unknown:
        raise TypeError(f"BulletRaceEnv: unknown option(s) {unknown}; valid: {sorted(sim_keys | task_keys)}")
    return (
        {k: v for k, v in overrides.items() if k in sim_keys},
        {k: v for k, v in overrides.items() if k in task_keys},
    )


class BulletRaceEnv(gymnasium.Env):
    """Single-agent racing on a `Track` with racecar_gym's spaces (see docs/RACECAR_GYM.md).

    `BulletRaceEnv(track="default", sim=SimConfig(...), task=TaskConfig(...), **field_overrides)`; any field of
    either config can be passed by name (handy through `gymnasium.make`). `track` is a bundled track name, a
    map path, or a `Track`; it is validated (`check_track`) before the walls are built from `track.walls()`,
    the same walls as the JAX env's.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(
        self,
        track: Track | str | os.PathLike = "default",
        sim: SimConfig | None = None,
        task: TaskConfig | None = None,
        render_mode: str | None = None,
        **overrides: Any,
    ):
        sim_over, task_over = _split_overrides(overrides)
        self.sim_config = dataclasses.replace(sim or SimConfig(), **sim_over)
        self.task = dataclasses.replace(task or TaskConfig(), **task_over)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}; valid: {self.metadata['render_modes']}")
        self.render_mode = render_mode
        self.track = get_track(track) if isinstance(track, str | os.PathLike) else track
        check_track(self.track)
        self.sim = RacecarSim(np.asarray(self.track.walls()), self.sim_config)

        cfg = self.sim_config
        walls = self.sim.walls
        extent = float(np.abs(walls).max()) + 10.0
        lin, ang = cfg.max_linear_velocity, cfg.max_angular_velocity
        lacc, aacc = cfg.max_linear_acceleration, cfg.max_angular_acceleration
        obs_spaces = {
            "pose": spaces.Box(
                np.array([-extent] * 3 + [-np.pi] * 3, np.float32),
                np.array([extent] * 3 + [np.pi] * 3, np.float32),
            ),
            "velocity": spaces.Box(
                np.array([-lin] * 3 + [-ang] * 3, np.float32), np.array([lin] * 3 + [ang] * 3, np.float32)
            ),
            "acceleration": spaces.Box(
                np.array([-lacc] * 3 + [-aacc] * 3, np.float32), np.array([lacc] * 3 + [aacc] * 3, np.float32)
            ),
            "lidar": spaces.Box(cfg.lidar_min_range, cfg.lidar_range, (cfg.lidar_rays,), np.float32),
            "imu": spaces.Box(
                np.array([-ang] * 3 + [-lacc] * 3, np.float32), np.array([ang] * 3 + [lacc] * 3, np.float32)
            ),
            "origin": spaces.Box(-extent, extent, (2,), np.float32),
        }
        if cfg.camera:
            obs_spaces["rgb_camera"] = spaces.Box(0, 255, (cfg.camera_height, cfg.camera_width, 3), np.uint8)
        obs_spaces["time"] = spaces.Box(0.0, self.task.time_limit + cfg.control_dt, (1,), np.float32)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Dict(
            {
                "motor": spaces.Box(-1.0, 1.0, (1,), np.float32),
                "steering": spaces.Box(-1.0, 1.0, (1,), np.float32),
            }
        )
        self._steps = 0
        self._total_progress = 0.0
        self._lap_progress = 0.0
        self._origin = np.zeros(2, np.float32)

    # ----------------------------------------------------------------------------------------- gym API

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        mode = (options or {}).get("mode", "grid")
        if mode == "grid":
            x, y, yaw = self.track.start_pose()
        elif mode == "random":
            x, y, yaw = self._random_pose()
        else:
            raise ValueError(f"reset options['mode']={mode!r}; valid: 'grid', 'random'")
        self.sim.set_pose(float(x), float(y), float(yaw))
        self._origin = np.array([x, y], np.float32)
        self._steps = 0
        p = self._progress()
        self._lap_progress = p
        self._total_progress = p if p < 0.5 else p - 1.0  # a start just behind the line counts from -epsilon
        obs = self._observe(np.zeros(6))
        return obs, self._info(obs, collided=False, accel=np.zeros(6), wrong_way=False)

    def step(self, action: Any):
        motor, steering = self._parse_action(action)
        collided, accel = self.sim.step(motor, steering)
        self._steps += 1
        p = self._progress()
        delta = p - self._lap_progress
        if delta < -0.5:  # crossed the start line forwards
            delta += 1.0
        elif delta > 0.5:  # crossed it backwards
            delta -= 1.0
        self._lap_progress = p
        self._total_progress += delta
        t = self.task
        reward = t.frame_reward + t.progress_reward * abs(delta) + (t.collision_reward if collided else 0.0)
        obs = self._observe(accel)
        info = self._info(obs, collided=collided, accel=accel, wrong_way=delta < 0.0)
        terminated = info["lap"] > t.laps or (collided and t.terminate_on_collision)
        truncated = self._time() >= t.time_limit - 1e-9 and not terminated
        return obs, float(reward), bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray | None:
        return self.sim.camera() if self.render_mode == "rgb_array" else None

    def close(self) -> None:
        self.sim.close()

    # ----------------------------------------------------------------------------------------- helpers

    def _parse_action(self, action: Any) -> tuple[float, float]:
        if not isinstance(action, dict):
            raise ValueError(
                f"action: expected a dict with keys 'motor' and 'steering', got {type(action).__name__}"
            )
        values = []
        for key in ("motor", "steering"):
            if key not in action:
                raise ValueError(f"action: missing key {key!r}")
            v = np.asarray(action[key], dtype=np.float64).reshape(-1)
            if v.size != 1:
                raise ValueError(f"action[{key!r}]: expected one value, got shape {np.shape(action[key])}")
            if not np.isfinite(v[0]):
                raise ValueError(f"action[{key!r}] is not finite: {v[0]}")
            values.append(float(v[0]))
        return values[0], values[1]

    def _random_pose(self) -> tuple[float, float, float]:
        centre = np.asarray(self.track.centreline, dtype=np.float64)
        i = int(self.np_random.integers(len(centre)))
        d = centre[(i + 1) % len(centre)] - centre[i - 1]
        return float(centre[i, 0]), float(centre[i, 1]), float(np.arctan2(d[1], d[0]))

    def _progress(self) -> float:
        return float(self.track.progress(self.sim.pose()[None, :2])[0])

    def _time(self) -> float:
        return self._steps * self.sim_config.control_dt

    def _observe(self, accel: np.ndarray) -> dict[str, np.ndarray]:
        space = self.observation_space
        pose = self.sim.pose()
        if self.sim_config.pose_noise > 0:
            pose = pose + self.np_random.normal(0.0, self.sim_config.pose_noise, 6)

        def fit(key: str, value: np.ndarray) -> np.ndarray:
            box = space[key]
            return np.clip(np.asarray(value, np.float32), box.low, box.high)

        obs = {
            "pose": fit("pose", pose),
            "velocity": fit("velocity", self.sim.velocity()),
            "acceleration": fit("acceleration", accel),
            "lidar": self.sim.lidar(self.np_random),
            "imu": fit("imu", self.sim.imu),
            "origin": self._origin.copy(),
        }
        if self.sim_config.camera:
            obs["rgb_camera"] = self.sim.camera()
        obs["time"] = np.array([self._time()], np.float32)
        return obs

    def _info(self, obs: dict[str, np.ndarray], collided: bool, accel: np.ndarray, wrong_way: bool) -> dict:
        lap_progress = self._total_progress - np.floor(self._total_progress)
        return {
            "wall_collision": bool(collided),
            "opponent_collisions": [],
            "pose": self.sim.pose(),
            "velocity": self.sim.velocity(),
            "acceleration": np.asarray(accel, np.float64),
            "progress": float(lap_progress),
            "total_progress": float(self._total_progress),
            "time": self._time(),
            "checkpoint": int(lap_progress * self.task.checkpoints),
            "lap": int(np.floor(max(self._total_progress, 0.0))) + 1,
            "rank": 1,
            "wrong_way": bool(wrong_way),
            "observations": obs,
        }
