"""CMHT readers (src/data/cmht/, src/data/pcd.py) on a slice of the real sample and on hand-made bad input."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import lzf
import numpy as np
import pytest
from PIL import Image

from src.data import errors, pcd
from src.data.cmht import index, inspect, readers

FIXTURE = Path(__file__).parent / "fixtures" / "cmht"
SEQ = "drive_dusk_clear_0/drive_dusk_1"
GPS = FIXTURE / SEQ / "Gps_Imu" / "data"


@pytest.fixture(scope="module")
def real():
    (seq,) = index.find_sequences(FIXTURE)
    return seq


@pytest.fixture()
def copy(tmp_path):
    """A writable copy of the real sequence folder."""
    dst = tmp_path / "root" / "drive_x"
    shutil.copytree(FIXTURE / SEQ, dst)
    return dst


# --------------------------------------------------------------------------------------------- real format


def test_real_fixture_parses(real):
    assert real.name == SEQ and set(real.streams) == {"gps_imu"}
    stream = real.streams["gps_imu"]
    assert len(stream) == 160 and stream.files[0].name == "00000000.txt"
    assert stream.timestamps[0] == 923330.9 and stream.timestamps[1] == 923331.0
    g = real.gps_imu()
    assert g.valid.all()
    assert g.lat[0] == pytest.approx(43 + 13.7323 / 60, abs=1e-12)  # 4313.7323 -> 43.228872
    assert g.lon[0] == pytest.approx(-(79 + 56.3434 / 60), abs=1e-12)  # -7956.3434 -> -79.939057
    np.testing.assert_allclose(g.gyro[0], [-0.17215334329726387, -0.34260219804703007, 0.47384781620435007])
    np.testing.assert_allclose(g.accel[0], np.array([-0.288156, -0.115995, -0.938949]) * 9.80665)
    assert g.enu[0].tolist() == [0.0, 0.0]
    # calibration: the real numbers, as matrices
    assert set(real.calib) == {"rgb", "ir", "radar"}
    assert real.calib["rgb"]["intrinsic"][0, 0] == pytest.approx(738.264936107773)
    assert real.calib["ir"]["intrinsic"][0, 2] == pytest.approx(336.551379339968)
    np.testing.assert_allclose(
        real.calib["rgb"]["extrinsic"][2, :3], [0.986539955512618, 0.0627742237537781, -0.150991102417571]
    )
    assert real.calib["rgb"]["extrinsic"][3].tolist() == [0, 0, 0, 1]
    assert real.calib["radar"]["translation"].tolist() == [0, 0, 0]
    np.testing.assert_array_equal(real.calib["radar"]["to_lidar"], np.eye(4))  # the sample: radar = LiDAR frame
    # labels: index -> file; an empty list is allowed
    assert min(real.labels) == 90 and max(real.labels) == 834 and len(real.labels) == 71
    assert readers.read_labels(real.labels[834]) == []  # the sample's first empty label file
    labels = readers.read_labels(real.labels[90])
    boxes = readers.label_boxes(labels)
    assert readers.label_classes(labels)[:2] == ["Truck", "Car"] and boxes.shape == (len(labels), 7)
    np.testing.assert_allclose(
        boxes[0], [24.72420772813821, 14.403971547892903, 0.27394480324388604, 5.691709330337483,
                   2.639079666595305, 2.1748800980858505, 0.5837176872685502]
    )  # fmt: skip
    assert readers.label_boxes([]).shape == (0, 7)


def test_ddmm_conversion():
    np.testing.assert_allclose(readers.ddmm_to_degrees([4313.7323, -7956.3434, 0.0, -30.0]), [
        43.228871666666666, -79.93905666666667, 0.0, -0.5])  # fmt: skip


def _haversine(lat0, lon0, lat, lon, r=6371008.8):
    p0, p1 = np.radians(lat0), np.radians(lat)
    a = np.sin((p1 - p0) / 2) ** 2 + np.cos(p0) * np.cos(p1) * np.sin(np.radians(lon - lon0) / 2) ** 2
    dist = 2 * r * np.arcsin(np.sqrt(a))
    dl = np.radians(lon - lon0)
    bearing = np.arctan2(
        np.sin(dl) * np.cos(p1), np.cos(p0) * np.sin(p1) - np.sin(p0) * np.cos(p1) * np.cos(dl)
    )
    return dist, bearing


def test_enu_agrees_with_haversine(real):
    g = real.gps_imu()
    moved = np.hypot(*g.enu.T) > 5.0
    assert moved.sum() > 50
    dist, bearing = _haversine(g.lat[0], g.lon[0], g.lat[moved], g.lon[moved])
    # sphere vs ellipsoid: distances agree to well under 1%, directions (clockwise from north) to ~0.01 rad
    np.testing.assert_allclose(np.hypot(*g.enu[moved].T), dist, rtol=5e-3)
    np.testing.assert_allclose(np.arctan2(g.enu[moved, 0], g.enu[moved, 1]), bearing, atol=1e-2)
    # one arc-minute of latitude is ~1852 m, due north
    ((east, north),) = readers.latlon_to_enu([43.5 + 1 / 60], [-79.9], 43.5, -79.9)
    assert north == pytest.approx(1852.0, abs=4.0) and abs(east) < 1e-6


def test_held_gps_and_timestamp_gaps(real):
    g = real.gps_imu()
    raw = [p.read_text().split()[:2] for p in real.streams["gps_imu"].files]
    expected = [0] + [i for i in range(1, len(raw)) if raw[i] != raw[i - 1]]
    assert np.flatnonzero(g.fix_changed).tolist() == expected == [0, 17, 59, 99, 141]
    # between changes the position is held exactly
    assert np.all(np.diff(g.enu, axis=0)[~g.fix_changed[1:]] == 0)
    ms = np.array((GPS / "timestamp.txt").read_text().split(), np.int64)
    stats = inspect.stream_stats(g.t)
    assert stats["frames"] == 160 and stats["median_period_s"] == pytest.approx(0.1, abs=2e-3)
    assert stats["gaps"] == int(np.sum(np.diff(ms) > 150)) == 6
    assert stats["max_gap_s"] == pytest.approx(np.diff(ms).max() / 1000)


def test_unknown_files_are_ignored_and_reported(copy):
    shutil.copy(copy / "calib" / "camera" / "front.json", copy / "calib" / "camera" / "front (copy).json")
    (copy / "notes").mkdir()
    (copy / "Gps_Imu" / "data" / "readme.md").write_text("x")
    report = errors.Report()
    (seq,) = index.find_sequences(copy.parent, report=report)
    assert seq.name == "drive_x" and len(seq.streams["gps_imu"]) == 160 and not report.problems
    joined = "\n".join(report.ignored)
    assert "front (copy).json" in joined and "notes" in joined and "readme.md" in joined


def test_both_layouts_and_case_insensitive_names(tmp_path):
    seq = tmp_path / "seq"
    cloud = {"x": np.zeros(3, np.float32), "y": np.ones(3, np.float32), "z": np.zeros(3, np.float32)}
    folders = {
        "lidar": (seq / "LiDAR" / "data", ".pcd"),  # KITTI-style
        "rgb": (seq / "Camera" / "FRONT", ".png"),  # SUSTechPOINTS-style
        "ir": (seq / "Camera" / "IR" / "data", ".png"),
        "radar": (seq / "Radar" / "front_points", ".pcd"),
    }
    for i, (sensor, (folder, ext)) in enumerate(folders.items()):
        folder.mkdir(parents=True)
        for k in range(3):
            path = folder / f"{k:08d}{ext}"
            if ext == ".pcd":
                pcd.write_pcd(path, cloud)
            else:
                Image.fromarray(np.full((4, 6), k, np.uint16 if sensor == "ir" else np.uint8)).save(path)
        (folder / "timestamp.txt").write_text("".join(f"{1000 + 100 * k + i}\n" for k in range(3)))
    (seq_streams,) = index.find_sequences(tmp_path)
    assert set(seq_streams.streams) == {"lidar", "rgb", "ir", "radar"}
    np.testing.assert_allclose(seq_streams.streams["ir"].timestamps, [1.002, 1.102, 1.202])
    assert readers.read_image(seq_streams.streams["ir"].files[2]).dtype == np.uint16
    assert readers.read_image(seq_streams.streams["ir"].files[2])[0, 0] == 2


# --------------------------------------------------------------------------------------------- PCD


FIELDS = {
    "x": np.array([1.5, -2.25, 3.125, np.nan], np.float32),
    "t": np.array([0.1, 1e-9, -7.0, 123456.789], np.float64),
    "rgb": np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9], [255, 0, 128]], np.uint8),
    "_pad": np.array([9, 9, 9, 9], np.int16),
    "ring": np.array([0, 31, 7, 65535], np.uint16),
    "idx": np.array([[-1, 2], [3, -4], [2**31 - 1, -(2**31)], [0, 0]], np.int32),
}


@pytest.mark.parametrize("encoding", pcd.ENCODINGS)
def test_pcd_round_trip(tmp_path, encoding):
    path = pcd.write_pcd(tmp_path / "a.pcd", FIELDS, encoding)
    header = path.read_bytes().split(b"DATA")[0].decode()
    assert "FIELDS x t rgb _ ring idx" in header and "COUNT 1 1 3 1 1 2" in header
    out = pcd.read_pcd(path)
    assert list(out) == ["x", "t", "rgb", "ring", "idx"]
    for k, v in out.items():
        assert v.dtype == FIELDS[k].dtype and v.shape == FIELDS[k].shape, k
        np.testing.assert_array_equal(v, FIELDS[k], err_msg=k)
    empty = pcd.read_pcd(pcd.write_pcd(tmp_path / "e.pcd", {k: v[:0] for k, v in FIELDS.items()}, encoding))
    assert {k: (v.shape, v.dtype) for k, v in empty.items()} == {
        k: ((0, *FIELDS[k].shape[1:]), FIELDS[k].dtype) for k in out
    }


def test_pcd_ascii_keeps_64_bit_integers_exact(tmp_path):
    fields = {"t": np.array([2**64 - 1, 3], np.uint64), "id": np.array([[-(2**63), 2**62 + 1]] * 2, np.int64)}
    out = pcd.read_pcd(pcd.write_pcd(tmp_path / "w.pcd", fields, "ascii"))
    assert out["t"].tolist() == [2**64 - 1, 3] and out["id"].tolist() == [[-(2**63), 2**62 + 1]] * 2
    assert out["t"].dtype == np.uint64 and out["id"].dtype == np.int64


def test_pcd_hand_written_ascii(tmp_path):
    text = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x y z _ normal label\n"
        "SIZE 4 4 4 1 4 2\nTYPE F F F U F U\nCOUNT 1 1 1 2 3 1\nWIDTH 2\nHEIGHT 1\n"
        "VIEWPOINT 0 0 0 1 0 0 0\nPOINTS 2\nDATA ascii\n"
        "0.5 1 -2 0 0 0 0 1 7\n"
        "3 4.25 nan 9 9 1 0 0 65535\n"
    )
    path = tmp_path / "h.pcd"
    path.write_text(text)
    out = pcd.read_pcd(path)
    assert list(out) == ["x", "y", "z", "normal", "label"]
    np.testing.assert_array_equal(out["x"], np.float32([0.5, 3]))
    assert out["z"][0] == -2 and np.isnan(out["z"][1])
    np.testing.assert_array_equal(out["normal"], np.float32([[0, 0, 1], [1, 0, 0]]))
    assert out["label"].dtype == np.uint16 and out["label"].tolist() == [7, 65535]


def test_pcd_hand_built_binary_and_compressed(tmp_path):
    """Bodies built here with struct/lzf, independently of write_pcd: row-major records vs column blocks."""
    head = "VERSION .7\nFIELDS x ring _\nSIZE 4 2 1\nTYPE F U U\nCOUNT 1 1 2\nWIDTH 3\nHEIGHT 1\nPOINTS 3\nDATA {}\n"
    xs, rings = [1.0, -2.5, 4.0], [3, 5, 7]
    rows = b"".join(struct.pack("<fHBB", x, r, 0xAA, 0xBB) for x, r in zip(xs, rings))
    (tmp_path / "b.pcd").write_bytes(head.format("binary").encode() + rows)
    cols = struct.pack("<3f", *xs) + struct.pack("<3H", *rings) + bytes(6)
    packed = lzf.compress(cols, 100)
    body = struct.pack("<II", len(packed), len(cols)) + packed
    (tmp_path / "c.pcd").write_bytes(head.format("binary_compressed").encode() + body)
    for name in ("b.pcd", "c.pcd"):
        out = pcd.read_pcd(tmp_path / name)
        assert list(out) == ["x", "ring"], name
        assert out["x"].tolist() == xs and out["ring"].tolist() == rings, name


# --------------------------------------------------------------------------------------------- bad input


def _pcd_bytes(tmp_path, encoding="binary"):
    path = pcd.write_pcd(tmp_path / f"p_{encoding}.pcd", FIELDS, encoding)
    return path, path.read_bytes()


def test_bad_pcd_files(tmp_path):
    path, data = _pcd_bytes(tmp_path)
    path.write_bytes(data[:-5])
    with pytest.raises(errors.CMHTFormatError, match=f"{path}.*truncated"):
        pcd.read_pcd(path)
    cpath, cdata = _pcd_bytes(tmp_path, "binary_compressed")
    cpath.write_bytes(cdata[:-3])
    with pytest.raises(errors.CMHTFormatError, match=f"{cpath}.*truncated"):
        pcd.read_pcd(cpath)
    head, _, body = cdata.partition(b"DATA binary_compressed\n")
    cpath.write_bytes(head + b"DATA binary_compressed\n" + body[:8] + b"\xff" * (len(body) - 8))
    with pytest.raises(errors.CMHTFormatError, match=str(cpath)):
        pcd.read_pcd(cpath)
    for header, problem in [
        ("FIELDS x y\nSIZE 4 4\nTYPE F X\nCOUNT 1 1\nPOINTS 1\nDATA binary\n", "unsupported TYPE"),
        ("FIELDS x y\nSIZE 4 3\nTYPE F F\nCOUNT 1 1\nPOINTS 1\nDATA binary\n", "unsupported TYPE"),
        ("FIELDS x y\nSIZE 4\nTYPE F F\nPOINTS 1\nDATA binary\n", "disagree"),
        ("FIELDS x\nSIZE 4\nTYPE F\nWIDTH 2\nHEIGHT 1\nPOINTS 1\nDATA binary\n", "POINTS"),
        ("FIELDS x\nSIZE 4\nTYPE F\nPOINTS 1\nDATA zip\n", "DATA"),
        ("FIELDS x\nSIZE 4\nTYPE F\nPOINTS 2\nDATA ascii\n1 2 3\n", "3 values"),
        ("FIELDS x\nSIZE 4\nTYPE F\nPOINTS 1\nDATA ascii\nabc\n", "non-numeric"),
        ("garbage without a header", "DATA line"),
    ]:
        path.write_text(header)
        with pytest.raises(errors.CMHTFormatError, match=problem) as err:
            pcd.read_pcd(path)
        assert str(path) in str(err.value)


def test_bad_images(tmp_path):
    good = tmp_path / "a.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good)
    assert readers.read_image(good).shape == (64, 64, 3)
    truncated = tmp_path / "t.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    junk = tmp_path / "j.png"
    junk.write_bytes(b"not a png")
    for path in (truncated, junk):
        with pytest.raises(errors.CMHTFormatError, match=str(path)):
            readers.read_image(path)


def _expect(copy, problem, kind, check_skip):
    with pytest.raises(errors.CMHTFormatError, match=problem) as err:
        index.find_sequences(copy.parent)
    assert str(copy) in str(err.value)
    report = errors.Report()
    (seq,) = index.find_sequences(copy.parent, on_error="skip", report=report)
    assert report.skipped[kind] >= 1 and any(problem in p for p in report.problems)
    check_skip(seq, report)


def test_missing_timestamp_file(copy):
    (copy / "Gps_Imu" / "data" / "timestamp.txt").unlink()
    _expect(copy, "no timestamp.txt", "gps_imu", lambda seq, r: "gps_imu" not in seq.streams)


def test_timestamp_count_mismatch(copy):
    (copy / "Gps_Imu" / "data" / "00000159.txt").unlink()
    _expect(copy, "160 timestamps for 159", "gps_imu", lambda seq, r: "gps_imu" not in seq.streams)


def test_non_monotonic_time(copy):
    stamp = copy / "Gps_Imu" / "data" / "timestamp.txt"
    lines = stamp.read_text().split()
    lines[10], lines[11] = lines[11], lines[10]
    stamp.write_text("\n".join(lines) + "\n")

    def check(seq, report):
        s = seq.streams["gps_imu"]
        assert len(s) == 159 and "00000011.txt" not in [f.name for f in s.files]
        assert np.all(np.diff(s.timestamps) > 0) and report.skipped["gps_imu"] == 1

    _expect(copy, "not strictly increasing", "gps_imu", check)


def test_nan_in_gps_record(copy):
    bad = copy / "Gps_Imu" / "data" / "00000005.txt"
    lines = bad.read_text().split("\n")
    lines[3] = "nan"
    bad.write_text("\n".join(lines))
    (seq,) = index.find_sequences(copy.parent)
    with pytest.raises(errors.CMHTFormatError, match=f"{bad}.*non-finite"):
        seq.gps_imu()
    report = errors.Report()
    (seq,) = index.find_sequences(copy.parent, on_error="skip", report=report)
    g = seq.gps_imu()
    assert np.flatnonzero(~g.valid).tolist() == [5] and report.skipped == {"gps_imu": 1}
    assert g.gyro[5].tolist() == [0, 0, 0] and g.valid.sum() == 159
    assert np.flatnonzero(g.fix_changed).tolist() == [0, 17, 59, 99, 141]


def test_bad_calibration_and_labels(copy):
    (copy / "calib" / "camera" / "ir.json").write_text(
        json.dumps({"extrinsic": [0] * 15, "intrinsic": [0] * 9})
    )
    _expect(copy, "'extrinsic' needs 16", "calib", lambda seq, r: set(seq.calib) == {"rgb", "radar"})
    label = copy / "label" / "00000090.json"
    label.write_text(json.dumps([{"obj_id": "1", "obj_type": "Car", "psr": {"position": {"x": 1}}}]))
    with pytest.raises(errors.CMHTFormatError, match=f"{label}.*psr.position"):
        readers.read_labels(label)
    label.write_text("{")
    with pytest.raises(errors.CMHTFormatError, match=str(label)):
        readers.read_labels(label)


def test_inspect_cli_on_real_fixture(capsys):
    inspect.main(["inspect", str(FIXTURE), "--json"])
    doc = json.loads(capsys.readouterr().out)
    (info,) = doc["sequences"]
    assert info["name"] == SEQ and info["sensors"]["gps_imu"]["frames"] == 160
    assert info["sensors"]["gps_imu"]["gaps"] == 6 and info["gps_imu"]["fixes"] == 5
    expected = {}
    for path in sorted((FIXTURE / SEQ / "label").glob("*.json")):
        for obj in json.loads(path.read_text()):
            expected[obj["obj_type"]] = expected.get(obj["obj_type"], 0) + 1
    assert info["labels"]["by_class"] == expected and info["labels"]["files"] == 71
    assert info["valid_after_sync"] is None and any("no lidar" in p for p in info["problems"])
    assert math.isclose(info["sensors"]["gps_imu"]["rate_hz"], 10.0, rel_tol=0.02)


@pytest.mark.parametrize("encoding", pcd.ENCODINGS)
def test_pcd_interoperates_with_pypcd4(tmp_path, encoding):
    """An independent PCD implementation reads what we write and writes what we read."""
    pypcd4 = pytest.importorskip("pypcd4")
    xyz = np.random.default_rng(1).normal(size=(20, 3)).astype(np.float32)
    ring = np.arange(20, dtype=np.uint16)
    ours = pcd.write_pcd(
        tmp_path / "ours.pcd", {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "ring": ring}, encoding
    )
    np.testing.assert_allclose(pypcd4.PointCloud.from_path(ours).numpy(("x", "y", "z")), xyz)
    theirs = tmp_path / "theirs.pcd"
    pypcd4.PointCloud.from_xyz_points(xyz).save(theirs, encoding=pypcd4.Encoding(encoding))
    got = pcd.read_pcd(theirs)
    np.testing.assert_array_equal(np.stack([got["x"], got["y"], got["z"]], axis=1), xyz)


def test_radar_extrinsic_maps_radar_points_into_the_lidar_frame():
    """calib/radar/*.json is the radar's pose in the LiDAR frame (SUSTechPOINTS): p_lidar = R p_radar + t with
    R = Rx @ Ry @ Rz; a radar yawed 90 degrees left sees along the LiDAR's +y."""
    m = readers.radar_to_lidar([0.0, 0.0, np.pi / 2], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(m @ [5.0, 0.0, 0.0, 1.0], [1.0, 7.0, 3.0, 1.0], atol=1e-12)
    a, b, c = 0.1, -0.2, 0.3
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    np.testing.assert_allclose(readers.radar_to_lidar([a, b, c], [0, 0, 0])[:3, :3], rx @ ry @ rz, atol=1e-12)
