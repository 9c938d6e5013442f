"""The CMHT Grain source and pipeline on a small hand-written sequence in the real layout (src/data/cmht/dataset.py).

The fixture writes its own few-frame sequence (tiny clouds and images) so that every expectation is known: the
camera runs 3 ms behind the LiDAR, the IR camera misses one frame (that sweep has no IR within tolerance), and
the GPS fix moves north 1.85 m every third record.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import absl.flags
import numpy as np
import pytest
from PIL import Image

from src import contract
from src.config import DataConfig, ModalityConfig, ModelConfig
from src.data import errors, pcd, synthetic
from src.data.bev import radar_bev
from src.data.cmht import dataset, index, readers

absl.flags.FLAGS.mark_as_parsed()  # Grain's spawned workers read absl flags

SHAPES = {
    "lidar": (32, 32, 4),
    "rgb": (24, 32, 3),
    "ir": (16, 16, 1),
    "radar": (32, 32, 3),
    "gps": (5,),
    "imu": (6,),
}
MODEL = dataclasses.replace(ModelConfig(), modalities={k: ModalityConfig(v) for k, v in SHAPES.items()})
FRAMES = 12
IR_GAP = 6  # the IR camera has no frame near sweep 6


def write_sequence(seq: Path, frames: int = FRAMES) -> None:
    """A 10 Hz sequence in the SUSTechPOINTS layout with 500-point clouds, small images and GPS/IMU text."""
    rng = np.random.default_rng(0)
    dirs = {
        "lidar": seq / "lidar",
        "rgb": seq / "camera" / "front",
        "ir": seq / "camera" / "ir",
        "radar": seq / "radar" / "front_points",
        "gps": seq / "Gps_Imu" / "data",
    }
    for d in dirs.values():
        d.mkdir(parents=True)
    ms = {k: np.arange(frames) * 100 + (3 if k == "rgb" else 0) for k in dirs}
    ms["ir"] = np.delete(ms["ir"], IR_GAP)
    for i in range(frames):
        n = 500
        cloud = {k: rng.uniform(-30, 30, n).astype(np.float32) for k in ("x", "y")}
        cloud["z"] = rng.uniform(-2, 2, n).astype(np.float32)
        cloud["intensity"] = rng.uniform(0, 255, n).astype(np.float32)
        pcd.write_pcd(dirs["lidar"] / f"{i:08d}.pcd", cloud)
        radar = {k: rng.uniform(0, 40, 20).astype(np.float32) for k in ("x", "y", "z", "vx", "vy")}
        pcd.write_pcd(dirs["radar"] / f"{i:08d}.pcd", radar)
        Image.fromarray(rng.integers(0, 255, (72, 128, 3), dtype=np.uint8)).save(dirs["rgb"] / f"{i:08d}.jpg")
        if i != IR_GAP:
            ir = rng.integers(0, 65535, (51, 64), dtype=np.uint16)
            Image.fromarray(ir).save(dirs["ir"] / f"{i - (i > IR_GAP):08d}.png")
        record = [4313.7323 + 0.001 * (i // 3), -7956.3434, 0.1, 0.2, 0.3 + 0.01 * i, 0.0, 0.0, -1.0]
        (dirs["gps"] / f"{i:08d}.txt").write_text("\n".join(map(str, record)))
    for k, d in dirs.items():
        (d / "timestamp.txt").write_text("\n".join(str(int(t)) for t in ms[k]))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmht")
    write_sequence(out / "drive_test_clear_0" / "drive_test_1")
    return out


@pytest.fixture(scope="module")
def source(root):
    return dataset.build_cmht_source(DataConfig(root=str(root)), MODEL)


def _take(it, n):
    out = [next(it) for _ in range(n)]
    if hasattr(it, "close"):
        it.close()
    return out


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert set(x) == set(y)
        for k in SHAPES:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
            np.testing.assert_array_equal(x["valid"][k], y["valid"][k], err_msg=f"valid {k}")
        np.testing.assert_array_equal(x["timestamp"], y["timestamp"])


def test_source_samples_follow_contract_1(source):
    assert len(source) == FRAMES  # one sample per LiDAR sweep
    s = source[4]
    assert set(s) == set(SHAPES) | {"valid", "timestamp"}
    for k, shape in SHAPES.items():
        assert s[k].shape == shape and s[k].dtype == np.float32, k
        assert s["valid"][k], k
    assert isinstance(s["timestamp"], np.float64) and s["timestamp"] == pytest.approx(0.4)
    assert s["lidar"][..., 0].sum() > 0 and s["radar"][..., 0].sum() > 0
    # GPS: fixes change every third record (t = 0.3 and 0.6 s bracket t = 0.4 s); IMU as recorded at t = 0.4 s
    lat = readers.ddmm_to_degrees(np.array([4313.7323, 4313.7333, 4313.7343]))
    enu = readers.latlon_to_enu(
        lat, np.full(3, readers.ddmm_to_degrees(-7956.3434)), lat[0], float(readers.ddmm_to_degrees(-7956.3434))
    )
    step = enu[2, 1] - enu[1, 1]
    want = [0.0, (enu[1, 1] + step / 3) / 100.0, 0.0, 1.0, step / 0.3 / 10.0]  # north; contract scales
    np.testing.assert_allclose(s["gps"], want, atol=1e-5)
    np.testing.assert_allclose(s["imu"], [0.1, 0.2, 0.34, 0.0, 0.0, -9.80665], atol=1e-5)
    gap = source[IR_GAP]
    assert not gap["valid"]["ir"] and not gap["ir"].any() and gap["valid"]["rgb"]
    counts = source.valid_counts()
    assert counts == {
        "lidar": FRAMES,
        "rgb": FRAMES,
        "ir": FRAMES - 1,
        "radar": FRAMES,
        "gps": FRAMES,
        "imu": FRAMES,
    }


def test_radar_is_moved_into_the_lidar_frame_with_the_sequence_calibration(root, tmp_path):
    """With calib/radar/<name>.json the radar BEV is that of the points moved radar -> LiDAR; without it, of the
    points as stored (already in the LiDAR frame)."""
    seq = tmp_path / "calibrated"
    shutil.copytree(root / "drive_test_clear_0" / "drive_test_1", seq)
    (seq / "calib" / "radar").mkdir(parents=True)
    pose = {"translation": [2.0, -1.0, -0.5], "coordinatesOffset": [0, 0, 0], "rotation": [0.0, 0.0, 0.4]}
    (seq / "calib" / "radar" / "front_points.json").write_text(json.dumps(pose))
    calibrated = dataset.build_cmht_source(DataConfig(root=str(tmp_path)), MODEL)
    plain = dataset.build_cmht_source(DataConfig(root=str(root)), MODEL)
    points = pcd.read_pcd(seq / "radar" / "front_points" / "00000004.pcd")
    grid = contract.bev_grid(MODEL.bev, SHAPES["radar"])
    to_lidar = readers.radar_to_lidar(pose["rotation"], pose["translation"])
    np.testing.assert_array_equal(calibrated[4]["radar"], radar_bev(points, grid, to_lidar=to_lidar))
    np.testing.assert_array_equal(plain[4]["radar"], radar_bev(points, grid))
    assert not np.array_equal(calibrated[4]["radar"][..., 0], plain[4]["radar"][..., 0])


def test_batch_format(source):
    (batch,) = _take(dataset.build_pipeline(source, batch_size=4, seed=0, shard_index=0, shard_count=1), 1)
    assert set(batch) == set(SHAPES) | {"valid", "timestamp"}
    for k, shape in SHAPES.items():
        assert batch[k].shape == (4, *shape) and batch[k].dtype == np.float32
        assert batch["valid"][k].shape == (4,) and batch["valid"][k].dtype == np.bool_
    assert batch["timestamp"].dtype == np.float64 and batch["timestamp"].shape == (4,)


def test_workers_give_identical_batches(source):
    kw = dict(batch_size=4, seed=7, shard_index=0, shard_count=1)
    serial = _take(dataset.build_pipeline(source, num_workers=0, **kw), 4)
    parallel = _take(dataset.build_pipeline(source, num_workers=2, **kw), 4)
    _assert_batches_equal(serial, parallel)


def test_epochs_reshuffle_and_state_resumes_exactly(source):
    kw = dict(batch_size=4, seed=1, shard_index=0, shard_count=1)
    it = dataset.build_pipeline(source, **kw)
    first = [next(it) for _ in range(3)]  # 12 samples / 4 = one epoch
    state = it.get_state()
    rest = [next(it) for _ in range(4)]  # the second epoch and into the third
    epoch1 = np.concatenate([b["timestamp"] for b in first])
    epoch2 = np.concatenate([b["timestamp"] for b in rest[:3]])
    all_t = np.sort(source.records.tables[0].timestamps)
    np.testing.assert_array_equal(np.sort(epoch1), all_t)
    np.testing.assert_array_equal(np.sort(epoch2), all_t)
    assert not np.array_equal(epoch1, epoch2)  # reshuffled per epoch
    resumed = dataset.build_pipeline(source, **kw)
    resumed.set_state(state)
    _assert_batches_equal(rest, [next(resumed) for _ in range(4)])


def test_shards_partition_the_samples(source):
    def stamps(index, count):
        it = dataset.build_pipeline(
            source,
            batch_size=1,
            seed=0,
            shuffle=False,
            shard_index=index,
            shard_count=count,
            num_epochs=1,
            drop_remainder=False,
        )
        return [float(b["timestamp"][0]) for b in it]

    shards = [stamps(i, 3) for i in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    assert sorted(sum(shards, [])) == sorted(source.records.tables[0].timestamps.tolist())
    with pytest.raises(ValueError, match="shard_index"):
        dataset.build_pipeline(source, batch_size=1, seed=0, shard_index=3, shard_count=3)


def test_corrupt_record_skip_counts_and_raise_names_the_file(root, tmp_path):
    copy = tmp_path / "cmht"
    shutil.copytree(root, copy)
    src = dataset.build_cmht_source(DataConfig(root=str(copy), on_error="skip"), MODEL)
    rec = src.records[5]
    bad_lidar, bad_rgb = rec.files["lidar"], rec.files["rgb"]
    with open(bad_lidar, "wb") as f:
        f.write(b"# .PCD v0.7\nFIELDS x y\ngarbage\n")
    with open(bad_rgb, "wb") as f:
        f.write(b"not a jpeg at all")
    s = src[5]
    assert not s["valid"]["lidar"] and not s["lidar"].any()
    assert not s["valid"]["rgb"] and not s["rgb"].any()
    assert s["valid"]["imu"] == rec.valid["imu"]
    assert src.decoder.skipped == {"lidar": 1, "rgb": 1}
    assert src[4]["valid"]["lidar"]
    strict = dataset.build_cmht_source(DataConfig(root=str(copy), on_error="raise"), MODEL)
    with pytest.raises(errors.CMHTFormatError, match=str(bad_lidar).replace("\\", "\\\\")):
        strict[5]


def test_ensure_dataset(tmp_path):
    missing = DataConfig(root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        synthetic.ensure_dataset(missing)
    cfg = DataConfig(root=str(tmp_path / "made"), synthesize_if_missing=True, synthetic_frames=2)
    root = synthetic.ensure_dataset(cfg)
    assert root == tmp_path / "made"
    (seq,) = index.find_sequences(root)
    assert len(seq.streams["lidar"].files) == 2
    assert synthetic.ensure_dataset(cfg) == root  # present: left alone
