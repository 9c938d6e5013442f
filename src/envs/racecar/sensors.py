"""What the car's sensors read: pose, velocity, lidar ranges, the forward camera, the IMU of the sensor contract
and the top-down ground image, from the state (racecar_gym's observations, docs/RACECAR_GYM.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from src import contract
from src.envs import surfaces
from src.envs.racecar.dynamics import rear_axle
from src.envs.racecar.params import EnvParams, EnvState
from src.envs.racecar.raycast import Fan, camera_fan, cast_rays, lidar_fan


def velocity(state: EnvState) -> jax.Array:
    """racecar_gym's velocity [6]: body-frame linear (vx, vy, 0), then angular (0, 0, yaw rate)."""
    z = jnp.zeros_like(state.vx)
    return jnp.stack([state.vx, state.vy, z, z, z, state.omega])


def pose(params: EnvParams, state: EnvState) -> jax.Array:
    """racecar_gym's pose [6] (x, y, z, roll, pitch, yaw) of the rear axle (the PyBullet env's chassis frame)."""
    rear = rear_axle(params, state)
    z = jnp.zeros_like(state.x)
    return jnp.stack([rear[0], rear[1], z, z, z, state.yaw])


def _sensor_origin(params: EnvParams, state: EnvState, offset: float) -> jax.Array:
    rear = rear_axle(params, state)
    return rear + offset * jnp.stack([jnp.cos(state.yaw), jnp.sin(state.yaw)])


def lidar(params: EnvParams, state: EnvState, key: jax.Array | None = None) -> jax.Array:
    """Ranges [lidar_rays] in [lidar_min_range, lidar_range]; multiplicative noise when `key` is given."""
    origin = _sensor_origin(params, state, params.lidar_offset)
    r, _ = cast_rays(params, origin, state.yaw, lidar_fan(params), params.lidar_range, segments=False)
    if key is not None and params.lidar_accuracy > 0:
        a = params.lidar_accuracy
        r = r * jax.random.uniform(key, r.shape, minval=1 - a, maxval=1 + a)
    return jnp.clip(r, params.lidar_min_range, params.lidar_range)


SKY = (135.0, 190.0, 235.0)
FLOOR = (95.0, 95.0, 100.0)
WALL_COLOURS = ((210.0, 60.0, 50.0), (225.0, 225.0, 225.0))  # left wall, right wall


def camera(params: EnvParams, state: EnvState) -> jax.Array:
    """Forward camera [H, W, 3] uint8: one ray per column; the wall spans the rows between the projections of
    its bottom and top edge at the hit depth; colours dim with distance."""
    h = params.camera_height
    fan = camera_fan(params)
    focal = fan.focal()
    origin = _sensor_origin(params, state, params.camera_offset)
    r, seg = cast_rays(params, origin, state.yaw, fan, params.lidar_range)
    r, seg = r[::-1], seg[::-1]  # the fan runs right to left, image columns left to right
    depth = r * np.cos(fan.angles()[::-1])  # distance along the optical axis
    elev = (h / 2 - (np.arange(h) + 0.5)) / focal  # tan of each row's elevation
    height = params.camera_z + elev[:, None] * depth[None, :]  # where each pixel's ray meets the wall plane
    is_wall = (seg[None, :] >= 0) & (height >= 0) & (height <= params.wall_height)
    side = params.wall_side[jnp.maximum(seg, 0)]
    wall_rgb = jnp.where(side[:, None] == 0, jnp.asarray(WALL_COLOURS[0]), jnp.asarray(WALL_COLOURS[1]))
    wall_rgb = wall_rgb / (1.0 + 0.15 * depth[:, None])
    floor_dist = params.camera_z / np.maximum(-elev, 1e-3)
    floor_rgb = np.asarray(FLOOR)[None] / (1.0 + 0.15 * floor_dist[:, None])  # [H, 3]
    background = np.where((elev >= 0)[:, None], np.asarray(SKY)[None], floor_rgb)  # [H, 3]
    img = jnp.where(is_wall[..., None], wall_rgb[None], jnp.asarray(background, jnp.float32)[:, None])
    if params.terrain is not None:  # the surfaces' texture where each floor pixel's ray meets the ground
        floor = ~is_wall & (elev < 0)[:, None]
        img = jnp.where(floor[..., None], _floor_texture(params, state, fan, floor_dist), img)
    return jnp.clip(jnp.round(img), 0, 255).astype(jnp.uint8)


def _floor_texture(params: EnvParams, state: EnvState, fan: Fan, floor_dist: np.ndarray) -> jax.Array:
    """[H, W, 3] surface colours where each camera pixel's ray meets the ground (`floor_dist` along the optical
    axis per row), dimmed with distance like the flat floor."""
    ahead = np.minimum(floor_dist, 2 * params.lidar_range)[:, None]  # rows at or above the horizon: unused
    across = ahead * np.tan(fan.angles()[::-1])[None, :]  # image columns left to right: the fan reversed
    origin = _sensor_origin(params, state, params.camera_offset)
    c, sn = jnp.cos(state.yaw), jnp.sin(state.yaw)
    xy = jnp.stack([origin[0] + c * ahead - sn * across, origin[1] + sn * ahead + c * across], -1)
    return surfaces.texture(params.terrain, xy) / (1.0 + 0.15 * ahead[..., None])


def imu(state: EnvState, accel: jax.Array) -> jax.Array:
    """The sensor contract's IMU at the centre of gravity: yaw rate and specific force (centripetal, longitudinal,
    the ground's support against gravity), from the state and the body-frame velocity derivative `accel`."""
    return contract.planar_imu(state.omega, state.vx, state.vy, accel[0], accel[1], jnp)


def ground_image(params: EnvParams, state: EnvState) -> jax.Array:
    """The top-down image of the ground surfaces around the car (`surfaces.ground_image` at its pose)."""
    return surfaces.ground_image(params.terrain, pose(params, state)[jnp.array([0, 1, 5])])
