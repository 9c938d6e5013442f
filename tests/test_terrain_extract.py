"""Patch extraction by scanning forward: positions, limits, gaps, the in-view test, and the on-disk sources."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from src import contract
from src.config import BevConfig
from src.data import synthetic
from src.data.cmht import index
from src.terrain import sources
from src.terrain.extract import GroundGeometry, ScanConfig, Trajectory, extract_patches, scan_ends
from src.terrain.synthetic import ground_texture, stripe_drive

FIXTURE = Path(__file__).parent / "fixtures" / "cmht" / "drive_dusk_clear_0" / "drive_dusk_1"


def _traj(poses, times=None, image=None, valid=None) -> Trajectory:
    poses = np.asarray(poses, np.float64)
    n = len(poses)
    image = np.arange(20 * 20, dtype=np.uint8).reshape(20, 20) if image is None else image
    images = np.repeat(image[None, ..., None], n, axis=0)
    valid = np.ones((n, *image.shape), bool) if valid is None else valid
    times = np.arange(n) * 0.1 if times is None else np.asarray(times, np.float64)
    return Trajectory(images, valid, poses, times, np.ones(n, bool))


GEOM = GroundGeometry(px_per_m=10.0, robot_row=15.0, robot_col=10.0)
SCAN3 = ScanConfig(patch_px=3, max_path_m=6.0)


def _patch(ex, view: int, frame: int) -> np.ndarray:
    (k,) = np.flatnonzero((ex.viewpoint == view) & (ex.frame == frame))
    return ex.patches[k, ..., 0]


def test_patch_position_is_pixel_exact_for_a_hand_computed_pose():
    # frame 1 is 0.5 m ahead and 0.2 m left of frame 0: 5 rows up, 2 columns left of the robot pixel (15, 10)
    traj = _traj([[3.0, -1.0, 0.0], [3.5, -0.8, 0.0]])
    ex = extract_patches(traj, GEOM, SCAN3)
    image = traj.images[0, ..., 0]
    np.testing.assert_array_equal(_patch(ex, 0, 1), image[9:12, 7:10])


def test_patch_is_rotated_to_the_heading_at_the_location():
    # the same place, but the robot at frame 1 faces 90 degrees left: the patch's "up" is the image's "left"
    traj = _traj([[0.0, 0.0, 0.0], [0.5, 0.2, math.pi / 2]])
    ex = extract_patches(traj, GEOM, SCAN3)
    image = traj.images[0, ..., 0]
    pr, pc = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    np.testing.assert_array_equal(_patch(ex, 0, 1), image[11 - pc, 7 + pr])


def test_world_frame_rotation_keeps_the_relative_position():
    # the whole trajectory rotated by 30 degrees in the world: the same pixels are cropped
    a = np.radians(30.0)
    c, s = math.cos(a), math.sin(a)
    poses = np.array([[0.0, 0.0, a], [0.5 * c - 0.2 * s, 0.5 * s + 0.2 * c, a]])
    ex = extract_patches(_traj(poses), GEOM, SCAN3)
    np.testing.assert_array_equal(_patch(ex, 0, 1), _traj(poses).images[0, 9:12, 7:10, 0])


def test_patch_partly_out_of_view_or_over_invalid_pixels_is_dropped():
    # frame 1 is 1.5 m ahead: rows -1..1, one row outside the image
    ex = extract_patches(_traj([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0]]), GEOM, SCAN3)
    assert not ((ex.viewpoint == 0) & (ex.frame == 1)).any()
    assert ex.dropped >= 1
    # inside the image, but one pixel under the patch was not seen
    valid = np.ones((2, 20, 20), bool)
    valid[0, 11, 9] = False
    ex = extract_patches(_traj([[0.0, 0.0, 0.0], [0.5, 0.2, 0.0]], valid=valid), GEOM, SCAN3)
    assert not ((ex.viewpoint == 0) & (ex.frame == 1)).any()
    valid[0, 11, 9], valid[0, 12, 9] = True, False  # just outside the patch: kept
    ex = extract_patches(_traj([[0.0, 0.0, 0.0], [0.5, 0.2, 0.0]], valid=valid), GEOM, SCAN3)
    assert ((ex.viewpoint == 0) & (ex.frame == 1)).sum() == 1


def test_path_length_limit_stops_the_scan_where_computed():
    n = 30
    poses = np.stack([np.arange(n) * 0.1, np.zeros(n), np.zeros(n)], axis=-1)
    end, _, stopped = scan_ends(_traj(poses), ScanConfig(max_path_m=1.0))
    np.testing.assert_array_equal(end, np.minimum(np.arange(n) + 10, n - 1))
    assert not stopped.any()


def test_yaw_limit_stops_the_scan_where_computed():
    n = 20
    yaw = np.radians(10.0) * np.arange(n)  # turning on the spot, 10 degrees a frame
    poses = np.stack([np.zeros(n), np.zeros(n), yaw], axis=-1)
    end, _, _ = scan_ends(_traj(poses), ScanConfig(max_yaw_deg=45.0))
    np.testing.assert_array_equal(end, np.minimum(np.arange(n) + 4, n - 1))


def test_odometry_gap_stops_the_scan_and_is_counted():
    n = 30
    times = np.arange(n) * 0.1
    times[15:] += 2.0  # a 2.1 s hole between frames 14 and 15
    poses = np.stack([np.arange(n) * 0.1, np.zeros(n), np.zeros(n)], axis=-1)
    traj = _traj(poses, times=times)
    scan = ScanConfig(patch_px=3, max_path_m=1.0)
    end, _, stopped = scan_ends(traj, scan)
    assert end[4] == 14 and end[14] == 14 and end[15] == 25
    np.testing.assert_array_equal(np.flatnonzero(stopped), np.arange(5, 15))  # these would have reached past 14
    image = np.full((40, 20), 100, np.uint8)
    ex = extract_patches(_traj(poses, times=times, image=image), GroundGeometry(10.0, 35.0, 10.0), scan)
    assert ex.gaps == 1 and ex.stopped_by_gap == 10
    assert not ((ex.viewpoint <= 14) & (ex.frame >= 15)).any()
    # a jump in position is a gap too
    poses[15:, 0] += 5.0
    assert scan_ends(_traj(poses), scan)[0][10] == 14


def test_stripe_drive_patches_land_on_their_stripe():
    # 20 px/m at 1 m/s and 10 Hz: every location is an integer pixel shift, so patches are exact crops of the world
    traj, geom = stripe_drive(120, stripe_m=2.0, noise_std=0.0)
    scan = ScanConfig(patch_px=12, max_path_m=2.0)
    ex = extract_patches(traj, geom, scan)
    assert len(ex.frame) > 1000
    k = (np.arange(12) - 5.5) / 20.0
    x = traj.poses[ex.frame, 0][:, None, None] - k[None, :, None]
    x = np.broadcast_to(x, (len(x), 12, 12))
    y = np.broadcast_to(-k[None, None, :], x.shape)
    np.testing.assert_array_equal(ex.patches[..., 0], ground_texture(x, y, 2.0, np.zeros(x.shape)))
    # views are sorted clearest (shortest path) first within each location
    same = ex.frame[1:] == ex.frame[:-1]
    assert np.all(ex.distance[1:][same] >= ex.distance[:-1][same])
    smooth = (traj.poses[ex.frame, 0] % 6.0 > 0.5) & (traj.poses[ex.frame, 0] % 6.0 < 1.5)
    assert smooth.any() and np.all(ex.patches[smooth] == 70)


def test_topdown_episode_round_trip(tmp_path):
    traj, geom = stripe_drive(12, image_hw=(16, 8))
    sources.write_topdown_episode(tmp_path / "ep", traj, geom)
    back, geom_back = sources.read_topdown_episode(tmp_path / "ep")
    assert geom_back == geom
    np.testing.assert_array_equal(back.images, traj.images)
    np.testing.assert_array_equal(back.poses, traj.poses)
    np.testing.assert_array_equal(back.times, traj.times)
    (tmp_path / "ep" / "poses.csv").write_text("t,x,y\n0,1,2\n")
    with pytest.raises(sources.TrajectoryFormatError, match="poses.csv"):
        sources.read_topdown_episode(tmp_path / "ep")


def test_cmht_fixture_gps_gives_poses_heading_along_motion():
    seq = index.read_sequence(FIXTURE)
    t = seq.gps_imu().t
    poses, ok = sources.cmht_poses(seq, t)
    assert ok.sum() > 100
    step = np.diff(poses[:, :2], axis=0)
    moving = ok[1:] & ok[:-1] & (np.hypot(*step.T) > 0.05)
    assert moving.sum() > 50
    heading = np.arctan2(step[moving, 1], step[moving, 0])
    # the heading is that of the GPS segment: equal to the step's direction except where a step crosses a fix
    agree = np.cos(heading - poses[1:][moving, 2]) > 1 - 1e-6
    assert agree.mean() > 0.95


@pytest.fixture(scope="module")
def synthetic_cmht(tmp_path_factory):
    # 55 sweeps: the synthetic GPS holds each fix ~4 s, so at least two fixes bracket most sweeps
    return synthetic.write_cmht_sequence(tmp_path_factory.mktemp("tcmht") / "seq", frames=55, seed=0, points=6000)


def test_cmht_sequence_lidar_bev_trajectory_gives_patches(synthetic_cmht):
    grid = contract.bev_grid(BevConfig(x_range=(-12.8, 12.8), y_range=(-12.8, 12.8)), (128, 128, 4))
    traj = sources.cmht_trajectory(index.read_sequence(synthetic_cmht), grid, ("intensity", "height"))
    geom = sources.cmht_geometry(grid)
    assert (geom.robot_row, geom.robot_col, geom.px_per_m) == (63.5, 63.5, 5.0)
    assert traj.images.shape == (55, 128, 128, 2) and traj.pose_valid.sum() > 30
    assert not traj.valid[:, 60:68, 60:68].any()  # the LiDAR sees no ground right under itself
    ex = extract_patches(traj, geom, ScanConfig(patch_px=6))
    assert len(ex.frame) > 20 and ex.dropped > 0
    assert np.all(traj.pose_valid[ex.viewpoint]) and np.all(traj.pose_valid[ex.frame])
    # ground returns carry the synthetic road's intensity (15 of 255) in the filled patches' first channel
    assert np.median(ex.patches[..., 0]) == 15
