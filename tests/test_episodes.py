"""Episode schema, path safety, the validate CLI and the Grain sources, on hand-written episodes and PNGs."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from src.config import ModalityConfig
from src.data import images, loader
from src.data.episodes import schema, sources
from src.envs import recorder
from src.pretraining import data as pretrain_data
from src.pretraining import step as pretrain_step
from src.rl import envs as rl_envs
from src.rl import trainer

MODALITIES = {
    "rgb": ModalityConfig(shape=(8, 8, 3)),
    "gps": ModalityConfig(shape=(5,)),
    "imu": ModalityConfig((6,)),
}
CAMS = ("front", "left")
# Frames with a dropped image: (episode, camera) -> frame indices without an image.
DROPPED = {(0, "left"): (1, 3), (1, "front"): (2,)}


def _colour(e: int, cam: str, t: int) -> np.ndarray:
    """A constant 8x8 frame whose colour encodes (episode, camera, frame)."""
    return np.full((8, 8, 3), (40 * e + 10, 100 if cam == "front" else 200, 20 * t), np.uint8)


def _write_set(root: Path, lengths=(5, 4)) -> Path:
    for e, length in enumerate(lengths):
        d = root / f"ep{e}"
        frames = []
        for t in range(length):
            images = {}
            for cam in CAMS:
                if t in DROPPED.get((e, cam), ()):
                    continue
                rel = f"{cam}/{t:04d}.png"
                (d / cam).mkdir(parents=True, exist_ok=True)
                Image.fromarray(_colour(e, cam, t)).save(d / rel)
                images[cam] = {"image_path": rel}
            ego = {"pose": [float(t), 2.0 * e, 0.1 * t], "velocity": [3.0, 4.0, 0.5]}
            if t % 2 == 0:
                ego["acceleration"] = [1.0, -1.0, 0.0]
            frames.append({"timestamp": 0.1 * t, "images": images, "ego": ego, "action": [0.5, -0.1]})
        doc = {"episode_id": f"ep{e}", "source": "test", "cameras": list(CAMS), "frames": frames}
        (d / "episode.json").write_text(json.dumps(doc))
    return root


@pytest.fixture()
def dataset(tmp_path) -> Path:
    return _write_set(tmp_path / "set")


def _edit(path: Path, fn) -> None:
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def test_valid_set_and_frame_counts(dataset):
    report = schema.validate_dir(dataset)
    assert report.ok, report.problems
    assert (report.episodes, report.frames) == (2, 9)
    assert report.frames_by_camera == {"front": 5 + 3, "left": 3 + 4}


def test_schema_error_names_file_and_json_path(dataset):
    bad = dataset / "ep1" / "episode.json"
    _edit(bad, lambda d: d["frames"][3]["ego"].update(pose=[1.0, 2.0]))
    with pytest.raises(schema.EpisodeError) as err:
        sources.load_episode(bad, dataset)
    (problem,) = err.value.problems
    assert problem.file == str(bad) and problem.json_path == "$.frames[3].ego.pose"
    assert str(bad) in str(err.value) and "$.frames[3].ego.pose" in str(err.value)


def test_validate_cli_reports_every_problem(dataset, capsys):
    _edit(dataset / "ep0" / "episode.json", lambda d: d["frames"][0].pop("action"))
    _edit(
        dataset / "ep1" / "episode.json",
        lambda d: d["frames"][1]["images"].update(rear={"image_path": "x.png"}),
    )
    _edit(dataset / "ep1" / "episode.json", lambda d: d["frames"][2].update(timestamp=0.05))
    assert schema.main(["validate", str(dataset), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    found = {(Path(p["file"]).parent.name, p["json_path"]) for p in out["problems"]}
    assert found == {
        ("ep0", "$.frames[0]"),
        ("ep1", "$.frames[1].images.rear"),
        ("ep1", "$.frames[2].timestamp"),
    }
    assert out["ok"] is False and out["frames_by_camera"]["front"] == 8


def test_escaping_image_paths_are_rejected(dataset, tmp_path):
    outside = tmp_path / "outside.png"
    Image.fromarray(_colour(0, "front", 0)).save(outside)
    os.symlink(outside, dataset / "ep0" / "front" / "link.png")
    ep = dataset / "ep0" / "episode.json"
    for rel, reason in [
        ("../../outside.png", "escapes"),
        (str(outside), "absolute"),
        ("front/link.png", "escapes"),
    ]:
        _edit(ep, lambda d, rel=rel: d["frames"][0]["images"]["front"].update(image_path=rel))
        with pytest.raises(schema.EpisodeError) as err:
            sources.load_episode(ep, dataset)
        assert err.value.problems[0].json_path == "$.frames[0].images.front.image_path"
        assert reason in err.value.problems[0].reason
    # `..` that stays inside the root is an ordinary relative path.
    _edit(ep, lambda d: d["frames"][0]["images"]["front"].update(image_path="../ep1/front/0000.png"))
    assert sources.load_episode(ep, dataset).image_paths["front"][0] == (dataset / "ep1/front/0000.png").resolve()


def test_frame_source_images_masks_and_ego(dataset):
    eps, skipped = sources.load_episodes(dataset)
    assert not skipped
    src = sources.EpisodeFrameSource(eps, CAMS, MODALITIES)
    assert len(src) == 9
    s = src[5 + 2]  # episode 1, frame 2: front dropped
    assert (int(s["episode"]), int(s["frame"])) == (1, 2)
    assert not s["image_valid_by_cam"]["front"] and s["image_valid_by_cam"]["left"]
    assert np.all(s["images_by_cam"]["front"] == 0) and not s["valid"]["rgb"] and np.all(s["rgb"] == 0)
    expected_left = images.normalize_image(_colour(1, "left", 2))
    np.testing.assert_allclose(s["images_by_cam"]["left"], expected_left, atol=1e-6)
    # relative to the episode's first pose (0, 2): (2, 0) / 100 m; cos, sin of yaw 0.2; |(3, 4)| / 10 m/s
    np.testing.assert_allclose(s["gps"], [0.02, 0.0, np.cos(0.2), np.sin(0.2), 0.5], atol=1e-6)
    np.testing.assert_allclose(s["imu"], [0, 0, -0.5, 1.0, -1.0, 0.0])  # FRD: a left (CCW) yaw rate is -z
    assert s["valid"]["imu"] and not src[5 + 1]["valid"]["imu"]  # odd frames have no acceleration
    s0 = src[0]
    np.testing.assert_allclose(s0["rgb"], images.normalize_image(_colour(0, "front", 0)), atol=1e-6)


def test_temporal_pairs_never_cross_episodes(dataset):
    eps, _ = sources.load_episodes(dataset)
    pairs = sources.TemporalPairSource(sources.EpisodeFrameSource(eps, CAMS, MODALITIES), dt_range=(1, 3), seed=1)
    assert len(pairs) == (5 - 1) + (4 - 1)
    dts = []
    for i in range(4 * len(pairs)):  # several epochs: the dt stream differs per global index
        p = pairs[i]
        assert int(p["episode"]) == int(p["t1"]["episode"])
        dt = int(p["t1"]["frame"]) - int(p["frame"])
        assert dt == int(p["dt"]) and 1 <= dt <= 3
        assert int(p["t1"]["frame"]) < len(eps[int(p["episode"])])
        dts.append(dt)
    assert set(dts) == {1, 2, 3}
    fixed = sources.TemporalPairSource(pairs.frames, dt_range=(2, 2))
    assert len(fixed) == 3 + 2 and all(int(fixed[i]["dt"]) == 2 for i in range(len(fixed)))


def test_pipeline_batches_stack_images_and_masks(dataset):
    eps, _ = sources.load_episodes(dataset)
    frames = sources.EpisodeFrameSource(eps, CAMS, MODALITIES, rgb_camera="left")
    it = iter(loader.to_iter(sources.build_dataset(frames, batch_size=9, shuffle=False, num_epochs=1)))
    batch = next(it)
    assert batch["images_by_cam"]["front"].shape == (9, 8, 8, 3) and batch["rgb"].shape == (9, 8, 8, 3)
    np.testing.assert_array_equal(batch["image_valid_by_cam"]["left"], [1, 0, 1, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(batch["valid"]["rgb"], batch["image_valid_by_cam"]["left"])
    pairs = sources.TemporalPairSource(frames, dt_range=(1, 2))
    pb = next(iter(loader.to_iter(sources.build_dataset(pairs, batch_size=4, seed=3))))
    assert pb["images_by_cam"]["left"].shape == (4, 8, 8, 3) and pb["dt"].shape == (4,)
    np.testing.assert_array_equal(pb["episode"], pb["t1"]["episode"])


def test_episode_batches_refuse_a_shard_outside_the_count(dataset):
    frames = sources.EpisodeFrameSource(sources.load_episodes(dataset)[0], CAMS, MODALITIES)
    with pytest.raises(ValueError, match="shard_index=2"):
        sources.build_dataset(frames, batch_size=2, shard_index=2, shard_count=2)


def test_recorder_needs_a_driver_loader_for_a_checkpoint_and_its_track(tmp_path):
    """A checkpoint without a loader, or a loaded driver from another track, is refused before any simulation."""
    with pytest.raises(ValueError, match="driver loader"):
        recorder.record_episodes(tmp_path / "rec", recorder.RecordSpec(checkpoint="runs/race"))
    other = recorder.Driver(policy=lambda obs: np.zeros(2, np.float32), settings={}, track="oval")
    with pytest.raises(ValueError, match="runs/race: the run drove track 'oval', not 'default'"):
        recorder.record_episodes(tmp_path / "rec", recorder.RecordSpec(checkpoint="runs/race"), lambda run: other)
    assert not (tmp_path / "rec").exists()


def test_recorder_writes_episodes_that_validate(tmp_path):
    spec = recorder.RecordSpec(episodes=2, frames=6, size=(16, 16), drop_prob=0.3, seed=3, frame_every=1)
    paths = recorder.record_episodes(tmp_path / "rec", spec)
    assert [p.parent.name for p in paths] == ["ep_000", "ep_001"]
    report = schema.validate_dir(tmp_path / "rec")
    assert report.ok, report.problems
    assert report.frames == 12 and set(report.frames_by_camera) == set(recorder.DEFAULT_CAMERAS)
    for cam, n in report.frames_by_camera.items():
        assert n == len(list((tmp_path / "rec").glob(f"ep_*/{cam}/*.png")))
    assert (
        sum(report.frames_by_camera.values()) < 36
    )  # with drop_prob 0.3 some of the 36 camera frames are gone
    eps, _ = sources.load_episodes(tmp_path / "rec")
    np.testing.assert_allclose(np.diff(eps[0].timestamps), 0.04, rtol=1e-4)  # control_dt = 0.01 s * 4
    assert eps[0].imu_valid.all() and (eps[0].velocity[1:, 0] > 0).all()  # the driver moves forward
    # The three cameras look in different directions: their images differ where all three exist.
    t = next(i for i in range(6) if all(eps[0].image_paths[c][i] for c in recorder.DEFAULT_CAMERAS))
    views = [np.asarray(Image.open(eps[0].image_paths[c][t])) for c in recorder.DEFAULT_CAMERAS]
    assert views[0].shape == (16, 16, 3) and views[0].std() > 0
    assert not np.array_equal(views[0], views[1]) and not np.array_equal(views[1], views[2])


def test_pretrainer_reads_episode_pairs_and_resumes(dataset):
    from src import config
    from src.config import PretrainConfig

    cfg = config.replace(
        PretrainConfig(),
        data={"source": "episodes", "root": str(dataset), "episode_cameras": CAMS, "episode_dt": (1, 2)},
        model={"modalities": MODALITIES},
    )
    it = pretrain_data.build_data(cfg, batch_size=4, shard_index=0, shard_count=1)
    state = it.get_state()
    batch = pretrain_step.model_inputs(next(it), ("rgb", "gps", "imu"))
    assert set(batch) == {"rgb", "gps", "imu", "valid", "images_by_cam", "image_valid_by_cam", "t1"}
    assert batch["t1"]["images_by_cam"]["left"].shape == (4, 8, 8, 3) and batch["t1"]["valid"][
        "rgb"
    ].shape == (4,)
    it.set_state(state)  # a resumed run sees the same batch again
    again = pretrain_step.model_inputs(next(it), ("rgb", "gps", "imu"))
    np.testing.assert_array_equal(
        again["t1"]["images_by_cam"]["front"], batch["t1"]["images_by_cam"]["front"]
    )
    missing = config.replace(cfg, data={"root": str(dataset / "nope")})
    with pytest.raises(FileNotFoundError, match="record_if_missing"):
        pretrain_data.build_data(missing, batch_size=4, shard_index=0, shard_count=1)


def test_recorder_drives_with_a_ppo_checkpoint(tmp_path):
    """A one-iteration racing run drives the recorder: the recorded first action is the policy mean for the
    first observation (noise 0), and a run directory without a checkpoint is refused by name."""
    import jax

    from src import config
    from src.config import RLConfig
    from src.envs.racecar import env as racecar
    from src.envs.racecar.params import make_params
    from src.training import record_episodes
    from tests.test_rl_agent import TINY_MODEL

    cfg = config.from_dict(
        RLConfig,
        {
            "run": {"name": "race", "out_dir": str(tmp_path)},
            "model": config.to_dict(TINY_MODEL),
            "env": {"kind": "jax_racecar", "num_envs": 2, "lidar_rays": 32, "time_limit": 2.0},
            "ppo": {"total_env_steps": 8, "num_steps": 4, "num_minibatches": 2, "update_epochs": 1},
            "eval": {"every": 0},
        },
    )
    result = trainer.train(cfg, progress=False)
    run = result.run_dir
    spec = recorder.RecordSpec(
        episodes=1, frames=3, size=(8, 8), drop_prob=0.0, frame_every=1, noise=(0.0, 0.0), checkpoint=str(run)
    )
    record_episodes.record_episodes(tmp_path / "rec", spec)
    report = schema.validate_dir(tmp_path / "rec")
    assert report.ok and report.frames == 3, report.problems
    (ep,) = sources.load_episodes(tmp_path / "rec")[0]
    # The recorder's first observation, rebuilt from its seed in the run's env (its pose is the recorded one),
    # and the trained (not restored) policy's mean for it.
    params = make_params(
        "default", **{**rl_envs.env_settings(cfg), "reset_mode": "random", "pose_noise": 0.0}
    )
    k_reset = jax.random.split(jax.random.split(jax.random.key(spec.seed), 1)[0], 3)[0]
    obs, _ = jax.jit(lambda k: racecar.reset(k, params))(k_reset)
    np.testing.assert_allclose(ep.pose[0], np.asarray(obs["pose"])[[0, 1, 5]], atol=1e-5)
    contract = jax.jit(jax.vmap(rl_envs.contract_obs_fn(cfg, params)))(jax.tree.map(lambda x: x[None], obs))
    expected = np.asarray(jax.jit(result.learner.act_deterministic)(result.state, contract))[0]
    np.testing.assert_allclose(ep.action[0], expected, atol=1e-5)
    assert np.all(np.abs(ep.action) <= 1.0) and np.abs(ep.action).max() > 0
    (run / "ckpt").rename(run / "gone")
    with pytest.raises(FileNotFoundError, match="ckpt"):
        record_episodes.record_episodes(tmp_path / "rec2", spec)
    with pytest.raises(FileNotFoundError, match="nope"):
        record_episodes.record_episodes(tmp_path / "rec3", recorder.RecordSpec(checkpoint=str(tmp_path / "nope")))
