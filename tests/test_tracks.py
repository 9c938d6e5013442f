"""Track geometry: procedural generation, validation, map files round trip, a real F1TENTH map, bad inputs."""

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from src.envs.tracks.geometry import Track, distance_to_loop
from src.envs.tracks.maps import load_map, read_occupancy, read_waypoints, world_to_pixels, write_map
from src.envs.tracks.procedural import procedural_track
from src.envs.tracks.registry import BUNDLED_DIR, BUNDLED_SPECS, bundled_tracks, get_track
from src.envs.tracks.validation import check_track

SPIELBERG = Path(__file__).parent / "fixtures" / "tracks" / "Spielberg"  # see ATTRIBUTION.md there
SPIELBERG_YAML = SPIELBERG / "Spielberg.yaml"
SPIELBERG_CSV = SPIELBERG / "Spielberg_centerline.csv"


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


@pytest.fixture(scope="module")
def written_map(tmp_path_factory):
    """A procedural track and its map files (PNG + YAML + CSV) in a temporary directory."""
    t = procedural_track(4, name="rt")
    return t, write_map(t, tmp_path_factory.mktemp("map"))


def test_map_round_trip_with_and_without_csv(written_map):
    t, yaml_path = written_map
    tmp_path = yaml_path.parent
    with_csv = load_map(yaml_path, tmp_path / "rt.csv")
    np.testing.assert_allclose(with_csv.centreline, t.centreline, atol=1e-5)
    # the walls are traced from the image: within a pixel (0.05 m) of the walls it was rasterised from
    np.testing.assert_allclose(with_csv.width_left, t.width_left, atol=0.05)
    np.testing.assert_allclose(with_csv.width_right, t.width_right, atol=0.05)
    for traced, exact in zip(with_csv.boundaries(), t.boundaries()):
        assert distance_to_loop(traced, exact).max() < 0.05
        assert distance_to_loop(exact, traced).max() < 0.05
    extracted = load_map(yaml_path)  # centreline traced from the free space
    _, off = t.project(extracted.centreline)
    assert off.max() < 0.1
    assert extracted.length == pytest.approx(t.length, rel=0.01)
    s = t.progress(extracted.centreline) * t.length
    ref_w = np.interp(s, np.r_[t.arc_length, t.length], np.r_[t.width_left, t.width_left[0]])
    assert np.abs(extracted.width_left - ref_w).max() < 0.1
    assert get_track(yaml_path).length == pytest.approx(t.length)  # picks up rt.csv next to it


def test_bundled_tracks_load_through_load_map():
    bundled = bundled_tracks()
    assert set(bundled) == set(BUNDLED_SPECS) and "default" in bundled
    for name, spec in BUNDLED_SPECS.items():
        regenerated = procedural_track(name=name, **spec)
        np.testing.assert_allclose(bundled[name].centreline, regenerated.centreline, atol=1e-5)
        check_track(bundled[name], min_width=2.0 - 0.05)  # widths measured to the traced walls (1 px)


def test_bad_map_inputs_name_the_file(written_map, tmp_path):
    bad_yaml = tmp_path / "m.yaml"
    bad_yaml.write_text("image: nothere.png\nresolution: 0.05\norigin: [0, 0, 0]\n")
    with pytest.raises(FileNotFoundError, match=r"m\.yaml.*nothere\.png"):
        load_map(bad_yaml)
    no_res = tmp_path / "n.yaml"
    no_res.write_text("image: x.png\norigin: [0, 0, 0]\n")
    with pytest.raises(ValueError, match=r"n\.yaml.*resolution"):
        load_map(no_res)
    yaml_path = written_map[1]
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
    assert Path(BUNDLED_DIR / "default.png").is_file()


# ------------------------------------------------------------------------------------ a real map (Spielberg)


@pytest.fixture(scope="module")
def spielberg():
    return load_map(SPIELBERG_YAML, SPIELBERG_CSV)


def _wall_error_px(track: Track) -> tuple[float, float]:
    """Largest distance (pixels) from the track's walls to the image's boundary of the free loop the
    centreline runs in, and from that boundary to the walls (pixel edges sampled every 1/4 px, walls every
    1/10 px)."""
    free, res, origin = read_occupancy(SPIELBERG_YAML)
    assert origin[2] == 0.0
    labels, _ = ndimage.label(free)
    h = free.shape[0]
    col, row = (track.centreline[0] - origin[:2]) / res - 0.5
    loop = labels == labels[int(round(h - 1 - row)), int(round(col))]
    t = np.linspace(-0.5, 0.5, 5)
    r, c = np.nonzero(loop[:, :-1] != loop[:, 1:])  # vertical pixel edges at column c + 0.5
    vertical = np.stack([np.repeat(c + 0.5, 5), (r[:, None] + t).ravel()], 1)
    r, c = np.nonzero(loop[:-1] != loop[1:])  # horizontal pixel edges at row r + 0.5
    horizontal = np.stack([(c[:, None] + t).ravel(), np.repeat(r + 0.5, 5)], 1)
    px = np.concatenate([vertical, horizontal])
    edges = origin[:2] + (np.stack([px[:, 0], h - 1 - px[:, 1]], 1) + 0.5) * res
    w = track.walls().astype(np.float64)
    n = np.maximum(np.ceil(np.linalg.norm(w[:, 2:] - w[:, :2], axis=1) / (0.1 * res)).astype(int), 1)
    f = np.concatenate([np.arange(k) / k for k in n])
    seg = np.repeat(np.arange(len(w)), n)
    samples = w[seg, :2] + f[:, None] * (w[seg, 2:] - w[seg, :2])
    to_edges = cKDTree(edges).query(samples)[0].max() / res
    to_walls = cKDTree(samples).query(edges)[0].max() / res
    return float(to_edges), float(to_walls)


