"""PyBullet racing env with racecar_gym's observation/action/info interface (gymnasium).

Two layers: `RacecarSim` owns one PyBullet client (walls as ONE concave triangle mesh, the MIT racecar from
`pybullet_data`, lidar via `rayTestBatch`, optional TinyRenderer camera) and knows nothing about laps;
`BulletRaceEnv` puts a `Track` into it and adds racecar_gym's maximize_progress task (reward, laps, time limit,
collision handling). Keeping the sim separate lets tests drive it in a hand-made room with analytic answers.

Frames: the car pose (x, y, yaw) is the pose of the chassis link frame, i.e. the centre of the rear axle (the
reference point of a kinematic bicycle model); `pose` observations report it as (x, y, z, roll, pitch, yaw).
Velocities and accelerations are in the car's body frame (racecar_gym's `acceleration` is the finite difference
of the body-frame velocity). Beyond racecar_gym's keys, observations carry `imu`, what an IMU at the chassis'
centre of mass measures in the sensor contract's layout (`src.contract`: angular rates and specific force,
gravity included), and `origin`, the (x, y) of the pose at reset (GPS positions are relative to it).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import gymnasium
import numpy as np
import pybullet
import pybullet_data
from gymnasium import spaces
from pybullet_utils import bullet_client

from src import contract
from src.envs.tracks.geometry import Track
from src.envs.tracks.registry import get_track
from src.envs.tracks.validation import check_track

URDF_PATH = os.path.join(pybullet_data.getDataPath(), "racecar", "racecar_differential.urdf")

# Joint indices of racecar_differential.urdf (checked with getJointInfo).
STEERING_JOINTS = (0, 2)
MOTOR_JOINTS = (8, 15)
LIDAR_LINK = 4
CAMERA_LINK = 5
# The differential is modelled with gear constraints: (parent joint, child joint, gear ratio, aux link or -1).
GEAR_CONSTRAINTS = (
    (9, 11, 1.0, -1),
    (10, 13, -1.0, -1),
    (9, 13, -1.0, -1),
    (16, 18, 1.0, -1),
    (16, 19, -1.0, -1),
    (17, 19, -1.0, -1),
    (1, 18, -1.0, 15),
    (3, 19, -1.0, 15),
)
WALL_GROUP = 2  # collision filter bit of the wall mesh: lidar rays only see walls
RIDE_HEIGHT = 0.0509  # z of the chassis frame when the car rests on its wheels (measured)


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Physics, actuators and sensors (defaults follow racecar_gym's racecar vehicle file)."""

    time_step: float = 0.01  # physics step (s)
    action_repeat: int = 4  # physics steps per env step: the JAX env's control period (0.04 s)
    max_velocity: float = 5.0  # motor: target wheel velocity = motor * max_velocity * velocity_multiplier
    velocity_multiplier: float = 20.0
    max_force: float = 0.5
    max_steering_angle: float = 0.42  # rad at steering = +-1 (positive steers left)
    wall_height: float = 0.5
    lidar_rays: int = 1080
    lidar_range: float = 15.0
    lidar_min_range: float = 0.25
    lidar_fov: float = 4.71  # rad, centred on the heading
    lidar_accuracy: float = 0.03  # multiplicative uniform noise: range * U(1 - a, 1 + a)
    camera: bool = False  # rendering costs ~35-47 ms a frame, so it is opt-in
    camera_height: int = 64
    camera_width: int = 64
    camera_fov: float = 90.0  # deg
    pose_noise: float = 0.01  # std of gaussian noise on the pose observation (info keeps the true pose)
    max_linear_velocity: float = 14.0
    max_angular_velocity: float = 6.0
    max_linear_acceleration: float = 100.0
    max_angular_acceleration: float = 200.0

    @property
    def control_dt(self) -> float:
        return self.time_step * self.action_repeat


def lidar_angles(rays: int, fov: float) -> np.ndarray:
    """Beam angles relative to the heading, evenly spaced from -fov/2 to +fov/2 inclusive."""
    return np.linspace(-fov / 2.0, fov / 2.0, rays)


