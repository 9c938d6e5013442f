"""Which side is left: a lidar beam at +90 deg sees the wall on the driver's left and lands at y > 0 in the BEV.

Both ends of the scan path, so that beam order does not rest on the PyBullet cross-check alone: `lidar()` in
an asymmetric corridor (left and right walls at different, known distances), and the scan -> BEV mapping of
`observations` (NumPy and jnp) for a single return at +90 deg.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from src import contract
from src.config import BevConfig, ModalityConfig
from src.envs.observations import ScanSpec, contract_obs, contract_obs_jax
from src.envs.racecar import env as racecar
from src.envs.racecar import sensors
from src.envs.racecar.params import make_params
from src.envs.tracks.geometry import Track

LEFT, RIGHT = 0.6, 1.4  # m from the centreline to the left / right wall


def _stadium(
    straight: float = 10.0, radius: float = 3.0, n_straight: int = 60, n_arc: int = 60
) -> np.ndarray:
    """Counter-clockwise stadium centreline starting mid-way along the bottom straight, heading +x."""
    x = np.linspace(-straight / 2, straight / 2, n_straight, endpoint=False)
    bottom = np.stack([x, np.zeros_like(x)], 1)
    th = np.linspace(-np.pi / 2, np.pi / 2, n_arc, endpoint=False)
    right_arc = np.stack([straight / 2 + radius * np.cos(th), radius + radius * np.sin(th)], 1)
    top = np.stack([-x, np.full_like(x, 2 * radius)], 1)
    left_arc = np.stack([-straight / 2 - radius * np.cos(th), radius - radius * np.sin(th)], 1)
    loop = np.concatenate([bottom, right_arc, top, left_arc])
    return np.roll(loop, -n_straight // 2, axis=0)  # index 0 at (0, 0)


def test_lidar_sees_the_left_wall_at_plus_90_degrees():
    centre = _stadium()
    n = len(centre)
    corridor = Track("corridor", centre, np.full(n, LEFT), np.full(n, RIGHT))
    # 181 beams over 180 deg: beam 0 at -90 deg (right), beam 90 straight ahead, beam 180 at +90 deg (left)
    params = make_params(corridor, lidar_rays=181, lidar_fov=np.pi, pose_noise=0.0)
    _, state = racecar.reset(jax.random.PRNGKey(0), params)
    np.testing.assert_allclose([state.yaw, sensors.pose(params, state)[1]], [0.0, 0.0], atol=1e-6)
    ranges = np.asarray(jax.jit(sensors.lidar)(params, state))
    np.testing.assert_allclose(ranges[[180, 0]], [LEFT, RIGHT], atol=1e-4)
    # +-45 deg: the same walls, sqrt(2) further along the diagonal
    np.testing.assert_allclose(ranges[[135, 45]], np.sqrt(2) * np.array([LEFT, RIGHT]), atol=1e-4)


BEV = BevConfig(x_range=(-12.8, 12.8), y_range=(-12.8, 12.8), z_range=(-1.0, 1.0))
GRID = contract.bev_grid(BEV, (64, 64, 4))


@pytest.mark.parametrize("path", ["numpy", "jax"])
def test_a_return_at_plus_90_degrees_lands_at_positive_y_in_the_bev(path):
    spec = ScanSpec(rays=5, fov=np.pi, max_range=15.0)  # beams at -90, -45, 0, 45, 90 deg
    obs = {
        "pose": np.zeros(6, np.float32),
        "velocity": np.zeros(6, np.float32),
        "acceleration": np.zeros(6, np.float32),
        "lidar": np.array([15.0, 15.0, 15.0, 15.0, 5.0], np.float32),  # only the +90 deg beam returns, at 5 m
        "time": np.zeros(1, np.float32),
    }
    modalities = {"lidar": ModalityConfig(shape=(64, 64, 4))}
    if path == "numpy":
        sample, _ = contract_obs(obs, modalities, BEV, spec)
    else:
        sample, _ = jax.jit(lambda o: contract_obs_jax(o, modalities, BEV, spec))(obs)
    occupied = np.argwhere(np.asarray(sample["lidar"])[..., 0] > 0)
    # point (0, +5): row floor((12.8 - 0) / 0.4) = 32, column floor((12.8 - 5) / 0.4) = 19
    np.testing.assert_array_equal(occupied, [[32, 19]])
    dx, dy = GRID.cell_size
    cell_y = GRID.y_range[1] - (occupied[0, 1] + 0.5) * dy  # columns run from +y (left) to -y (right)
    cell_x = GRID.x_range[1] - (occupied[0, 0] + 0.5) * dx
    assert cell_y > 0 and abs(cell_x) < dx
