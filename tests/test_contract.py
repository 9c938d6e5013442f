"""The sensor contract (src/contract.py): one BEV grid, GPS and IMU for CMHT data and both simulators, carried
with exported encoders; imported encoders' inputs never re-normalised; runs that record their encoder."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from src import config, contract
from src.config import BevConfig, DataConfig, ModalityConfig, ModelConfig, RLConfig
from src.data.cmht import dataset
from src.data.pcd import write_pcd
from src.envs import observations
from src.envs.bullet.sim import RacecarSim, SimConfig
from src.envs.racecar import env as racecar
from src.envs.racecar.params import make_params
from src.envs.tracks.geometry import Track
from src.envs.tracks.registry import get_track
from src.infra import run_dir
from src.infra.checkpoint import Checkpointer, check_encoder_fits, check_encoder_record, export_encoder
from src.models.actor_critic import RaceformerAgent
from src.rl import envs as rl_envs
from src.rl import normalize, train_jax, trainer
from src.transfer import config as transfer_config
from tests.test_ppo import point_env

# A pretraining BEV that is neither the default extent nor 64x64: it must reach the simulator as it is.
BEV = BevConfig(x_range=(-9.6, 9.6), y_range=(-8.0, 8.0), z_range=(-1.0, 1.0), intensity_max=255.0)
LIDAR = (48, 40, 4)
RAYS = 360


@pytest.fixture(scope="module")
def scene():
    """The JAX env at the start line of the default track, noise-free: its observation and params."""
    params = make_params("default", lidar_rays=RAYS, lidar_accuracy=0.0, pose_noise=0.0)
    obs, state = jax.jit(lambda k: racecar.reset(k, params))(jax.random.key(0))
    return jax.tree.map(np.asarray, obs), state, params


def _sim_bev(obs: dict, params, bev: BevConfig, shape=LIDAR) -> np.ndarray:
    spec = observations.ScanSpec(params.lidar_rays, params.lidar_fov, params.lidar_range)
    sample, _ = observations.contract_obs_jax(obs, {"lidar": shape}, bev, spec)
    return np.asarray(sample["lidar"])


def _wall_points(params, state) -> dict[str, np.ndarray]:
    """The track's walls as a LiDAR at the car's sensor sees them, intersected exactly in float64 (no
    simulator code): points in the LiDAR frame, in the scan plane, with the contract's wall intensity."""
    walls = get_track("default").walls()
    yaw = float(state.yaw)
    rear = np.array([float(state.x), float(state.y)]) - params.lr * np.array([np.cos(yaw), np.sin(yaw)])
    origin = rear + params.lidar_offset * np.array([np.cos(yaw), np.sin(yaw)])
    beams = np.linspace(-params.lidar_fov / 2, params.lidar_fov / 2, params.lidar_rays)
    d = np.stack([np.cos(yaw + beams), np.sin(yaw + beams)], 1)  # [R, 2]
    a, e = walls[None, :, :2] - origin, walls[None, :, 2:] - walls[None, :, :2]  # [1, M, 2]
    denom = d[:, None, 0] * e[..., 1] - d[:, None, 1] * e[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (a[..., 0] * e[..., 1] - a[..., 1] * e[..., 0]) / denom
        u = (a[..., 0] * d[:, None, 1] - a[..., 1] * d[:, None, 0]) / denom
    t = np.where((t > 0) & (u >= 0) & (u <= 1), t, np.inf).min(1)
    hit = t < params.lidar_range - 1e-3
    r = np.maximum(t[hit], params.lidar_min_range)
    n = int(hit.sum())
    return {
        "x": (r * np.cos(beams[hit])).astype(np.float32),
        "y": (r * np.sin(beams[hit])).astype(np.float32),
        "z": np.zeros(n, np.float32),
        "intensity": np.full(n, contract.SIM_WALL_INTENSITY, np.float32),
    }


def test_cmht_path_and_simulator_path_rasterise_the_same_walls(scene, tmp_path):
    obs, state, params = scene
    path = write_pcd(tmp_path / "00000000.pcd", _wall_points(params, state))
    decoder = dataset.DecodeSample({"lidar": LIDAR}, DataConfig(), BEV)
    cmht_bev = decoder.read("lidar", str(path))  # the pretraining path: PCD reader + the pipeline's BEV
    sim_bev = _sim_bev(obs, params, BEV)
    assert cmht_bev.shape == sim_bev.shape == LIDAR
    assert cmht_bev[..., 0].sum() > 40  # the walls around the start line
    np.testing.assert_array_equal(sim_bev[..., [0, 1, 3]], cmht_bev[..., [0, 1, 3]])  # the same cells and counts
    np.testing.assert_allclose(sim_bev[..., 2], cmht_bev[..., 2], rtol=1e-6)  # float32 vs float64 rounding
    # the channels mean the same: wall returns in the scan plane (z = 0 in the LiDAR frame), real intensity
    occupied = cmht_bev[..., 0] > 0
    np.testing.assert_allclose(cmht_bev[occupied, 1], 0.5)  # (0 - z_min) / (z_max - z_min)
    np.testing.assert_allclose(cmht_bev[occupied, 2], contract.SIM_WALL_INTENSITY / 255.0, rtol=1e-6)


def test_pretraining_bev_settings_reach_the_simulator(scene):
    """The transfer experiment gives its pretraining runs and every variant one [model], so the pretraining
    [model.bev] shapes the simulator's BEV."""
    obs, _, params = scene
    base = config.load(transfer_config.TransferConfig, None, ["env.lidar_rays=360"])
    pre = dataclasses.replace(ModelConfig(), modalities={"lidar": ModalityConfig(LIDAR)}, bev=BEV)
    bevs = []
    for x_range in (BEV.x_range, (-4.8, 14.4)):  # change one setting
        model = dataclasses.replace(pre, bev=dataclasses.replace(BEV, x_range=x_range))
        experiment = config.replace(base, model=model)
        assert transfer_config.pretrain_config(experiment, "cmht").model.bev == model.bev
        cfg = transfer_config.rl_config(experiment, "frozen", "", True)
        got = np.asarray(jax.jit(rl_envs.contract_obs_fn(cfg, params))(obs)["lidar"])
        assert got.shape == LIDAR
        np.testing.assert_array_equal(got, _sim_bev(obs, params, model.bev))
        bevs.append(got)
    assert not np.array_equal(bevs[0], bevs[1])


# --------------------------------------------------------------------------------------------- IMU


def _circle_fit(x: np.ndarray, y: np.ndarray) -> float:
    """Radius of the least-squares circle through the points (Kasa's algebraic fit)."""
    a = np.stack([x, y, np.ones_like(x)], 1)
    c = np.linalg.lstsq(a, x**2 + y**2, rcond=None)[0]
    return float(np.sqrt(c[2] + (c[0] / 2) ** 2 + (c[1] / 2) ** 2))


def test_jax_env_imu_in_a_steady_circle():
    """Constant throttle and left steering on an open ring: lateral specific force v^2 / r (to the left, so -y
    in the contract's forward-right-down frame), 1 g on z with CMHT's sign, a counter-clockwise yaw rate -z."""
    a = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    ring = Track("ring", np.stack([12 * np.cos(a), 12 * np.sin(a)], 1), np.full(64, 5.0), np.full(64, 5.0))
    params = make_params(ring, lidar_rays=8, pose_noise=0.0, time_limit=100.0, grid_resolution=0.1)

    @jax.jit
    def drive(key):
        obs, state = racecar.reset(key, params)

        def body(carry, k):
            obs, state, *_ = racecar.step(k, carry[1], jnp.array([0.5, 0.5]), params)
            return (obs, state), (state.x, state.y, jnp.hypot(state.vx, state.vy), state.omega, obs["imu"])

        return jax.lax.scan(body, (obs, state), jax.random.split(key, 250))[1]

    x, y, speed, omega, imu = (np.asarray(v)[100:] for v in drive(jax.random.key(0)))  # after 4 s
    v, r = speed.mean(), _circle_fit(x, y)
    assert speed.std() < 1e-3 * v and 1.0 < r < 3.0
    assert -imu[:, 4].mean() == pytest.approx(v**2 / r, rel=0.05)
    assert imu[:, 5].mean() == pytest.approx(-contract.GRAVITY, rel=1e-4)
    np.testing.assert_allclose(imu[:, 2], -omega, rtol=1e-6)
    assert np.abs(imu[:, 3]).mean() < 0.05 * v**2 / r  # no longitudinal acceleration at constant speed
    obs0, _ = racecar.reset(jax.random.key(1), params)
    np.testing.assert_allclose(obs0["imu"], [0, 0, 0, 0, 0, -contract.GRAVITY], atol=1e-6)  # at rest


def test_bullet_imu_in_a_steady_circle():
    walls = np.array([[-30, -30, 30, -30], [30, -30, 30, 30], [30, 30, -30, 30], [-30, 30, -30, -30]], float)
    car = RacecarSim(walls, SimConfig(lidar_rays=8))
    try:
        np.testing.assert_allclose(car.imu, [0, 0, 0, 0, 0, -contract.GRAVITY])
        car.set_pose(0.0, 0.0, 0.0)
        com, vel, imu = [], [], []
        for _ in range(400):
            car.step(0.01, 0.3)
            com.append(car.client.getBasePositionAndOrientation(car.car)[0])
            vel.append(car.client.getBaseVelocity(car.car)[0])
            imu.append(car.imu.copy())
    finally:
        car.close()
    com, vel, imu = (np.asarray(v)[250:] for v in (com, vel, imu))  # the last 6 s
    speed = np.hypot(vel[:, 0], vel[:, 1])
    v, r = speed.mean(), _circle_fit(com[:, 0], com[:, 1])
    assert speed.std() < 0.05 * v and 1.0 < r < 5.0
    assert -imu[:, 4].mean() == pytest.approx(v**2 / r, rel=0.05)
    assert imu[:, 5].mean() == pytest.approx(-contract.GRAVITY, rel=0.01)
    assert imu[:, 2].mean() == pytest.approx(-v / r, rel=0.05)  # counter-clockwise: -z in FRD


# --------------------------------------------------------------------------------------------- exports and runs

TINY = ModelConfig(
    embed_dim=16,
    depth=1,
    num_heads=2,
    patch_size=8,
    fusion_depth=1,
    decoder_dim=16,
    decoder_heads=2,
    projection_dim=16,
    modalities={"lidar": ModalityConfig(LIDAR), "gps": ModalityConfig((5,)), "imu": ModalityConfig((6,))},
    bev=BEV,
)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """An exported encoder of TINY (random weights)."""
    return export_encoder(RaceformerAgent(TINY, rngs=nnx.Rngs(0)).model, tmp_path_factory.mktemp("enc"), TINY)


def test_encoder_that_does_not_fit_names_each_mismatch(encoder, tmp_path):
    a = encoder
    assert (a / contract.CONTRACT_TOML).is_file()
    check_encoder_fits(a, dataclasses.replace(TINY, action_dim=3))  # head settings are the run's own
    other = dataclasses.replace(
        TINY,
        bev=dataclasses.replace(BEV, x_range=(-51.2, 51.2), intensity_max=1.0),
        modalities={**TINY.modalities, "lidar": ModalityConfig((64, 64, 4))},
    )
    with pytest.raises(contract.ContractError) as err:
        check_encoder_fits(a, other)
    message = str(err.value)
    for key in ("model.bev.x_range", "model.bev.intensity_max", "model.modalities.lidar.shape"):
        assert key in message, key
    assert "3 mismatch" in message and str(a) in message
    changed = tmp_path / "changed"
    changed.mkdir()
    for f in a.iterdir():
        (changed / f.name).write_bytes(f.read_bytes())
    text = (changed / contract.CONTRACT_TOML).read_text()
    (changed / contract.CONTRACT_TOML).write_text(text.replace("gps_position_scale = 100.0", "gps_position_scale = 1"))
    with pytest.raises(contract.ContractError, match="contract.gps_position_scale: encoder 1, this run 100.0"):
        check_encoder_fits(changed, TINY)
    (changed / contract.CONTRACT_TOML).unlink()
    with pytest.raises(contract.ContractError, match="contract.toml: missing"):
        check_encoder_fits(changed, TINY)


def _finetune_cfg(tmp_path, pretrained, name="ft", **ppo_extra) -> RLConfig:
    return config.from_dict(
        RLConfig,
        {
            "run": {"name": name, "out_dir": str(tmp_path)},
            "model": config.to_dict(TINY),
            "env": {"num_envs": 4},
            "ppo": {"total_env_steps": 32, "num_steps": 8, "num_minibatches": 2, "norm_obs": True, **ppo_extra},
            "finetune": {"pretrained_ckpt": str(pretrained) if pretrained else ""},
            "eval": {"every": 0},
        },
    )


def test_imported_encoder_receives_its_pretraining_inputs(scene, encoder, tmp_path):
    """The same scene as a PCD through the pretraining pipeline and as the simulator observation through PPO's
    observation normaliser (with non-trivial running statistics): the encoder receives the same arrays."""
    obs, state, params = scene
    a = encoder
    path = write_pcd(tmp_path / "00000000.pcd", _wall_points(params, state))
    pretrain_lidar = dataset.DecodeSample({"lidar": LIDAR}, DataConfig(), BEV).read("lidar", str(path))

    cfg = _finetune_cfg(tmp_path, a)
    spec = observations.ScanSpec(params.lidar_rays, params.lidar_fov, params.lidar_range)
    sample, valid = observations.contract_obs(obs, cfg.model.modalities, cfg.model.bev, spec)
    sample.pop("timestamp")
    agent_obs = {**sample, "valid": valid}
    env = rl_envs.TrainingEnv(2, agent_obs, None, None)

    def received(cfg: RLConfig) -> dict:
        s = trainer.setup(cfg, env)
        state = s.learner.init_state(s.params, agent_obs, jax.random.PRNGKey(0))
        rng = np.random.default_rng(0)

        def two(x: np.ndarray) -> np.ndarray:  # the sample and a perturbed copy: non-trivial statistics
            return np.stack([x, x if x.dtype == bool else x + rng.normal(size=x.shape).astype(x.dtype)])

        state = state._replace(obs_rms=normalize.rms_update(state.obs_rms, jax.tree.map(two, agent_obs)))
        return jax.tree.map(np.asarray, s.learner.normalize_obs(state, agent_obs))

    fine = received(cfg)
    np.testing.assert_array_equal(fine["lidar"], pretrain_lidar)
    for m in ("gps", "imu"):
        np.testing.assert_array_equal(fine[m], agent_obs[m])
    # from scratch the same switch z-scores the vector inputs (and only those)
    scratch = received(_finetune_cfg(tmp_path, None))
    np.testing.assert_array_equal(scratch["lidar"], pretrain_lidar)
    assert not np.allclose(scratch["gps"], agent_obs["gps"])


def _gps_point_env() -> rl_envs.TrainingEnv:
    """A 1-D point env seen through a gps-only contract observation (cheap to compile)."""

    def obs_fn(o):
        return {"gps": jnp.concatenate([o, jnp.zeros(4)]), "valid": {"gps": jnp.bool_(True)}}

    env = point_env()._replace(obs_fn=obs_fn)
    example = {"gps": jnp.zeros(5), "valid": {"gps": jnp.bool_(True)}}
    return rl_envs.TrainingEnv(2, example, lambda learner: train_jax.JaxEngine(learner, env, 4), None)


def test_resuming_on_another_encoder_is_an_error(tmp_path):
    """The issue's case: the pretraining run is redone and re-exports to the same path, so the fine-tuning config
    is unchanged; resuming would overwrite the new encoder with the old checkpoint's. Importing from another path
    (or none) changes the config, which the run directory refuses to resume too."""
    model = dataclasses.replace(TINY, modalities={"gps": ModalityConfig((5,))})
    gps_a = export_encoder(RaceformerAgent(model, rngs=nnx.Rngs(0)).model, tmp_path / "gps_a", model)
    gps_b = export_encoder(RaceformerAgent(model, rngs=nnx.Rngs(1)).model, tmp_path / "gps_b", model)
    cfg = dataclasses.replace(_finetune_cfg(tmp_path, gps_a, "variant"), model=model)
    out = run_dir.run_path(cfg)
    record = check_encoder_record(out, gps_a, resuming=False)
    assert json.loads((out / "encoder.json").read_text()) == record and len(record["sha256"]) == 64
    assert check_encoder_record(out, gps_a, resuming=True) == record  # the same encoder resumes
    ckpt = Checkpointer(out / "ckpt", save_every=1, keep=1)  # a checkpoint trained on encoder a
    ckpt.save(1, {"x": jnp.zeros(2)}, force=True)
    ckpt.close()
    config.save(cfg, out / "config.toml")
    for other in (gps_b, None):  # another path, or none (from scratch): the config differs
        moved = config.replace(cfg, finetune={"pretrained_ckpt": str(other) if other else ""})
        with pytest.raises(config.ConfigError, match=r"finetune\.pretrained_ckpt[\s\S]*run\.resume=false"):
            trainer.train(moved, env=_gps_point_env(), progress=False)
    shutil.rmtree(gps_a)  # re-exported to the same path: same config, other weights
    shutil.copytree(gps_b, gps_a)
    with pytest.raises(contract.ContractError, match=r"run\.resume=false") as err:
        trainer.train(cfg, env=_gps_point_env(), progress=False)
    assert str(gps_a) in str(err.value)
    assert json.loads((out / "encoder.json").read_text()) == record  # nothing of the run was rewritten
    assert config.load(RLConfig, out / "config.toml") == cfg
