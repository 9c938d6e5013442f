"""racecar_gym-style -> Contract-1 adapter: values, shapes, masks, vector envs, io_callback host step, JAX twin."""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from src import contract
from src.config import BevConfig, ModalityConfig
from src.data.bev import lidar_bev
from src.envs.bullet.env import BulletRaceEnv
from src.envs.observations import ScanSpec, contract_obs, contract_obs_jax
from src.envs.racecar import env as racecar
from src.envs.racecar.params import make_params
from src.envs.wrappers import (
    ContractObsVectorWrapper,
    ContractObsWrapper,
    flatten_action,
    make_host_step,
    unflatten_action,
)

BEV = BevConfig(x_range=(-12.8, 12.8), y_range=(-12.8, 12.8), z_range=(-1.0, 1.0), intensity_max=255.0)
GRID = contract.bev_grid(BEV, (64, 64, 4))
MODALITIES = {
    "lidar": ModalityConfig(shape=(64, 64, 4)),
    "rgb": ModalityConfig(shape=(32, 32, 3)),
    "radar": ModalityConfig(shape=(64, 64, 3)),
    "ir": ModalityConfig(shape=(32, 32, 1)),
    "gps": ModalityConfig(shape=(5,)),
    "imu": ModalityConfig(shape=(6,)),
}
SPEC = ScanSpec()


