"""Raw ROS2 bags (src/data/rosbag.py): a bag written here with rosbags is read back into per-sensor streams."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from rosbags.rosbag2 import Writer

from src.data import cmht, rosbag

T = rosbag.TYPESTORE.types
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
    layout = [("x", 7, 4), ("intensity", 7, 4), ("ring", 4, 2)]
    rec = np.zeros(len(fields["x"]), np.dtype({"names": ["x", "intensity", "ring"], "formats": ["<f4", "<f4", "<u2"],
                                               "offsets": [0, 4, 8], "itemsize": 12}))  # fmt: skip
    for k in rec.dtype.names:
        rec[k] = fields[k]
    pf = T["sensor_msgs/msg/PointField"]
    off = 0
    fields_msg = []
    for name, dt, size in layout:
        fields_msg.append(pf(name=name, offset=off, datatype=dt, count=1))
        off += size
    return T[rosbag.POINTCLOUD2](
        header=_header(t), height=1, width=len(rec), fields=fields_msg, is_bigendian=False, point_step=12,
        row_step=12 * len(rec), data=np.frombuffer(rec.tobytes(), np.uint8), is_dense=True,
    )  # fmt: skip


def _image(t, pixels, encoding, step_pad=0):
    h, w = pixels.shape[:2]
    rows = pixels.reshape(h, -1).view(np.uint8)
    data = np.concatenate([rows, np.zeros((h, step_pad), np.uint8)], axis=1)
    return T[rosbag.IMAGE](
        header=_header(t), height=h, width=w, encoding=encoding, is_bigendian=0, step=data.shape[1],
        data=data.reshape(-1),
    )  # fmt: skip


def _imu(t, k):
    v3, q = T["geometry_msgs/msg/Vector3"], T["geometry_msgs/msg/Quaternion"]
    return T[rosbag.IMU](
        header=_header(t), orientation=q(x=0, y=0, z=0, w=1), orientation_covariance=np.zeros(9),
        angular_velocity=v3(x=0.1 * k, y=0.0, z=-0.2), angular_velocity_covariance=np.zeros(9),
        linear_acceleration=v3(x=0.0, y=0.5, z=9.8), linear_acceleration_covariance=np.zeros(9),
    )  # fmt: skip


def _fix(t, lat, lon, status=0):
    return T[rosbag.NAVSATFIX](
        header=_header(t), status=T["sensor_msgs/msg/NavSatStatus"](status=status, service=1), latitude=lat,
        longitude=lon, altitude=80.0, position_covariance=np.zeros(9), position_covariance_type=0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp("bags") / "drive"
    msgs = []  # (topic, msgtype, time, message)
    msgs += [("/velodyne_points", rosbag.POINTCLOUD2, 100.0 + 0.1 * i, _cloud(100.0 + 0.1 * i, c))
             for i, c in enumerate(CLOUDS)]  # fmt: skip
    msgs += [("/radar/points", rosbag.POINTCLOUD2, 100.05, _cloud(100.05, CLOUDS[0]))]
    msgs += [("/camera/image_raw", rosbag.IMAGE, 100.0 + i / 15, _image(100.0 + i / 15, p, "rgb8", 3))
             for i, p in enumerate(RGB)]  # fmt: skip
    buf = io.BytesIO()
    Image.fromarray(IR[0]).save(buf, format="PNG")
    compressed = T[rosbag.COMPRESSED](
        header=_header(100.01), format="png", data=np.frombuffer(buf.getvalue(), np.uint8)
    )
    msgs += [("/ir/image_raw/compressed", rosbag.COMPRESSED, 100.01, compressed)]
    msgs += [("/ir/image_raw", rosbag.IMAGE, 100.12, _image(100.12, IR[1], "mono16"))]
    msgs += [("/imu/data", rosbag.IMU, 100.0 + 0.05 * k, _imu(100.0 + 0.05 * k, k)) for k in range(8)]
    msgs += [("/gps/fix", rosbag.NAVSATFIX, 100.02, _fix(100.02, *FIXES[0])),
             ("/gps/fix", rosbag.NAVSATFIX, 100.22, _fix(100.22, *FIXES[1])),
             ("/gps/fix", rosbag.NAVSATFIX, 100.31, _fix(100.31, 0.0, 0.0, status=-1))]  # fmt: skip
    msgs += [("/diagnostics_blob", "std_msgs/msg/String", 100.0, T["std_msgs/msg/String"](data="x"))]
    with Writer(path, version=9) as writer:
        conns = {}
        for topic, msgtype, t, msg in sorted(msgs, key=lambda m: m[2]):
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=rosbag.TYPESTORE)
            writer.write(conns[topic], int(t * 1e9), rosbag.TYPESTORE.serialize_cdr(msg, msgtype))
    return path


def test_topics_map_by_message_type():
    conns = {"/a/points": rosbag.POINTCLOUD2, "/radar_front": rosbag.POINTCLOUD2, "/cam": rosbag.IMAGE,
             "/thermal/img": rosbag.COMPRESSED, "/imu": rosbag.IMU, "/fix": rosbag.NAVSATFIX, "/x": "std_msgs/msg/String"}  # fmt: skip
    assert rosbag.map_topics(conns) == {"lidar": "/a/points", "radar": "/radar_front", "rgb": "/cam",
                                        "ir": "/thermal/img", "imu": "/imu", "gps": "/fix"}  # fmt: skip
    assert rosbag.map_topics(conns, {"lidar": "/radar_front"})["lidar"] == "/radar_front"
    with pytest.raises(cmht.CMHTFormatError, match="/cam"):
        rosbag.map_topics(conns, {"lidar": "/cam"})


def test_bag_reads_into_streams(bag):
    report = cmht.Report()
    seq = rosbag.RosbagSequence(bag, {"ir": "/ir/image_raw"}, report=report)
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
    compressed = rosbag.RosbagSequence(bag, report=cmht.Report())  # default: the first ir topic by name
    assert compressed.topics["ir"] == "/ir/image_raw"
    other = rosbag.RosbagSequence(bag, {"ir": "/ir/image_raw/compressed"})
    np.testing.assert_array_equal(other.read("ir", 0), IR[0])


def test_bag_gps_imu_holds_fixes(bag):
    report = cmht.Report()
    seq = rosbag.RosbagSequence(bag, on_error="skip", report=report)
    g = seq.gps_imu()
    # IMU at 100.00 .. 100.35 every 0.05 s; fixes at 100.02, 100.22 and a no-fix status at 100.31
    assert g.valid.tolist() == [False, True, True, True, True, True, True, False]
    assert g.fix_changed.tolist() == [False, True, False, False, False, True, False, False]
    assert report.skipped["gps_imu"] == 2
    np.testing.assert_allclose(g.lat[1:5], FIXES[0][0])
    np.testing.assert_allclose(g.lat[5:7], FIXES[1][0])
    assert g.enu[5, 1] == pytest.approx(111.1, abs=0.5) and abs(g.enu[5, 0]) < 1e-6
    np.testing.assert_allclose(g.gyro[3], [0.3, 0.0, -0.2])
    np.testing.assert_allclose(g.accel[3], [0, 0.5, 9.8])
    with pytest.raises(cmht.CMHTFormatError, match="GPS fix"):
        rosbag.RosbagSequence(bag).gps_imu()


def test_bad_topic_override_names_the_bag(bag):
    with pytest.raises(cmht.CMHTFormatError, match=f"{bag}.*'/imu/data' for lidar"):
        rosbag.RosbagSequence(bag, {"lidar": "/imu/data"})


def test_unreadable_bag(tmp_path):
    (tmp_path / "nobag").mkdir()
    with pytest.raises(cmht.CMHTFormatError, match="nobag"):
        rosbag.RosbagSequence(tmp_path / "nobag")
