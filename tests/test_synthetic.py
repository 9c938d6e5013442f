"""Synthetic CMHT sequences (src/data/synthetic.py): real layout, per-sensor rates, one consistent scene."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from src import contract
from src.data import bev, errors, pcd, synthetic
from src.data.cmht import index, inspect, readers

FRAMES = 45  # 4.5 s: more than one held GPS fix


@pytest.fixture(scope="module")
def seq_dir(tmp_path_factory):
    return synthetic.write_cmht_sequence(
        tmp_path_factory.mktemp("syn") / "seq", frames=FRAMES, seed=3, points=4000
    )


@pytest.fixture(scope="module")
def seq(seq_dir):
    report = errors.Report()
    (s,) = index.find_sequences(seq_dir.parent, report=report)
    assert report.as_dict() == {"problems": [], "skipped": {}, "ignored": []}
    return s


def test_layout_and_formats(seq, seq_dir):
    assert set(seq.streams) == set(index.SENSORS)
    assert (seq_dir / "lidar" / "00000000.pcd").is_file() and (
        seq_dir / "Gps_Imu" / "dataformat.txt"
    ).is_file()
    assert (seq_dir / "camera" / "front" / "timestamp.txt").is_file()
    lidar = pcd.read_pcd(seq.streams["lidar"].files[0])
    assert list(lidar) == ["x", "y", "z", "intensity", "ring", "time"] and len(lidar["x"]) == 4000
    assert lidar["ring"].dtype == np.uint16 and lidar["x"].dtype == np.float32
    radar = pcd.read_pcd(seq.streams["radar"].files[0])
    assert list(radar) == ["x", "y", "z", "vx", "vy", "rcs"]
    rgb, ir = readers.read_image(seq.streams["rgb"].files[0]), readers.read_image(seq.streams["ir"].files[0])
    assert rgb.shape == (720, 1280, 3) and rgb.dtype == np.uint8
    assert ir.shape == (512, 640) and ir.dtype == np.uint16 and ir.max() > 255
    # calibration: the real sample's values
    assert seq.calib["rgb"]["intrinsic"][0, 0] == pytest.approx(738.264936107773)
    assert seq.calib["ir"]["extrinsic"][0, 3] == pytest.approx(0.168286110980556)
    # a GPS/IMU record reads like the real ones: 8 lines, ddmm.mmmm with 4 decimals, no final newline
    text = seq.streams["gps_imu"].files[0].read_text()
    lines = text.split("\n")
    assert len(lines) == 8 and not text.endswith("\n") and len(lines[0].split(".")[1]) == 4


def test_sensors_run_at_distinct_rates_with_drops(seq):
    assert len(seq.streams["lidar"]) == FRAMES
    rates = {k: inspect.stream_stats(s.timestamps)["rate_hz"] for k, s in seq.streams.items()}
    for name, nominal in synthetic.RATES.items():
        assert rates[name] == pytest.approx(nominal, rel=0.08), name
    assert len({round(rates[k]) for k in ("lidar", "rgb", "ir", "radar")}) == 4
    gaps = sum(inspect.stream_stats(s.timestamps)["gaps"] for s in seq.streams.values())
    assert gaps > 0  # dropped frames leave holes in time
    lidar_t = seq.streams["lidar"].timestamps
    for s in seq.streams.values():  # every sensor covers the LiDAR time span
        assert s.timestamps[0] <= lidar_t[0] + 0.12 and s.timestamps[-1] >= lidar_t[-1] - 0.12


def test_gps_held_and_imu_at_rest_values(seq):
    g = seq.gps_imu()
    assert g.valid.all()
    assert g.lat[0] == pytest.approx(synthetic.LAT0, abs=2e-5) and g.lon[0] == pytest.approx(
        synthetic.LON0, abs=2e-5
    )
    changes = np.flatnonzero(g.fix_changed)
    assert 2 <= len(changes) <= 3 and changes[0] == 0
    held = np.diff(g.t[changes])
    assert np.all((held > synthetic.GPS_HOLD_S - 0.8) & (held < synthetic.GPS_HOLD_S + 0.8))
    # the ego drives at EGO_SPEED: the distance between fixes matches (fix noise 0.5 m)
    step = np.hypot(*np.diff(g.enu[changes], axis=0).T)
    np.testing.assert_allclose(step, synthetic.EGO_SPEED * held, atol=3.0)
    assert np.median(g.accel[:, 2]) == pytest.approx(-9.80665, abs=0.1)


def _in_box(x, y, box, margin=0.1):
    c, s = np.cos(box[6]), np.sin(box[6])
    u = c * (x - box[0]) + s * (y - box[1])
    v = -s * (x - box[0]) + c * (y - box[1])
    return (np.abs(u) <= box[3] / 2 + margin) & (np.abs(v) <= box[4] / 2 + margin)


def test_scene_is_consistent_across_lidar_labels_and_cameras(seq):
    labelled = [i for i in range(FRAMES) if i in seq.labels]
    assert 0.75 * FRAMES <= len(labelled) < FRAMES  # some sweeps stay unlabelled
    hit = total = 0
    for i in labelled[:10]:
        pts = pcd.read_pcd(seq.streams["lidar"].files[i])
        labels = readers.read_labels(seq.labels[i])
        for box, cls in zip(readers.label_boxes(labels), readers.label_classes(labels)):
            if np.hypot(box[0], box[1]) > 25:
                continue
            inside = _in_box(pts["x"], pts["y"], box) & (pts["z"] > box[2] - box[5] / 2 + 0.05)
            total += 1
            hit += inside.sum() >= 3
            if inside.sum() >= 3:  # returns from a box carry that class's intensity
                assert np.median(pts["intensity"][inside]) == pytest.approx(synthetic.CLASSES[cls][3], abs=15)
    assert total >= 5 and hit >= 0.8 * total
    # IR: a labelled box straight ahead in view is warm at its projected centre
    warm = 0
    ir_t = seq.streams["ir"].timestamps
    for i in labelled:
        t = seq.streams["lidar"].timestamps[i]
        j = int(np.argmin(np.abs(ir_t - t)))
        if abs(ir_t[j] - t) > 0.01:
            continue
        image = readers.read_image(seq.streams["ir"].files[j])
        for box in readers.label_boxes(readers.read_labels(seq.labels[i])):
            (u, v), depth = synthetic.project(box[:3], seq.calib["ir"])
            if 3 < depth < 40 and 0 <= u < 640 and 0 <= v < 512:
                warm += image[int(v), int(u)] > 5000
    assert warm >= 1


def test_radar_points_carry_box_velocities(seq):
    pts = pcd.read_pcd(seq.streams["radar"].files[5])  # in the radar's frame: velocities rotate into the LiDAR's
    to_lidar = seq.calib["radar"]["to_lidar"]
    vx = (np.stack([pts["vx"], pts["vy"], np.zeros_like(pts["vx"])], -1) @ to_lidar[:3, :3].T)[:, 0]
    moving = np.abs(vx + synthetic.EGO_SPEED) > 1.0  # static clutter closes in at the ego speed
    assert moving.any() and (~moving).any()
    y = bev.radar_in_lidar_frame(pts, to_lidar)["y"]
    assert np.all(np.abs(y[~moving]) > 8.0)  # the clutter lies on the walls


def test_radar_returns_land_on_their_objects_lidar_cells_only_through_the_extrinsic(seq):
    """Radar is written in its own frame; moved with the calibration read back from the file, a car's radar
    returns fall in the BEV cells of that car (where its LiDAR returns lie), and with the extrinsic ignored they
    do not."""
    to_lidar = seq.calib["radar"]["to_lidar"]
    np.testing.assert_allclose(to_lidar, synthetic.RADAR_TO_LIDAR)
    assert not np.allclose(to_lidar[:3, :3], np.eye(3)) and np.abs(to_lidar[:3, 3]).max() > 1.0
    box = np.array([[30.0, -3.5, -1.0, 4.6, 1.9, 1.6, 0.0]])  # a car ahead in the right lane
    lidar = synthetic.lidar_sweep(np.random.default_rng(0), box, np.array([150.0]), 20_000)
    radar = synthetic.radar_scan(np.random.default_rng(1), box, np.array([-5.0]), np.array([10.0]))
    grid = contract.BevGrid((-40.0, 40.0), (-40.0, 40.0), (-5.0, 5.0), height=160, width=160, intensity_max=255.0)
    car = bev.rasterize_boxes(box, grid) > 0  # the car's footprint cells
    car = car | np.roll(car, 1, 0) | np.roll(car, -1, 0)  # one cell of slack for the sensors' noise
    car = car | np.roll(car, 1, 1) | np.roll(car, -1, 1)
    on_car = _in_box(lidar["x"], lidar["y"], box[0]) & (lidar["z"] > box[0, 2] - box[0, 5] / 2 + 0.05)
    seen = bev.lidar_bev({k: v[on_car] for k, v in lidar.items()}, grid)[..., 0] > 0
    assert seen.sum() >= 3 and np.all(car[seen])  # the car's LiDAR returns lie in those cells
    moved = bev.radar_in_lidar_frame(radar, to_lidar)
    returns = np.abs(moved["y"]) < 7.0  # the car's returns; the clutter lies on the walls at |y| = 9
    assert returns.sum() >= 2
    own = {k: v[returns] for k, v in radar.items()}
    placed = bev.radar_bev(own, grid, to_lidar=to_lidar)[..., 0] > 0
    ignored = bev.radar_bev(own, grid)[..., 0] > 0
    assert placed.any() and np.all(car[placed])
    assert ignored.any() and not np.any(car[ignored])


def test_deterministic_for_a_seed(tmp_path):
    def digest(root):
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return [(p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest()) for p in files]

    a = synthetic.write_cmht_sequence(tmp_path / "a", frames=3, seed=7, points=500)
    b = synthetic.write_cmht_sequence(tmp_path / "b", frames=3, seed=7, points=500)
    c = synthetic.write_cmht_sequence(tmp_path / "c", frames=3, seed=8, points=500)
    assert digest(a) == digest(b) and digest(a) != digest(c)


def test_cli_and_inspect(tmp_path, capsys):
    synthetic.main(["cmht", "--out", str(tmp_path / "root" / "s"), "--frames", "4", "--points", "800"])
    capsys.readouterr()
    png = tmp_path / "bev.png"
    inspect.main(["inspect", str(tmp_path / "root"), "--json", "--bev-png", str(png), "--deep"])
    doc = json.loads(capsys.readouterr().out)
    (info,) = doc["sequences"]
    assert info["sensors"]["lidar"]["frames"] == 4 and info["problems"] == []
    assert info["valid_after_sync"]["lidar"] == 4 and info["valid_after_sync"]["imu"] == 4
    assert png.is_file() and doc["bev_png"]["boxes"] > 0


@pytest.mark.parametrize("deep", [False, True])
def test_inspect_names_every_corrupt_sensor_file(seq_dir, tmp_path, capsys, deep):
    """A PCD cut to its first 300 bytes and a truncated JPEG are named in the text and JSON reports, cheap check
    and --deep alike; the clean copy reports no bad file."""
    root = tmp_path / "root"
    shutil.copytree(seq_dir, root / "seq")
    flags = ["--deep"] if deep else []
    inspect.main(["inspect", str(root), "--json", *flags])
    (clean,) = json.loads(capsys.readouterr().out)["sequences"]
    assert clean["bad_files"] == [] and clean["problems"] == []
    pcd = root / "seq" / "lidar" / "00000007.pcd"
    pcd.write_bytes(pcd.read_bytes()[:300])
    jpg = root / "seq" / "camera" / "front" / "00000003.jpg"
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    inspect.main(["inspect", str(root), "--json", *flags])
    (info,) = json.loads(capsys.readouterr().out)["sequences"]
    assert {(b["sensor"], b["file"]) for b in info["bad_files"]} == {("lidar", str(pcd)), ("rgb", str(jpg))}
    assert sum(str(pcd) in p for p in info["problems"]) == 1 and sum(str(jpg) in p for p in info["problems"]) == 1
    inspect.main(["inspect", str(root), *flags])
    text = capsys.readouterr().out
    assert f"problem: {pcd}" in text and f"problem: {jpg}" in text and "bad sensor files: 2" in text
