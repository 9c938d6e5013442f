"""BEV projection, radar BEV, image decode/resize/normalise and box rasterisation (src/data/bev.py, src/data/images.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.path import Path as PolyPath
from PIL import Image

from src import contract
from src.data import images
from src.data.bev import bev_picture, box_corners, lidar_bev, radar_bev, rasterize_boxes

TINY = contract.BevGrid(
    x_range=(0.0, 4.0), y_range=(-2.0, 2.0), z_range=(-1.0, 1.0), height=4, width=4, intensity_max=100
)


def _tiny_cloud() -> dict[str, np.ndarray]:
    pts = [
        (3.5, 1.5, 0.0, 50.0),  # cell (0, 0)
        (3.2, 1.9, 0.5, 30.0),  # cell (0, 0)
        (4.0, 0.5, -0.9, 10.0),  # x = x_max lies in row 0; y 0.5 -> column 1
        (0.5, -1.5, -0.5, 80.0),  # cell (3, 3)
        (5.0, 0.0, 0.0, 10.0),  # beyond x_max
        (0.0, 0.0, 0.0, 10.0),  # x = x_min is outside (rows are half-open towards x_min)
        (1.0, 0.0, 1.5, 10.0),  # above z_range
        (np.nan, np.nan, np.nan, 0.0),  # no return
    ]
    a = np.array(pts, np.float32)
    return {"x": a[:, 0], "y": a[:, 1], "z": a[:, 2], "intensity": a[:, 3]}


def test_lidar_bev_matches_hand_computed_channels():
    bev = lidar_bev(_tiny_cloud(), TINY)
    assert bev.shape == (4, 4, 4) and bev.dtype == np.float32
    expected = np.zeros((4, 4, 4), np.float32)
    log64 = math.log(64)
    expected[0, 0] = [1, (0.5 + 1) / 2, (50 + 30) / 2 / 100, math.log(3) / log64]
    expected[0, 1] = [1, (-0.9 + 1) / 2, 10 / 100, math.log(2) / log64]
    expected[3, 3] = [1, (-0.5 + 1) / 2, 80 / 100, math.log(2) / log64]
    np.testing.assert_allclose(bev, expected, atol=1e-6)


def test_lidar_bev_accepts_arrays_and_saturates_density():
    cloud = _tiny_cloud()
    arr = np.stack([cloud[k] for k in ("x", "y", "z", "intensity")], axis=1)
    np.testing.assert_array_equal(lidar_bev(arr, TINY), lidar_bev(cloud, TINY))
    many = np.tile(np.array([[2.5, 0.5, 0.0, 1.0]], np.float32), (100, 1))  # 100 points in cell (1, 1)
    assert lidar_bev(many, TINY)[1, 1, 3] == 1.0
    with pytest.raises(ValueError, match="intensity"):
        lidar_bev({"x": arr[:, 0], "y": arr[:, 1], "z": arr[:, 2]}, TINY)


def test_radar_bev_velocity_and_rcs():
    grid = contract.BevGrid((0.0, 20.0), (-10.0, 10.0), (-5.0, 5.0), height=2, width=2, intensity_max=255.0)
    pts = {
        "x": np.array([15.0, 15.0, 5.0], np.float32),
        "y": np.array([5.0, 5.0, -5.0], np.float32),
        "z": np.zeros(3, np.float32),
        "vx": np.array([-3.0, -1.0, 2.0], np.float32),
        "vy": np.array([0.0, 0.0, 0.0], np.float32),
        "RCS": np.array([10.0, 30.0, -4.0], np.float32),
    }
    bev = radar_bev(pts, grid, velocity_scale=10.0, rcs_scale=20.0)
    r0 = (-3 * 15 / math.hypot(15, 5) + -1 * 15 / math.hypot(15, 5)) / 2  # mean line-of-sight velocity
    r1 = 2 * 5 / math.hypot(5, -5)
    expected = np.zeros((2, 2, 3), np.float32)
    expected[0, 0] = [1, r0 / 10, 20 / 20]
    expected[1, 1] = [1, r1 / 10, -4 / 20]
    np.testing.assert_allclose(bev, expected, atol=1e-6)
    scalar = radar_bev({"x": pts["x"], "y": pts["y"], "z": pts["z"], "velocity": pts["vx"]}, grid)
    np.testing.assert_allclose(scalar[0, 0], [1, -2 / 20, 0.0], atol=1e-6)  # no RCS field: channel stays 0


def test_normalize_and_resize_values():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 0, 128
    norm = images.normalize_image(rgb)
    np.testing.assert_allclose(
        norm[0, 0], [(1 - 0.485) / 0.229, -0.456 / 0.224, (128 / 255 - 0.406) / 0.225], atol=1e-5
    )
    big = images.resize_image(rgb, (6, 9))
    assert big.shape == (6, 9, 3) and big.dtype == np.uint8
    np.testing.assert_array_equal(big, np.broadcast_to(rgb[0, 0], (6, 9, 3)))  # a flat colour stays flat
    np.testing.assert_allclose(images.normalize_minmax(np.array([[100, 300], [200, 150]])), [[0, 1], [0.5, 0.25]])
    assert not images.normalize_minmax(np.full((2, 2), 7.0)).any()


def test_decode_jpeg_rgb_and_16bit_ir(tmp_path):
    img = np.zeros((720, 1280, 3), np.uint8)
    img[:, :640] = (200, 40, 10)  # left half one colour, right half another
    img[:, 640:] = (0, 120, 250)
    Image.fromarray(img).save(tmp_path / "f.jpg", quality=95)
    rgb = images.decode_image(tmp_path / "f.jpg", (224, 224), "RGB")
    assert rgb.shape == (224, 224, 3) and rgb.dtype == np.uint8
    np.testing.assert_allclose(rgb[100, 50], (200, 40, 10), atol=6)
    np.testing.assert_allclose(rgb[100, 170], (0, 120, 250), atol=6)
    x = images.rgb_input(tmp_path / "f.jpg", (224, 224, 3))
    np.testing.assert_allclose(x[100, 50], images.normalize_image(rgb[100, 50]), atol=1e-6)
    ir = np.tile(np.linspace(1000, 9000, 640).astype(np.uint16), (512, 1))  # a horizontal 16-bit ramp
    Image.fromarray(ir).save(tmp_path / "ir.png")
    out = images.ir_input(tmp_path / "ir.png", (64, 80, 1))
    assert out.shape == (64, 80, 1) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    np.testing.assert_allclose(out[0, :, 0], np.linspace(0, 1, 80), atol=0.02)  # ramp kept, range by min-max


def test_rasterize_rotated_box():
    grid = contract.BevGrid((-4.0, 4.0), (-4.0, 4.0), (-3.0, 3.0), height=8, width=8, intensity_max=255.0)
    upright = np.array([[0.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])  # 4 m along x, 2 m along y
    turned = upright.copy()
    turned[0, 6] = np.pi / 2  # now 4 m along y
    expected = np.zeros((8, 8), np.int32)
    expected[2:6, 3:5] = 1  # rows: x centres 1.5 .. -1.5; columns: y centres 0.5, -0.5
    np.testing.assert_array_equal(rasterize_boxes(upright, grid), expected)
    np.testing.assert_array_equal(rasterize_boxes(turned, grid), expected.T)
    # a 30-degree box checked against an independent point-in-polygon test of its corners
    fine = contract.BevGrid((-4.0, 4.0), (-4.0, 4.0), (-3.0, 3.0), height=40, width=40, intensity_max=255.0)
    boxes = np.array([[1.0, -0.5, 0.0, 5.0, 1.6, 1.0, np.pi / 6], [-2.5, 2.5, 0.0, 1.0, 1.0, 1.0, 0.0]])
    raster = rasterize_boxes(boxes, fine)
    cx, cy = fine.cell_centres()
    centres = np.stack(np.broadcast_arrays(cx, cy), axis=-1).reshape(-1, 2)
    for k, corners in enumerate(box_corners(boxes)):
        inside = PolyPath(corners).contains_points(centres).reshape(40, 40)
        np.testing.assert_array_equal(raster == k + 1, inside)
    pic = bev_picture(lidar_bev(_tiny_cloud(), fine), boxes, fine, scale=2)
    assert pic.size == (80, 80)
