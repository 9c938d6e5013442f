"""One PyBullet world for racing: walls as ONE concave triangle mesh, the MIT racecar from `pybullet_data`, lidar
via `rayTestBatch`, an optional TinyRenderer camera. It knows nothing about laps (the task is `bullet.env`), so
tests can drive it in a hand-made room with analytic answers.

Frames: the car pose (x, y, yaw) is the pose of the chassis link frame, i.e. the centre of the rear axle (the
reference point of a kinematic bicycle model). Velocities and accelerations are in the car's body frame. The
IMU reads what an IMU at the chassis' centre of mass measures, in the sensor contract's layout (`src.contract`:
angular rates and specific force, gravity included).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import pybullet
import pybullet_data
from pybullet_utils import bullet_client

from src import contract

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
