"""LiDAR-master-clock sync rules on hand-made timestamps (src/data/sync.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from src.data import sync


@dataclasses.dataclass
class FakeGpsImu:
    t: np.ndarray
    enu: np.ndarray
    gyro: np.ndarray
    accel: np.ndarray
    fix_changed: np.ndarray
    valid: np.ndarray


def _held_gps() -> FakeGpsImu:
    """Records every second for 0..20 s; the fix changes only at t = 0, 4, 8 (east 0 -> 40 -> 40 + north 30)."""
    t = np.arange(21, dtype=np.float64)
    east = np.where(t < 4, 0.0, 40.0)
    north = np.where(t < 8, 0.0, 30.0)
    enu = np.stack([east, north], axis=1)
    changed = np.zeros(21, bool)
    changed[[4, 8]] = True
    gyro = np.stack([t, 2 * t, -t], axis=1)
    accel = np.stack([10 + t, np.zeros(21), np.full(21, -9.8)], axis=1)
    return FakeGpsImu(t, enu, gyro, accel, changed, np.ones(21, bool))


def test_imu_is_linearly_interpolated_at_the_sweep_time():
    g = _held_gps()
    table = sync.sync_sequence(np.array([2.5, 7.25]), {}, g)
    np.testing.assert_allclose(table.imu[0], [2.5, 5.0, -2.5, 12.5, 0.0, -9.8], rtol=1e-6)
    np.testing.assert_allclose(table.imu[1], [7.25, 14.5, -7.25, 17.25, 0.0, -9.8], rtol=1e-6)
    assert table.valid["imu"].all()


def test_gps_interpolates_between_change_points_not_held_records():
    g = _held_gps()
    table = sync.sync_sequence(np.array([2.0, 6.0]), {}, g, gps_max_gap=10.0)
    # t=2 lies halfway between the fixes at t=0 (east 0) and t=4 (east 40); the held record at t=2 says 0.
    # contract layout: east, north / 100 m; cos, sin heading; speed / 10 m/s. Heading east, 40 m / 4 s:
    np.testing.assert_allclose(table.gps[0], [0.2, 0.0, 1.0, 0.0, 1.0], atol=1e-6)
    # t=6: halfway from (40, 0) at t=4 to (40, 30) at t=8, heading north (pi/2), 30 m / 4 s.
    np.testing.assert_allclose(table.gps[1], [0.4, 0.15, 0.0, 1.0, 0.75], atol=1e-6)
    assert table.valid["gps"].all()


def test_gps_invalid_beyond_the_hold_and_across_wide_brackets():
    g = _held_gps()  # knots at 0, 4, 8 only
    # -0.5 s and 9 s are within the 1 s hold of the first/last fix (held, speed 0), 13 s is 5 s past the last
    table = sync.sync_sequence(np.array([-0.5, 9.0, 13.0]), {}, g, gps_max_gap=2.0)
    np.testing.assert_array_equal(table.valid["gps"], [True, True, False])
    # held, speed 0; contract layout: east, north from the first fix / 100 m, cos, sin heading, speed / 10 m/s
    np.testing.assert_allclose(table.gps[0], [0.0, 0.0, 1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(table.gps[1], [0.4, 0.3, 0.0, 1.0, 0.0], atol=1e-5)
    np.testing.assert_array_equal(table.gps[2], 0.0)
    # a gap of 3 s between knots 0 and 4 is too wide to bridge
    narrow = sync.sync_sequence(np.array([2.0, 6.0]), {}, g, gps_max_gap=3.0)
    np.testing.assert_array_equal(narrow.valid["gps"], [False, False])


def test_gps_holds_the_last_fix_of_a_sequence_that_ends_stationary():
    """The fix stops changing at t = 8 while records go on to t = 20 (the car stopped): no sweep after the stop
    may move on along the last segment (north at 7.5 m/s): each is the last fix with speed 0, or invalid."""
    g = _held_gps()
    sweeps = 8.0 + 0.1 * np.arange(1, 121)  # 8.1 .. 20 s
    table = sync.sync_sequence(sweeps, {}, g)  # default gps_max_gap = 10 s, far longer than the hold
    ok = table.valid["gps"]
    np.testing.assert_array_equal(ok, sweeps <= 8.0 + sync.GPS_HOLD_S + 1e-9)
    # contract layout: east, north from the first fix / 100 m, cos, sin heading, speed / 10 m/s
    np.testing.assert_allclose(table.gps[ok, :2], np.broadcast_to([0.4, 0.3], (int(ok.sum()), 2)), atol=1e-6)
    np.testing.assert_array_equal(table.gps[ok, 4], 0.0)
    np.testing.assert_array_equal(table.gps[~ok], 0.0)
    longer = sync.sync_sequence(sweeps, {}, g, gps_hold=20.0)  # a longer hold keeps the fix, still no drift
    assert longer.valid["gps"].all()
    np.testing.assert_allclose(longer.gps[:, :2], np.broadcast_to([0.4, 0.3], (len(sweeps), 2)), atol=1e-6)


def test_imu_gap_and_fix_jump():
    g = _held_gps()
    g.valid[5:9] = False  # IMU/GPS records 5..8 missing: IMU knots 4 and 9 are 5 s apart
    table = sync.sync_sequence(np.array([3.5, 6.0, 9.5, 20.5, 21.5]), {}, g, imu_max_gap=1.0)
    np.testing.assert_array_equal(table.valid["imu"], [True, False, True, True, False])
    np.testing.assert_array_equal(table.imu[1], 0.0)
    # 40 m in 4 s (10 m/s) is motion, above max_speed it is a jump
    fast = sync.sync_sequence(np.array([2.0]), {}, _held_gps(), gps_max_speed=5.0)
    assert not fast.valid["gps"][0]


def test_nearest_neighbour_within_tolerance():
    lidar_t = np.array([0.0, 0.1, 0.2, 0.3])
    cam_t = np.array([0.01, 0.098, 0.26])
    table = sync.sync_sequence(lidar_t, {"rgb": cam_t}, None, tolerance={"rgb": 0.03})
    np.testing.assert_array_equal(table.index["rgb"], [0, 1, -1, -1])  # 0.2 -> 0.26 is 0.06 away
    np.testing.assert_array_equal(table.valid["rgb"], [True, True, False, False])
    loose = sync.sync_sequence(lidar_t, {"rgb": cam_t}, None, tolerance={"rgb": 0.05})
    np.testing.assert_array_equal(loose.index["rgb"], [0, 1, -1, 2])
    assert not table.valid["radar"].any() and not table.valid["gps"].any() and table.valid["lidar"].all()


def test_default_tolerance_is_half_the_median_period():
    cam_t = np.array([0.0, 0.1, 0.2, 0.3, 1.0])  # median period 0.1 -> tolerance 0.05
    assert sync.default_tolerance(cam_t) == pytest.approx(0.05)
    lidar_t = np.array([0.04, 0.16, 0.56, 0.66])
    table = sync.sync_sequence(lidar_t, {"ir": cam_t}, None)
    np.testing.assert_array_equal(table.index["ir"], [0, 2, -1, -1])
    assert table.valid_counts()["ir"] == 2


def test_non_increasing_lidar_times_are_refused():
    with pytest.raises(ValueError, match="increase"):
        sync.sync_sequence(np.array([0.0, 0.0]), {}, None)
