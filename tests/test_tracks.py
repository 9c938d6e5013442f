"""Track geometry: procedural generation, validation, map files round trip, bad-input errors."""

from pathlib import Path

import numpy as np
import pytest

from src.envs import tracks
from src.envs.tracks import Track, check_track, get_track, load_map, procedural_track, write_map


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_procedural_tracks_are_valid(seed):
    t = procedural_track(seed, min_width=2.0, max_width=3.0, min_curvature_radius=2.5)
    check_track(t, min_width=2.0, min_gap=0.5)
    total = t.width_left + t.width_right
    assert total.min() >= 2.0 - 1e-9 and total.max() <= 3.0 + 1e-9
    assert 1.0 / np.abs(t.curvature()).max() >= 2.5
    again = procedural_track(seed, min_width=2.0, max_width=3.0, min_curvature_radius=2.5)
    np.testing.assert_array_equal(t.centreline, again.centreline)


def test_check_track_rejects_self_intersection():
    th = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    eight = np.stack([10 * np.sin(th), 5 * np.sin(2 * th)], 1)  # figure eight crosses itself at the origin
    with pytest.raises(ValueError, match="self-intersect"):
        check_track(Track("eight", eight, np.full(200, 0.5), np.full(200, 0.5)))


def test_progress_and_geometry_on_a_circle():
    th = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    c = Track("circle", 10 * np.stack([np.cos(th), np.sin(th)], 1), np.full(360, 1.0), np.full(360, 1.5))
    assert c.length == pytest.approx(2 * np.pi * 10, rel=1e-3)
    np.testing.assert_allclose(
        c.progress(np.array([[10.3, 0.0], [0.0, 9.0], [-10.0, 0.0]])), [0, 0.25, 0.5], atol=1e-3
    )
    assert list(c.checkpoint(np.array([[0.0, 10.0], [0.0, -10.0]]), 8)) == [2, 6]
    x, y, yaw = c.start_pose()
    assert (x, y) == pytest.approx((10.0, 0.0)) and yaw == pytest.approx(np.pi / 2, abs=1e-6)
    left, right = c.boundaries()  # counter-clockwise: the left wall is the inner one
    np.testing.assert_allclose(np.linalg.norm(left, axis=1), 9.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(right, axis=1), 11.5, atol=1e-6)
    assert c.walls().shape == (720, 4)


def test_map_round_trip_with_and_without_csv(tmp_path):
    t = procedural_track(4, name="rt")
    yaml_path = write_map(t, tmp_path)
    with_csv = load_map(yaml_path, tmp_path / "rt.csv")
    np.testing.assert_allclose(with_csv.centreline, t.centreline, atol=1e-5)
    np.testing.assert_allclose(with_csv.width_left, t.width_left, atol=1e-5)
    np.testing.assert_allclose(with_csv.width_right, t.width_right, atol=1e-5)
    extracted = load_map(yaml_path)  # centreline traced from the free space
    _, off = t.project(extracted.centreline)
    assert off.max() < 0.1
    assert extracted.length == pytest.approx(t.length, rel=0.01)
    s = t.progress(extracted.centreline) * t.length
    ref_w = np.interp(s, np.r_[t.arc_length, t.length], np.r_[t.width_left, t.width_left[0]])
    assert np.abs(extracted.width_left - ref_w).max() < 0.1
    assert get_track(yaml_path).length == pytest.approx(t.length)  # picks up rt.csv next to it


def test_bundled_tracks_load_through_load_map():
    bundled = tracks.bundled_tracks()
    assert set(bundled) == set(tracks.BUNDLED_SPECS) and "default" in bundled
    for name, spec in tracks.BUNDLED_SPECS.items():
        regenerated = procedural_track(name=name, **spec)
        np.testing.assert_allclose(bundled[name].centreline, regenerated.centreline, atol=1e-5)
        check_track(bundled[name], min_width=2.0)


def test_bad_map_inputs_name_the_file(tmp_path):
    bad_yaml = tmp_path / "m.yaml"
    bad_yaml.write_text("image: nothere.png\nresolution: 0.05\norigin: [0, 0, 0]\n")
    with pytest.raises(FileNotFoundError, match=r"m\.yaml.*nothere\.png"):
        load_map(bad_yaml)
    no_res = tmp_path / "n.yaml"
    no_res.write_text("image: x.png\norigin: [0, 0, 0]\n")
    with pytest.raises(ValueError, match=r"n\.yaml.*resolution"):
        load_map(no_res)
    t = procedural_track(4, name="ok")
    yaml_path = write_map(t, tmp_path)
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("# x_m, y_m, w\n1,2,3\n4,5,6\n7,8,9\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*4 columns"):
        load_map(yaml_path, bad_csv)
    text_csv = tmp_path / "text.csv"
    text_csv.write_text("a,b,c,d\n")
    with pytest.raises(ValueError, match=r"text\.csv"):
        load_map(yaml_path, text_csv)
    with pytest.raises(ValueError, match="unknown track"):
        get_track("no_such_track")
    assert Path(tracks.BUNDLED_DIR / "default.png").is_file()