def fake_obs(rng: np.random.Generator, lead: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    scan = rng.uniform(0.25, 15.0, lead + (1080,)).astype(np.float32)
    scan[rng.random(scan.shape) < 0.2] = 15.0  # no return
    return {
        "pose": rng.normal(size=lead + (6,)).astype(np.float32),
        "velocity": rng.normal(size=lead + (6,)).astype(np.float32),
        "acceleration": rng.normal(size=lead + (6,)).astype(np.float32),
        "lidar": scan,
        "origin": rng.normal(size=lead + (2,)).astype(np.float32),
        "time": rng.uniform(0, 10, lead + (1,)).astype(np.float32),
    }


def test_hand_computed_sample():
    spec = ScanSpec(rays=5, fov=np.pi, max_range=15.0)  # beams at -90, -45, 0, 45, 90 deg
    obs = {
        "pose": np.array([1.0, 2.0, 0.0, 0.0, 0.0, 0.5], np.float32),
        "velocity": np.array([3.0, 4.0, 0.0, 0.1, 0.2, 0.3], np.float32),
        "acceleration": np.array([1.5, -0.5, 9.0, 7.0, 7.0, 7.0], np.float32),
        "lidar": np.array([15.0, 15.0, 5.0, 15.0, 15.0], np.float32),  # only the forward beam returns, at 5 m
        "origin": np.array([0.5, 1.0], np.float32),
        "time": np.array([2.5], np.float32),
    }
    sample, valid = contract_obs(obs, MODALITIES, BEV, spec)
    # from the origin (0.5, 1) / 100 m, cos and sin of the yaw, speed |(3, 4)| / 10 m/s
    np.testing.assert_allclose(sample["gps"], [0.005, 0.01, np.cos(0.5), np.sin(0.5), 0.5], rtol=1e-6)
    # no `imu` reading: derived from yaw rate 0.3, v = (3, 4), dv/dt = (1.5, -0.5): specific force
    # (1.5 - 0.3 * 4, -0.5 + 0.3 * 3, g) forward-left-up, reported forward-right-down
    np.testing.assert_allclose(sample["imu"], [0.0, 0.0, -0.3, 0.3, -0.4, -contract.GRAVITY], rtol=1e-6)
    with_imu, _ = contract_obs({**obs, "imu": np.arange(6, dtype=np.float32)}, {"imu": (6,)}, BEV, spec)
    np.testing.assert_array_equal(with_imu["imu"], np.arange(6))  # an env's own reading is passed on
    bev = sample["lidar"]
    # point (5, 0, 0) in the LiDAR frame: row floor((12.8 - 5) / 0.4) = 19, column floor((12.8 - 0) / 0.4) = 32
    occupied = np.argwhere(bev[..., 0] > 0)
    np.testing.assert_array_equal(occupied, [[19, 32]])
    want = [1.0, (0.0 + 1.0) / 2.0, contract.SIM_WALL_INTENSITY / 255.0, np.log(2) / np.log(64)]
    np.testing.assert_allclose(bev[19, 32], want, rtol=1e-6)
    assert sample["timestamp"] == 2.5 and sample["timestamp"].dtype == np.float64
    assert {k: bool(v) for k, v in valid.items()} == {
        "lidar": True,
        "rgb": False,
        "radar": False,
        "ir": False,
        "gps": True,
        "imu": True,
    }
    for name in ("rgb", "radar", "ir"):
        assert sample[name].shape == MODALITIES[name].shape and not sample[name].any()
    with pytest.raises(contract.ContractError, match="gps"):
        contract_obs(obs, {"gps": (4,)}, BEV, spec)


def test_raw_scan_sequence():
    obs = fake_obs(np.random.default_rng(1))
    sample, valid = contract_obs(obs, {"lidar": (270, 1)}, BEV, SPEC)
    assert sample["lidar"].shape == (270, 1) and valid["lidar"]
    np.testing.assert_allclose(sample["lidar"][:, 0], obs["lidar"].reshape(270, 4).min(1) / 15.0)
    with pytest.raises(ValueError, match="lidar"):
        contract_obs(obs, {"lidar": (7, 1)}, BEV, SPEC)


def test_actions_flatten_and_back():
    vec = np.array([[0.5, -0.25], [1.0, 0.0]], np.float32)
    d = unflatten_action(vec)
    assert d["motor"].shape == (2, 1)
    np.testing.assert_array_equal(d["steering"][:, 0], [-0.25, 0.0])
    np.testing.assert_array_equal(flatten_action(d), vec)
    np.testing.assert_array_equal(
        flatten_action({"motor": np.array([0.3]), "steering": np.array([0.1])}),
        np.array([0.3, 0.1], np.float32),
    )
    with pytest.raises(ValueError, match="steering"):
        flatten_action({"motor": np.array([0.3])})


@pytest.fixture(scope="module")
def bev_jit():
    return jax.jit(lambda pts, mask: lidar_bev(pts, GRID, keep=mask, xp=jnp))


def test_jax_bev_equals_numpy_on_points(bev_jit):
    rng = np.random.default_rng(2)
    pts = np.concatenate(
        [rng.uniform(-14, 14, (3000, 2)), rng.uniform(-1.2, 1.2, (3000, 1)), rng.uniform(0, 1, (3000, 1))], 1
    ).astype(np.float32)
    pts[:50, :2] = rng.integers(-32, 32, (50, 2)) * np.float32(0.4)  # exactly on cell edges
    mask = rng.random(3000) < 0.8
    got = np.asarray(bev_jit(jnp.asarray(pts), jnp.asarray(mask)))
    want = lidar_bev(pts[mask], GRID)
    np.testing.assert_array_equal(got[..., [0, 1, 3]], want[..., [0, 1, 3]])
    np.testing.assert_allclose(got[..., 2], want[..., 2], rtol=1e-6)
    assert want[..., 0].sum() > 500


def test_contract_obs_jax_equals_numpy():
    rng = np.random.default_rng(3)
    obs = fake_obs(rng, (3,))
    mods = {k: MODALITIES[k] for k in ("lidar", "radar", "gps", "imu")}
    got, got_valid = jax.jit(lambda o: contract_obs_jax(o, mods, BEV))(obs)
    want, want_valid = contract_obs(obs, mods, BEV, SPEC)
    for k in mods:
        np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-6, atol=1e-7, err_msg=k)
        np.testing.assert_array_equal(np.asarray(got_valid[k]), want_valid[k])
    np.testing.assert_array_equal(np.asarray(got["lidar"])[..., 0], want["lidar"][..., 0])
    assert want["lidar"][..., 0].sum() > 100


def test_contract_obs_jax_on_jax_env_obs():
    params = make_params("default", lidar_rays=1080)
    obs, _ = jax.jit(lambda k: racecar.reset(k, params))(jax.random.key(0))
    mods = {"lidar": MODALITIES["lidar"], "gps": (5,)}
    got, _ = contract_obs_jax(obs, mods, BEV)
    want, _ = contract_obs(jax.tree.map(np.asarray, obs), mods, BEV, SPEC)
    np.testing.assert_array_equal(np.asarray(got["lidar"])[..., [0, 1, 3]], want["lidar"][..., [0, 1, 3]])
    np.testing.assert_allclose(np.asarray(got["gps"]), want["gps"], rtol=1e-6)
    assert want["lidar"][..., 0].sum() > 20  # the walls around the start line


def _bullet(**kw):
    return BulletRaceEnv("default", camera=True, camera_width=48, camera_height=40, **kw)


