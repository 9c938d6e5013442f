"""Raw ROS2 bags (src/data/rosbag/): a bag written here with rosbags is read back into per-sensor streams."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from rosbags.rosbag2 import Writer

from src.data import errors, pcd
from src.data.cmht import index, readers
from src.data.rosbag import convert as rosbag_convert
from src.data.rosbag import reader as rosbag_reader
from src.pretraining import data as pretrain_data

T = rosbag_reader.TYPESTORE.types
RNG = np.random.default_rng(0)
CLOUDS = [
    {"x": RNG.normal(size=50).astype(np.float32), "intensity": RNG.uniform(0, 255, 50).astype(np.float32),
     "ring": RNG.integers(0, 32, 50).astype(np.uint16)}
    for _ in range(3)
]  # fmt: skip
RGB = [RNG.integers(0, 255, (6, 8, 3), dtype=np.uint8) for _ in range(4)]
IR = [RNG.integers(0, 65535, (5, 7), dtype=np.uint16) for _ in range(2)]
FIXES = [(43.228872, -79.939057), (43.229872, -79.939057)]  # 0.001 deg north: ~111.1 m


def _header(t: float):
    sec = int(t)
    return T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=round((t - sec) * 1e9)), frame_id="f"
    )


def _cloud(t, fields):
    """A packed little-endian PointCloud2 of the field arrays (float32 / uint16), in their order."""
    rec = np.zeros(
        len(next(iter(fields.values()))), [(k, v.dtype.newbyteorder("<")) for k, v in fields.items()]
    )
    for k, v in fields.items():
        rec[k] = v
    pf = T["sensor_msgs/msg/PointField"]
    fields_msg = [pf(name=k, offset=rec.dtype.fields[k][1], datatype={"f": 7, "u": 4}[v.dtype.kind], count=1)
                  for k, v in fields.items()]  # fmt: skip
    step = rec.dtype.itemsize
    return T[rosbag_reader.POINTCLOUD2](
        header=_header(t), height=1, width=len(rec), fields=fields_msg, is_bigendian=False, point_step=step,
        row_step=step * len(rec), data=np.frombuffer(rec.tobytes(), np.uint8), is_dense=True,
    )  # fmt: skip


def _image(t, pixels, encoding, step_pad=0):
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1).view(np.uint8)
    data = np.concatenate([rows, np.zeros((h, step_pad), np.uint8)], axis=1)
    return T[rosbag_reader.IMAGE](
        header=_header(t), height=h, width=w, encoding=encoding, is_bigendian=0, step=data.shape[1],
        data=data.reshape(-1),
    )  # fmt: skip


def _imu(t, k):
    v3, q = T["geometry_msgs/msg/Vector3"], T["geometry_msgs/msg/Quaternion"]
    return T[rosbag_reader.IMU](
        header=_header(t), orientation=q(x=0, y=0, z=0, w=1), orientation_covariance=np.zeros(9),
        angular_velocity=v3(x=0.1 * k, y=0.0, z=-0.2), angular_velocity_covariance=np.zeros(9),
        linear_acceleration=v3(x=0.0, y=0.5, z=9.8), linear_acceleration_covariance=np.zeros(9),
    )  # fmt: skip


def _fix(t, lat, lon, status=0):
    return T[rosbag_reader.NAVSATFIX](
        header=_header(t), status=T["sensor_msgs/msg/NavSatStatus"](status=status, service=1), latitude=lat,
        longitude=lon, altitude=80.0, position_covariance=np.zeros(9), position_covariance_type=0,
    )  # fmt: skip


def _write_bag(path, msgs):
    """Write (topic, msgtype, time s, message) tuples as a ROS2 bag, in time order, one connection a topic."""
    with Writer(path, version=9) as writer:
        conns = {}
        for topic, msgtype, t, msg in sorted(msgs, key=lambda m: m[2]):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=rosbag_reader.TYPESTORE)
            writer.write(conns[topic], int(t * 1e9), rosbag_reader.TYPESTORE.serialize_cdr(msg, msgtype))
    return path


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("bags") / "drive"
    msgs = []  # (topic, msgtype, time, message)
    msgs += [("/velodyne_points", rosbag_reader.POINTCLOUD2, 100.0 + 0.1 * i, _cloud(100.0 + 0.1 * i, c))
             for i, c in enumerate(CLOUDS)]  # fmt: skip
    msgs += [("/radar/points", rosbag_reader.POINTCLOUD2, 100.05, _cloud(100.05, CLOUDS[0]))]
    msgs += [("/camera/image_raw", rosbag_reader.IMAGE, 100.0 + i / 15, _image(100.0 + i / 15, p, "rgb8", 3))
             for i, p in enumerate(RGB)]  # fmt: skip
    buf = io.BytesIO()
    Image.fromarray(IR[0]).save(buf, format="PNG")
    compressed = T[rosbag_reader.COMPRESSED](
        header=_header(100.01), format="png", data=np.frombuffer(buf.getvalue(), np.uint8)
    )
    msgs += [("/ir/image_raw/compressed", rosbag_reader.COMPRESSED, 100.01, compressed)]
    msgs += [("/ir/image_raw", rosbag_reader.IMAGE, 100.12, _image(100.12, IR[1], "mono16"))]
    msgs += [("/imu/data", rosbag_reader.IMU, 100.0 + 0.05 * k, _imu(100.0 + 0.05 * k, k)) for k in range(8)]
    msgs += [("/gps/fix", rosbag_reader.NAVSATFIX, 100.02, _fix(100.02, *FIXES[0])),
             ("/gps/fix", rosbag_reader.NAVSATFIX, 100.22, _fix(100.22, *FIXES[1])),
             ("/gps/fix", rosbag_reader.NAVSATFIX, 100.31, _fix(100.31, 0.0, 0.0, status=-1))]  # fmt: skip
    msgs += [("/diagnostics_blob", "std_msgs/msg/String", 100.0, T["std_msgs/msg/String"](data="x"))]
    return _write_bag(path, msgs)


def test_topics_map_by_message_type():
    conns = {"/a/points": rosbag_reader.POINTCLOUD2, "/radar_front": rosbag_reader.POINTCLOUD2, "/cam": rosbag_reader.IMAGE,
             "/thermal/img": rosbag_reader.COMPRESSED, "/imu": rosbag_reader.IMU, "/fix": rosbag_reader.NAVSATFIX, "/x": "std_msgs/msg/String"}  # fmt: skip
    assert rosbag_reader.map_topics(conns) == {"lidar": "/a/points", "radar": "/radar_front", "rgb": "/cam",
                                        "ir": "/thermal/img", "imu": "/imu", "gps": "/fix"}  # fmt: skip
    assert rosbag_reader.map_topics(conns, {"lidar": "/radar_front"})["lidar"] == "/radar_front"
    with pytest.raises(errors.CMHTFormatError, match="/cam"):
        rosbag_reader.map_topics(conns, {"lidar": "/cam"})


def test_bag_reads_into_streams(bag):
    report = errors.Report()
    seq = rosbag_reader.RosbagSequence(bag, {"ir": "/ir/image_raw"}, report=report)
    assert set(seq.streams) == {"lidar", "radar", "rgb", "ir", "gps_imu"}
    assert any("/diagnostics_blob" in p for p in report.ignored)
    np.testing.assert_allclose(seq.streams["lidar"].timestamps, [100.0, 100.1, 100.2], atol=1e-9)
    assert len(seq.streams["rgb"]) == 4 and len(seq.streams["gps_imu"]) == 8
    for i, cloud in enumerate(CLOUDS):
        got = seq.read("lidar", i)
        assert list(got) == ["x", "intensity", "ring"] and got["ring"].dtype == np.uint16
        for k in cloud:
            np.testing.assert_array_equal(got[k], cloud[k])
    np.testing.assert_array_equal(seq.read("rgb", 2), RGB[2])  # row padding (step > width * 3) removed
    np.testing.assert_array_equal(seq.read("ir", 0), IR[1])
    compressed = rosbag_reader.RosbagSequence(bag, report=errors.Report())  # default: the first ir topic by name
    assert compressed.topics["ir"] == "/ir/image_raw"
    other = rosbag_reader.RosbagSequence(bag, {"ir": "/ir/image_raw/compressed"})
    np.testing.assert_array_equal(other.read("ir", 0), IR[0])


def test_bag_gps_imu_holds_fixes(bag):
    report = errors.Report()
    seq = rosbag_reader.RosbagSequence(bag, on_error="skip", report=report)
    g = seq.gps_imu()
    # IMU at 100.00 .. 100.35 every 0.05 s; fixes at 100.02, 100.22 and a no-fix status at 100.31
    assert g.valid.tolist() == [False, True, True, True, True, True, True, False]
    assert g.fix_changed.tolist() == [False, True, False, False, False, True, False, False]
    assert report.skipped["gps_imu"] == 2
    np.testing.assert_allclose(g.lat[1:5], FIXES[0][0])
    np.testing.assert_allclose(g.lat[5:7], FIXES[1][0])
    assert g.enu[5, 1] == pytest.approx(111.1, abs=0.5) and abs(g.enu[5, 0]) < 1e-6
    # REP 103 forward-left-up as published -> the sensor contract's forward-right-down (y, z flipped)
    np.testing.assert_allclose(g.gyro[3], [0.3, 0.0, 0.2])
    np.testing.assert_allclose(g.accel[3], [0, -0.5, -9.8])
    with pytest.raises(errors.CMHTFormatError, match="GPS fix"):
        rosbag_reader.RosbagSequence(bag).gps_imu()


def test_read_bag_decodes_everything_into_memory(bag):
    b = rosbag_reader.read_bag(bag, topics={"ir": "/ir/image_raw/compressed"}, on_error="skip", report=errors.Report())
    assert b.topics["ir"] == "/ir/image_raw/compressed" and set(b.points) == {"lidar", "radar"}
    for got, cloud in zip(b.points["lidar"], CLOUDS, strict=True):
        for k in cloud:
            np.testing.assert_array_equal(got[k], cloud[k])
    for got, want in zip(b.images["rgb"], RGB, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(b.images["ir"][0], IR[0])
    np.testing.assert_allclose(b.timestamps["rgb"], 100.0 + np.arange(4) / 15, atol=1e-9)
    np.testing.assert_allclose(b.imu[:, 0], 0.1 * np.arange(8))
    np.testing.assert_allclose(b.imu[2, 1:], [0.0, -0.2, 0.0, 0.5, 9.8])
    np.testing.assert_allclose(b.navsat[:2], FIXES)
    assert np.isnan(b.navsat[2]).all()  # status -1: no fix
    assert b.gps_imu is not None and b.gps_imu.valid.sum() == 6


def test_bad_topic_override_names_the_bag(bag):
    with pytest.raises(errors.CMHTFormatError, match=f"{bag}.*'/imu/data' for lidar"):
        rosbag_reader.RosbagSequence(bag, {"lidar": "/imu/data"})


def test_unreadable_bag(tmp_path):
    (tmp_path / "nobag").mkdir()
    with pytest.raises(errors.CMHTFormatError, match="nobag"):
        rosbag_reader.RosbagSequence(tmp_path / "nobag")


# --------------------------------------------------------------------------------------------- conversion

CONV_T = {"lidar": 100.0 + 0.1 * np.arange(6), "rgb": 100.003 + np.arange(9) / 15, "ir": 100.01 + np.arange(6) / 9,
          "imu": 99.95 + 0.05 * np.arange(14), "gps": np.array([99.9, 100.25])}  # fmt: skip
CONV_FIXES = [(43.228872, -79.939057), (43.2289891234, -79.9391234567)]
CONV_CLOUDS = [
    {"x": RNG.uniform(-20, 20, 40).astype(np.float32), "y": RNG.uniform(-20, 20, 40).astype(np.float32),
     "z": RNG.uniform(-2, 1, 40).astype(np.float32), "intensity": RNG.uniform(0, 255, 40).astype(np.float32),
     "ring": RNG.integers(0, 32, 40).astype(np.uint16)}
    for _ in range(6)
]  # fmt: skip


def _jpeg(seed: int) -> bytes:
    yy, xx = np.mgrid[0:48, 0:64]
    pixels = np.stack([xx * 4, yy * 5, (xx + yy + seed * 20) % 256], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _imu_values(k: int) -> tuple[list[float], list[float]]:
    return [0.01 * k, -0.343, 0.2], [0.3, -0.1 * k, 9.79]


def write_drive_bag(path):
    """A small drive: LiDAR 10 Hz, JPEG camera, mono16 IR, IMU 20 Hz, two GPS fixes (the first before any IMU)."""
    v3, q = T["geometry_msgs/msg/Vector3"], T["geometry_msgs/msg/Quaternion"]
    msgs = [
        ("/points_raw", rosbag_reader.POINTCLOUD2, t, _cloud(t, c)) for t, c in zip(CONV_T["lidar"], CONV_CLOUDS)
    ]
    msgs += [("/cam/compressed", rosbag_reader.COMPRESSED, t,
              T[rosbag_reader.COMPRESSED](header=_header(t), format="jpeg", data=np.frombuffer(_jpeg(i), np.uint8)))
             for i, t in enumerate(CONV_T["rgb"])]  # fmt: skip
    msgs += [("/thermal/image", rosbag_reader.IMAGE, t, _image(t, RNG.integers(0, 65535, (5, 7), dtype=np.uint16), "mono16"))
             for t in CONV_T["ir"]]  # fmt: skip
    for k, t in enumerate(CONV_T["imu"]):
        gyro, acc = _imu_values(k)
        msgs.append(("/imu", rosbag_reader.IMU, t, T[rosbag_reader.IMU](
            header=_header(t), orientation=q(x=0, y=0, z=0, w=1), orientation_covariance=np.zeros(9),
            angular_velocity=v3(x=gyro[0], y=gyro[1], z=gyro[2]), angular_velocity_covariance=np.zeros(9),
            linear_acceleration=v3(x=acc[0], y=acc[1], z=acc[2]), linear_acceleration_covariance=np.zeros(9))))  # fmt: skip
    msgs += [("/fix", rosbag_reader.NAVSATFIX, t, _fix(t, *f)) for t, f in zip(CONV_T["gps"], CONV_FIXES)]
    return _write_bag(path, msgs)


@pytest.fixture(scope="module")
def bag_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bag_root")
    write_drive_bag(root / "drive_1")
    return root


def test_convert_bag_indexes_as_a_cmht_sequence(bag_root, tmp_path):
    out = rosbag_convert.convert_bag(bag_root / "drive_1", tmp_path / "seqs" / "drive_1")
    assert sorted(p.name for p in (tmp_path / "seqs").iterdir()) == ["drive_1"]  # the temp folder is gone
    (seq,) = index.find_sequences(tmp_path / "seqs")
    assert seq.path == out and set(seq.streams) == {"lidar", "rgb", "ir", "gps_imu"}
    for sensor in ("lidar", "rgb", "ir"):
        np.testing.assert_array_equal(seq.streams[sensor].timestamps, np.round(CONV_T[sensor] * 1000) / 1000)
    np.testing.assert_array_equal(seq.streams["gps_imu"].timestamps, np.round(CONV_T["imu"] * 1000) / 1000)
    for path, cloud in zip(seq.streams["lidar"].files, CONV_CLOUDS, strict=True):
        got = pcd.read_pcd(path)
        for k in cloud:
            np.testing.assert_array_equal(got[k], cloud[k])
            assert got[k].dtype == cloud[k].dtype
    assert [p.suffix for p in seq.streams["rgb"].files] == [".jpg"] * 9
    assert seq.streams["rgb"].files[4].read_bytes() == _jpeg(4)  # the published JPEG, not re-encoded
    src = rosbag_reader.RosbagSequence(bag_root / "drive_1")
    np.testing.assert_array_equal(readers.read_image(seq.streams["ir"].files[3]), src.read("ir", 3))
    g = seq.gps_imu()
    assert g.valid.all() and g.fix_changed.tolist() == [True] + [False] * 5 + [True] + [False] * 7
    np.testing.assert_allclose(g.lat[:6], CONV_FIXES[0][0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(g.lon[6:], CONV_FIXES[1][1], rtol=0, atol=1e-6)
    want = np.array([sum(_imu_values(k), []) for k in range(14)]) * np.tile([1.0, -1.0, -1.0], 2)  # FRD
    np.testing.assert_allclose(g.gyro, want[:, :3], rtol=1e-12)
    np.testing.assert_allclose(g.accel, want[:, 3:], rtol=1e-12)  # G on disk, m/s^2 read back
    with pytest.raises(FileExistsError, match="drive_1"):
        rosbag_convert.convert_bag(bag_root / "drive_1", out)


def test_failed_conversion_leaves_nothing_and_skip_drops_records(bag, tmp_path):
    with pytest.raises(errors.CMHTFormatError, match="GPS fix"):  # IMU records before the first fix
        rosbag_convert.convert_bag(bag, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    report = errors.Report()
    seq = index.read_sequence(rosbag_convert.convert_bag(bag, tmp_path / "out", on_error="skip", report=report))
    assert set(seq.streams) == {"lidar", "radar", "rgb", "ir", "gps_imu"} and report.skipped["gps_imu"] == 2
    np.testing.assert_allclose(seq.gps_imu().t, 100.0 + 0.05 * np.arange(1, 7), atol=1e-9)
    np.testing.assert_array_equal(readers.read_image(seq.streams["rgb"].files[2]), RGB[2])  # raw -> lossless PNG


def test_degrees_to_ddmm_round_trips():
    deg = np.array([43.228872, -79.939057, 0.0, 12.99999999999, -0.5])
    np.testing.assert_allclose(readers.ddmm_to_degrees(readers.degrees_to_ddmm(deg)), deg, rtol=0, atol=1e-8)
    assert readers.degrees_to_ddmm(np.array([12.99999999999]))[0] == 1300.0  # a rounded 60' carries over


def test_convert_cli_maps_topics(bag_root, tmp_path, capsys):
    rosbag_convert.main(
        ["convert", str(bag_root / "drive_1"), "--out", str(tmp_path / "d"), "--topic", "rgb=/thermal/image"]
    )
    assert "rgb 6" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "d" / "camera").iterdir()) == ["front"]
    assert (tmp_path / "d" / "camera" / "front" / "00000005.png").is_file()


def test_pretrainer_data_from_a_bag_root(bag_root, tmp_path):
    """data.source = "rosbag": bags under data.root are converted once into _converted/ and read as CMHT.
    (A full `pretrain_loop.train` on it compiles a new model shape: ~40 s, over this file's budget.)"""
    from src.config import ModalityConfig
    from tests._pretrain_fakes import tiny_config

    shapes = {"lidar": (32, 32, 4), "rgb": (32, 32, 3), "gps": (5,)}
    cfg = tiny_config(tmp_path, "bag", model={"modalities": {k: ModalityConfig(v) for k, v in shapes.items()}},
                      data={"source": "rosbag", "root": str(bag_root), "shuffle": False})  # fmt: skip
    batch = next(pretrain_data.build_data(cfg, batch_size=6, shard_index=0, shard_count=1))
    first = bag_root / "_converted" / "drive_1" / "lidar" / "00000005.pcd"
    stamp = first.stat().st_mtime_ns
    assert set(batch) == {"lidar", "rgb", "gps", "valid", "timestamp"}
    assert batch["lidar"].shape == (6, 32, 32, 4) and batch["rgb"].shape == (6, 32, 32, 3)
    assert batch["valid"]["lidar"].all() and batch["valid"]["rgb"].all()
    assert batch["lidar"][..., 0].sum(axis=(1, 2)).min() > 0  # occupied BEV cells from the bag's points
    np.testing.assert_allclose(batch["timestamp"], CONV_T["lidar"], atol=1e-9)
    again = next(pretrain_data.build_data(cfg, batch_size=6, shard_index=0, shard_count=1))
    np.testing.assert_array_equal(again["lidar"], batch["lidar"])
    assert first.stat().st_mtime_ns == stamp  # converted once, reused
    missing = tiny_config(tmp_path, "bag", data={"source": "rosbag", "root": str(tmp_path / "nothing")})
    with pytest.raises(FileNotFoundError, match="nothing"):
        pretrain_data.build_data(missing, batch_size=2, shard_index=0, shard_count=1)