def test_spielberg_walls_follow_the_image_within_a_pixel(spielberg):
    check_track(spielberg)
    to_edges, to_walls = _wall_error_px(spielberg)
    assert to_edges < 1.0 and to_walls < 1.0
    assert len(spielberg.walls()) < 4000  # traced boundaries simplified (about 14000 pixel edges)
    # Walls offset from the CSV centreline by its widths (before) miss the image's walls by many pixels.
    centre, w_right, w_left = read_waypoints(SPIELBERG_CSV)
    assert max(_wall_error_px(Track("offset", centre, w_left, w_right))) > 5.0  # 6.5 px (0.38 m)


def test_spielberg_centreline_extracted_from_the_loop(spielberg):
    extracted = load_map(SPIELBERG_YAML)  # no CSV: the mid-line of the free loop
    check_track(extracted)
    assert extracted.length == pytest.approx(spielberg.length, rel=0.02)  # 343 m
    total = extracted.width_left + extracted.width_right
    assert 2.0 < total.min() and total.max() < 3.0  # a 2.2 m corridor (not the free space outside it)
    _, off = spielberg.project(extracted.centreline)
    assert off.max() < 0.3
    assert get_track(SPIELBERG_YAML).length == pytest.approx(spielberg.length)  # picks up the CSV next to it


def test_offset_walls_that_fold_over_at_a_hairpin_are_rejected():
    centre, w_right, w_left = read_waypoints(SPIELBERG_CSV)  # a 0.59 m turn with 1.1 m half-widths
    with pytest.raises(ValueError, match=r"'spielberg_csv'.*radius 0\.59 m.*fold over"):
        check_track(Track("spielberg_csv", centre, w_left, w_right))
    th = np.linspace(0, 2 * np.pi, 100, endpoint=False)
    tight = Track("tight", 0.8 * np.stack([np.cos(th), np.sin(th)], 1), np.full(100, 1.0), np.full(100, 1.0))
    with pytest.raises(ValueError, match=r"'tight'.*radius 0\.80 m, tighter than the 1\.00 m width"):
        check_track(tight)


def test_map_walls_must_surround_the_centreline(spielberg):
    swapped = Track(
        "swapped",
        spielberg.centreline,
        spielberg.width_left,
        spielberg.width_right,
        left_wall=spielberg.right_wall,
        right_wall=spielberg.left_wall,
    )
    with pytest.raises(ValueError, match="'swapped'.*between its walls"):
        check_track(swapped)
    backwards = Track(
        "backwards",
        spielberg.centreline,
        spielberg.width_left,
        spielberg.width_right,
        left_wall=spielberg.left_wall[::-1],
        right_wall=spielberg.right_wall,
    )
    with pytest.raises(ValueError, match="'backwards'.*driving direction"):
        check_track(backwards)
    with pytest.raises(ValueError, match="both left_wall and right_wall"):
        Track(
            "half",
            spielberg.centreline,
            spielberg.width_left,
            spielberg.width_right,
            left_wall=spielberg.left_wall,
        )


def test_maps_without_one_clear_loop_get_clear_errors(written_map, tmp_path):
    t, yaml_path = written_map
    free, res, origin = read_occupancy(yaml_path)
    img = np.where(free, 254, 0).astype(np.uint8)
    Image = pytest.importorskip("PIL.Image")

    def save(name, pixels):
        Image.fromarray(pixels, mode="L").save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.yaml").write_text(yaml_path.read_text().replace("rt.png", f"{name}.png"))
        return tmp_path / f"{name}.yaml"

    with pytest.raises(ValueError, match=r"twice\.yaml: 2 separate free loops; pass a waypoint CSV"):
        load_map(save("twice", np.concatenate([img, img], axis=1)))
    speck = img.copy()
    col, row = world_to_pixels(t.centreline[100], free.shape, res, origin)
    speck[int(row) - 10 : int(row) - 8, int(col)] = 0  # a 2-pixel obstacle on the track, off the centreline
    with pytest.raises(ValueError, match=r"speck\.yaml: the track's free loop encloses 2 separate obstacles"):
        load_map(save("speck", speck), yaml_path.with_suffix(".csv"))