def test_single_env_wrapper():
    env = ContractObsWrapper(_bullet(), MODALITIES, BEV)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    obs, reward, terminated, truncated, _ = env.step(np.array([0.5, 0.1], np.float32))
    assert env.observation_space.contains(obs)
    for name, m in MODALITIES.items():
        assert obs[name].shape == m.shape and obs[name].dtype == np.float32, name
    assert {k: bool(v) for k, v in obs["valid"].items()} == {
        "lidar": True,
        "rgb": True,
        "radar": False,
        "ir": False,
        "gps": True,
        "imu": True,
    }
    assert not obs["radar"].any() and not obs["ir"].any()
    assert obs["lidar"][..., 0].sum() > 20 and obs["timestamp"] == pytest.approx(0.04)
    assert abs(obs["rgb"].mean()) < 3.0 and obs["rgb"].std() > 0.1  # ImageNet-normalised camera
    env.close()


def test_vector_env_wrapper():
    venv = gymnasium.vector.SyncVectorEnv([_bullet, _bullet])
    env = ContractObsVectorWrapper(venv, MODALITIES, BEV)
    obs, _ = env.reset(seed=[0, 1])
    obs, reward, terminated, truncated, _ = env.step(np.array([[0.5, 0.0], [0.2, -0.3]], np.float32))
    assert env.observation_space.contains(obs)
    for name, m in MODALITIES.items():
        assert obs[name].shape == (2,) + m.shape, name
        assert obs["valid"][name].shape == (2,) and obs["valid"][name].dtype == np.bool_
    np.testing.assert_array_equal(obs["valid"]["radar"], [False, False])
    np.testing.assert_array_equal(obs["valid"]["rgb"], [True, True])
    assert not obs["ir"].any() and reward.shape == (2,)
    assert env.scan_spec.rays == 1080
    env.close()


def test_vector_wrapper_maps_the_final_observations_of_autoreset():
    """SAME_STEP autoreset puts a finished episode's last observation in info["final_obs"]: mapped too."""

    def short():
        return gymnasium.wrappers.TimeLimit(BulletRaceEnv("default", lidar_rays=64), 2)

    def vector():
        mode = gymnasium.vector.AutoresetMode.SAME_STEP
        return gymnasium.vector.SyncVectorEnv([short, short], autoreset_mode=mode)

    mods = {"lidar": ModalityConfig(shape=(16, 1)), "gps": ModalityConfig(shape=(5,))}
    env, raw = ContractObsVectorWrapper(vector(), mods, BEV), vector()
    env.reset(seed=[0, 1])
    raw.reset(seed=[0, 1])
    actions = np.array([[0.8, 0.1], [0.6, -0.2]], np.float32)
    for _ in range(2):
        obs, _, _, truncated, info = env.step(actions)
        raw_obs, _, _, _, raw_info = raw.step(unflatten_action(actions))
    assert truncated.all() and info["_final_obs"].all()
    spec = ScanSpec(64, env.scan_spec.fov, env.scan_spec.max_range)
    for i in range(2):
        want, valid = contract_obs(raw_info["final_obs"][i], mods, BEV, spec)
        got = info["final_obs"][i]
        for k in (*mods, "timestamp"):
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        assert got["valid"] == valid and got["timestamp"] == pytest.approx(0.08)
        assert not np.array_equal(got["gps"], obs["gps"][i])  # the old episode's end, not the new start
    env.close()
    raw.close()


def test_host_step_inside_jit_matches_direct_stepping():
    actions = np.stack([np.linspace(0.2, 1.0, 6), np.linspace(-0.5, 0.5, 6)], 1).astype(np.float32)
    hosted, direct = BulletRaceEnv("default"), BulletRaceEnv("default")
    hosted.reset(seed=4)
    direct.reset(seed=4)
    step_fn = make_host_step(hosted)

    @jax.jit
    def rollout(acts):
        def body(carry, a):
            obs, reward, terminated, truncated = step_fn(a)
            return carry + reward, (obs["lidar"], obs["pose"], reward, terminated)

        return jax.lax.scan(body, jnp.float32(0.0), acts)

    total, (lidar, pose, rewards, terminated) = rollout(jnp.asarray(actions))
    for t, a in enumerate(actions):
        obs, reward, term, _, _ = direct.step(unflatten_action(a))
        np.testing.assert_array_equal(np.asarray(lidar[t]), obs["lidar"])
        np.testing.assert_array_equal(np.asarray(pose[t]), obs["pose"])
        assert float(rewards[t]) == pytest.approx(reward, rel=1e-6) and bool(terminated[t]) == term
    assert float(total) > 0.0
    hosted.close()
    direct.close()