def _rotation(quat: tuple[float, ...]) -> np.ndarray:
    return np.asarray(pybullet.getMatrixFromQuaternion(quat), dtype=np.float64).reshape(3, 3)


class RacecarSim:
    """One PyBullet world: a ground plane, the walls as one static concave mesh, and the racecar."""

    def __init__(self, walls: np.ndarray, config: SimConfig = SimConfig()):
        walls = np.asarray(walls, dtype=np.float64)
        if walls.ndim != 2 or walls.shape[1] != 4 or len(walls) == 0:
            raise ValueError(
                f"walls: expected a non-empty [M, 4] array of (x0, y0, x1, y1), got {walls.shape}"
            )
        if not np.all(np.isfinite(walls)):
            raise ValueError("walls: contains NaN or infinite coordinates")
        self.config = config
        self.walls = walls
        self.client = bullet_client.BulletClient(connection_mode=pybullet.DIRECT)
        self.client.setGravity(0.0, 0.0, -contract.GRAVITY)
        self.client.setTimeStep(config.time_step)
        self._build_ground(walls)
        self.wall_body = self._build_walls(walls)
        self.car = self._build_car()
        angles = lidar_angles(config.lidar_rays, config.lidar_fov)
        self._ray_dirs = np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], axis=1)
        self._rest_state = self.client.saveState()
        self._prev_velocity = np.zeros(6)
        self._prev_world_velocity = np.zeros(3)
        self.imu = self._imu_at_rest()

    # ----------------------------------------------------------------------------------------- building

    def _build_ground(self, walls: np.ndarray) -> None:
        c = self.client
        shape = c.createCollisionShape(pybullet.GEOM_PLANE)
        lo = np.minimum(walls[:, :2].min(0), walls[:, 2:].min(0)) - 1.0
        hi = np.maximum(walls[:, :2].max(0), walls[:, 2:].max(0)) + 1.0
        half = [(hi[0] - lo[0]) / 2, (hi[1] - lo[1]) / 2, 0.001]
        centre = [(hi[0] + lo[0]) / 2, (hi[1] + lo[1]) / 2, -0.001]
        visual = c.createVisualShape(pybullet.GEOM_BOX, halfExtents=half, rgbaColor=[0.35, 0.35, 0.35, 1.0])
        ground = c.createMultiBody(0, shape, -1)
        c.createMultiBody(0, -1, visual, basePosition=centre)  # visual-only floor, sized to the track
        c.changeDynamics(ground, -1, lateralFriction=1.0)

    def _build_walls(self, walls: np.ndarray) -> int:
        """All wall segments as one zero-thickness concave mesh: rays hit exactly the segment lines."""
        c = self.client
        keep = np.hypot(walls[:, 2] - walls[:, 0], walls[:, 3] - walls[:, 1]) > 1e-9
        w = walls[keep]
        h = self.config.wall_height
        m = len(w)
        verts = np.empty((m, 4, 3))
        verts[:, 0] = np.stack([w[:, 0], w[:, 1], np.zeros(m)], 1)
        verts[:, 1] = np.stack([w[:, 2], w[:, 3], np.zeros(m)], 1)
        verts[:, 2] = np.stack([w[:, 2], w[:, 3], np.full(m, h)], 1)
        verts[:, 3] = np.stack([w[:, 0], w[:, 1], np.full(m, h)], 1)
        base = 4 * np.arange(m)[:, None]
        front = np.concatenate([base + [0, 1, 2], base + [0, 2, 3]], axis=1).reshape(-1, 3)
        back = front[:, ::-1]  # both windings so that the renderer shows both faces
        verts_list = verts.reshape(-1, 3).tolist()
        shape = c.createCollisionShape(
            pybullet.GEOM_MESH,
            vertices=verts_list,
            indices=front.reshape(-1).astype(int).tolist(),
            flags=pybullet.GEOM_FORCE_CONCAVE_TRIMESH,
        )
        visual = c.createVisualShape(
            pybullet.GEOM_MESH,
            vertices=verts_list,
            indices=np.concatenate([front, back]).reshape(-1).astype(int).tolist(),
            rgbaColor=[0.8, 0.2, 0.2, 1.0],
        )
        body = c.createMultiBody(0, shape, visual)
        c.setCollisionFilterGroupMask(body, -1, WALL_GROUP, 0xFFFF)
        return body

    def _build_car(self) -> int:
        c = self.client
        car = c.loadURDF(
            URDF_PATH, [0.0, 0.0, RIDE_HEIGHT], flags=pybullet.URDF_ENABLE_CACHED_GRAPHICS_SHAPES
        )
        for j in range(c.getNumJoints(car)):  # free all joints; the motors are driven explicitly
            c.setJointMotorControl2(car, j, pybullet.VELOCITY_CONTROL, targetVelocity=0.0, force=0.0)
        for parent, child, ratio, aux in GEAR_CONSTRAINTS:
            cid = c.createConstraint(
                car, parent, car, child, pybullet.JOINT_GEAR, [0, 1, 0], [0, 0, 0], [0, 0, 0]
            )
            kwargs: dict[str, Any] = {"gearRatio": ratio, "maxForce": 10000}
            if aux >= 0:
                kwargs["gearAuxLink"] = aux
            c.changeConstraint(cid, **kwargs)
        # base inertial frame and laser frame, both in the chassis frame
        self._com_offset = np.asarray(c.getDynamicsInfo(car, -1)[3])
        self._lidar_offset = np.asarray(c.getJointInfo(car, LIDAR_LINK)[14])
        for _ in range(50):  # settle on the wheels so that every reset starts from rest
            c.stepSimulation()
        return car

    # ----------------------------------------------------------------------------------------- state

    def set_pose(self, x: float, y: float, yaw: float) -> None:
        """Put the car at rest at a chassis-frame pose (rear-axle centre), wheels on the ground."""
        c = self.client
        c.restoreState(self._rest_state)
        quat = c.getQuaternionFromEuler([0.0, 0.0, yaw])
        com = np.array([x, y, RIDE_HEIGHT]) + _rotation(quat) @ self._com_offset
        c.resetBasePositionAndOrientation(self.car, com.tolist(), quat)
        c.resetBaseVelocity(self.car, [0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
        self._prev_velocity = np.zeros(6)
        self._prev_world_velocity = np.zeros(3)
        self.imu = self._imu_at_rest()
        self.apply_action(0.0, 0.0)

    def pose(self) -> np.ndarray:
        """(x, y, z, roll, pitch, yaw) of the chassis frame, float64."""
        com, quat = self.client.getBasePositionAndOrientation(self.car)
        xyz = np.asarray(com) - _rotation(quat) @ self._com_offset
        return np.concatenate([xyz, self.client.getEulerFromQuaternion(quat)])

    def velocity(self) -> np.ndarray:
        """Body-frame linear (3) and angular (3) velocity, float64."""
        lin, ang = self.client.getBaseVelocity(self.car)
        rot_t = _rotation(self.client.getBasePositionAndOrientation(self.car)[1]).T
        return np.concatenate([rot_t @ np.asarray(lin), rot_t @ np.asarray(ang)])

    def lidar_origin(self) -> np.ndarray:
        """World (x, y, z) of the laser frame."""
        pos = self.client.getLinkState(self.car, LIDAR_LINK, computeForwardKinematics=True)[4]
        return np.asarray(pos)

    # ----------------------------------------------------------------------------------------- control

    def apply_action(self, motor: float, steering: float) -> None:
        """racecar_gym's mapping: wheel velocity control with a force limit, steering hinge position control."""
        cfg, c = self.config, self.client
        motor = float(np.clip(motor, -1.0, 1.0))
        steering = float(np.clip(steering, -1.0, 1.0))
        target = np.sign(motor) * cfg.max_velocity * cfg.velocity_multiplier
        force = abs(motor) * cfg.max_force
        for j in MOTOR_JOINTS:
            c.setJointMotorControl2(
                self.car, j, pybullet.VELOCITY_CONTROL, targetVelocity=target, force=force
            )
        for j in STEERING_JOINTS:
            c.setJointMotorControl2(
                self.car, j, pybullet.POSITION_CONTROL, targetPosition=steering * cfg.max_steering_angle
            )

    def step(self, motor: float, steering: float) -> tuple[bool, np.ndarray]:
        """Advance one control period; returns (touched a wall in any substep, body acceleration (6))."""
        self.apply_action(motor, steering)
        collided = False
        for _ in range(self.config.action_repeat):
            self.client.stepSimulation()
            collided = collided or bool(self.client.getContactPoints(self.car, self.wall_body))
        vel = self.velocity()
        accel = (vel - self._prev_velocity) / self.config.control_dt
        self._prev_velocity = vel
        self._update_imu()
        return collided, accel

    @staticmethod
    def _imu_at_rest() -> np.ndarray:
        return contract.imu_vector(np.zeros(3), np.array([0.0, 0.0, contract.GRAVITY]))

    def _update_imu(self) -> None:
        """`imu` after a control period: body-frame angular rate and specific force R^T (a + g up), with the
        centre of mass's world acceleration a a finite difference over the period."""
        lin, ang = self.client.getBaseVelocity(self.car)
        lin = np.asarray(lin)
        accel = (lin - self._prev_world_velocity) / self.config.control_dt
        self._prev_world_velocity = lin
        rot_t = _rotation(self.client.getBasePositionAndOrientation(self.car)[1]).T
        force = rot_t @ (accel + np.array([0.0, 0.0, contract.GRAVITY]))
        self.imu = contract.imu_vector(rot_t @ np.asarray(ang), force)

    # ----------------------------------------------------------------------------------------- sensors

    def lidar(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """Ranges [rays] in metres from the laser frame; misses read `lidar_range`; noisy when `rng` is given."""
        cfg, c = self.config, self.client
        pos, quat = c.getLinkState(self.car, LIDAR_LINK, computeForwardKinematics=True)[4:6]
        dirs = self._ray_dirs @ _rotation(quat).T
        origin = np.asarray(pos)
        starts = origin + cfg.lidar_min_range * dirs
        ends = origin + cfg.lidar_range * dirs
        hits = c.rayTestBatch(starts.tolist(), ends.tolist(), numThreads=1, collisionFilterMask=WALL_GROUP)
        frac = np.fromiter((h[2] for h in hits), dtype=np.float64, count=len(hits))
        ranges = cfg.lidar_min_range + frac * (cfg.lidar_range - cfg.lidar_min_range)
        if rng is not None and cfg.lidar_accuracy > 0:
            ranges = ranges * rng.uniform(1.0 - cfg.lidar_accuracy, 1.0 + cfg.lidar_accuracy, ranges.shape)
        return np.clip(ranges, cfg.lidar_min_range, cfg.lidar_range).astype(np.float32)

    def camera(self) -> np.ndarray:
        """Front camera image [H, W, 3] uint8 (TinyRenderer, headless)."""
        cfg, c = self.config, self.client
        pos, quat = c.getLinkState(self.car, CAMERA_LINK, computeForwardKinematics=True)[4:6]
        rot = _rotation(quat)
        eye = np.asarray(pos)
        view = c.computeViewMatrix(eye.tolist(), (eye + rot[:, 0]).tolist(), rot[:, 2].tolist())
        proj = c.computeProjectionMatrixFOV(cfg.camera_fov, cfg.camera_width / cfg.camera_height, 0.01, 50.0)
        _, _, rgba, _, _ = c.getCameraImage(
            cfg.camera_width,
            cfg.camera_height,
            viewMatrix=view,
            projectionMatrix=proj,
            renderer=pybullet.ER_TINY_RENDERER,
            flags=pybullet.ER_NO_SEGMENTATION_MASK,
        )
        return (
            np.asarray(rgba, dtype=np.uint8).reshape(cfg.camera_height, cfg.camera_width, 4)[..., :3].copy()
        )

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client = None


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
