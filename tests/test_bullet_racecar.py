"""PyBullet racing env: analytic lidar, collisions, determinism, gymnasium conformance, laps, JAX agreement."""

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import src.envs  # noqa: F401  (registers raceformer/BulletRace-v0)
from src.envs.bullet.env import BulletRaceEnv
from src.envs.bullet.sim import RacecarSim, SimConfig, lidar_angles
from src.envs.controllers import pure_pursuit
from src.envs.racecar import env as racecar
from src.envs.racecar import sensors
from src.envs.racecar.params import make_params
from src.envs.tracks.geometry import Track
from src.envs.tracks.registry import bundled_tracks, get_track

HALF = 4.0  # the square room spans [-HALF, HALF]^2
ROOM = np.array(
    [
        [-HALF, -HALF, HALF, -HALF],
        [HALF, -HALF, HALF, HALF],
        [HALF, HALF, -HALF, HALF],
        [-HALF, HALF, -HALF, -HALF],
    ]
)


@pytest.fixture(scope="module")
def room():
    sim = RacecarSim(ROOM, SimConfig(lidar_accuracy=0.0))
    yield sim
    sim.close()


def square_room_ranges(origin: np.ndarray, angles: np.ndarray, half: float) -> np.ndarray:
    """Distance from `origin` along each world angle to the walls x = +-half, y = +-half."""
    d = np.full(angles.shape, np.inf)
    for comp, o in ((np.cos(angles), origin[0]), (np.sin(angles), origin[1])):
        with np.errstate(divide="ignore"):
            for wall in (half, -half):
                t = (wall - o) / comp
                d = np.where((t > 0) & np.isfinite(t), np.minimum(d, t), d)
    return d


@pytest.mark.parametrize("pose", [(0.0, 0.0, 0.0), (1.3, -0.7, 2.1), (-2.0, 1.5, -0.6)])
def test_lidar_matches_square_room(room, pose):
    room.set_pose(*pose)
    origin = room.lidar_origin()
    # The laser sits 0.265 m ahead of the rear axle, 0.075 m above the chassis frame.
    np.testing.assert_allclose(
        origin[:2], [pose[0] + 0.265 * np.cos(pose[2]), pose[1] + 0.265 * np.sin(pose[2])], atol=1e-6
    )
    expected = square_room_ranges(origin, lidar_angles(1080, 4.71) + pose[2], HALF)
    ranges = room.lidar()
    assert ranges.shape == (1080,) and ranges.dtype == np.float32
    np.testing.assert_allclose(ranges, np.minimum(expected, 15.0), atol=1e-4)


def test_lidar_misses_read_max_range_and_noise_is_bounded():
    walls = np.array([[20.0, -1.0, 20.0, 1.0]])  # a wall beyond the 15 m range
    sim = RacecarSim(walls, SimConfig(lidar_accuracy=0.03))
    sim.set_pose(0.0, 0.0, 0.0)
    np.testing.assert_allclose(sim.lidar(), 15.0)
    sim.close()
    sim = RacecarSim(ROOM, SimConfig(lidar_accuracy=0.03))
    sim.set_pose(0.0, 0.0, 0.0)
    clean = sim.lidar()
    noisy = sim.lidar(np.random.default_rng(0))
    ratio = noisy / clean
    assert np.all(np.abs(ratio - 1.0) <= 0.03 + 1e-6) and np.std(ratio) > 0.01
    sim.close()


def test_driving_straight_into_a_wall_collides(room):
    room.set_pose(0.0, 0.0, 0.0)  # facing the wall at x = +4
    hits = []
    for _ in range(150):
        collided, _ = room.step(1.0, 0.0)
        hits.append(collided)
        if collided:
            break
    assert hits[-1], "the car never touched the wall"
    assert not any(hits[:10])
    front = room.pose()[0] + 0.37  # chassis reaches ~0.37 m ahead of the rear axle
    assert abs(front - HALF) < 0.1


def test_steering_sign_and_speed(room):
    room.set_pose(-2.0, -2.0, 0.0)
    for _ in range(20):
        room.step(0.6, 1.0)  # positive steering turns left: yaw increases
    assert 0.3 < room.pose()[5] < np.pi / 2
    assert room.velocity()[0] > 0.5  # forward speed in the body frame


def test_sim_is_deterministic(room):
    def run():
        room.set_pose(0.5, 0.2, 0.4)
        for i in range(30):
            room.step(0.8, np.sin(i / 5.0))
        return np.concatenate([room.pose(), room.velocity(), room.lidar()])

    np.testing.assert_array_equal(run(), run())


# --------------------------------------------------------------------------------------------- the gym env


@pytest.fixture(scope="module")
def env():
    e = BulletRaceEnv("default")
    yield e
    e.close()


def test_check_env_and_spaces():
    e = gymnasium.make("raceformer/BulletRace-v0", camera=True, camera_width=32, camera_height=24)
    check_env(e.unwrapped, skip_render_check=True)
    obs, info = e.reset(seed=3)
    assert set(obs) == {"pose", "velocity", "acceleration", "lidar", "imu", "origin", "rgb_camera", "time"}
    assert obs["rgb_camera"].shape == (24, 32, 3) and obs["rgb_camera"].dtype == np.uint8
    assert obs["lidar"].shape == (1080,) and obs["pose"].shape == (6,)
    assert set(e.action_space.spaces) == {"motor", "steering"}
    expected_info = {
        "wall_collision",
        "opponent_collisions",
        "pose",
        "velocity",
        "acceleration",
        "progress",
        "time",
        "checkpoint",
        "lap",
        "rank",
        "wrong_way",
        "observations",
    }
    assert expected_info <= set(info)
    e.close()


def test_seeded_episodes_are_identical(env):
    def run(seed):
        obs, _ = env.reset(seed=seed, options={"mode": "random"})
        trace = [obs["pose"], obs["lidar"]]
        for i in range(15):
            obs, reward, *_ = env.step({"motor": np.array([0.7]), "steering": np.array([0.3 * np.sin(i)])})
            trace += [obs["pose"], obs["lidar"], np.array([reward])]
        return np.concatenate(trace)

    a, b, c = run(7), run(7), run(8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("key", ["motor", "steering"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_action_raises(env, key, bad):
    env.reset(seed=0)
    action = {"motor": np.array([0.5]), "steering": np.array([0.0])}
    action[key] = np.array([bad])
    with pytest.raises(ValueError, match=key):
        env.step(action)


def test_bad_reset_mode_raises(env):
    with pytest.raises(ValueError, match="mode"):
        env.reset(options={"mode": "pit"})


def test_collision_terminates_when_configured():
    e = BulletRaceEnv("default", terminate_on_collision=True, collision_reward=-5.0, pose_noise=0.0)
    e.reset(seed=0)
    x, y, yaw = e.track.start_pose()
    e.sim.set_pose(x, y, yaw + np.pi / 2)  # facing the left wall
    for _ in range(100):
        _, reward, terminated, truncated, info = e.step(
            {"motor": np.array([1.0]), "steering": np.array([0.0])}
        )
        if info["wall_collision"]:
            break
    assert info["wall_collision"] and terminated and not truncated
    assert reward < -4.0  # -5 for the hit plus a little sideways progress
    e.close()


def test_time_limit_truncates():
    e = BulletRaceEnv("default", time_limit=0.2)  # 5 control steps of 0.04 s
    e.reset(seed=0)
    flags = [e.step({"motor": np.array([0.0]), "steering": np.array([0.0])})[2:4] for _ in range(5)]
    assert flags == [(False, False)] * 4 + [(False, True)]
    e.close()


def drive_one_lap(track_name: str):
    e = BulletRaceEnv(track_name)
    track = e.track
    _, info = e.reset(seed=0)
    total_reward, collisions = 0.0, 0
    for _ in range(int(3 * track.length / 0.04 / 2.0)):  # time for 3 laps at 2 m/s
        pose = info["pose"]
        a = pure_pursuit(np.array([pose[0], pose[1], pose[5]]), info["velocity"][0], track.centreline)
        _, reward, terminated, truncated, info = e.step({"motor": a[:1], "steering": a[1:]})
        total_reward += reward
        collisions += info["wall_collision"]
        if terminated or truncated:
            break
    e.close()
    assert terminated and not truncated and collisions == 0
    assert info["lap"] == 2
    # one lap: progress counted from the start line reaches 1 (within one control step) and the reward is
    # 100 x the progress driven
    assert 1.0 <= info["total_progress"] < 1.0 + 4.0 * 0.04 / track.length
    assert info["progress"] == pytest.approx(info["total_progress"] - 1.0)
    np.testing.assert_allclose(total_reward, 100.0 * info["total_progress"], atol=0.5)


def test_pure_pursuit_completes_a_lap_default_track():
    drive_one_lap("default")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(bundled_tracks()))
def test_pure_pursuit_completes_a_lap_every_track(name):
    drive_one_lap(name)


def test_env_validates_its_track():
    th = np.linspace(0, 2 * np.pi, 100, endpoint=False)
    tight = Track("tight", 0.8 * np.stack([np.cos(th), np.sin(th)], 1), np.full(100, 1.0), np.full(100, 1.0))
    with pytest.raises(ValueError, match="'tight'.*fold over"):
        BulletRaceEnv(tight)


def test_lidar_agrees_with_jax_env():
    track = get_track("default")
    params = make_params(track, lidar_accuracy=0.0, pose_noise=0.0)
    _, state = racecar.reset(jax.random.key(0), params)
    jax_lidar = jax.jit(lambda s: sensors.lidar(params, s))
    sim = RacecarSim(track.walls(), SimConfig(lidar_accuracy=0.0))
    rng = np.random.default_rng(0)
    errors = []
    for k in rng.choice(len(track.centreline), 4, replace=False):
        x, y = track.centreline[k]
        d = track.centreline[(k + 1) % len(track.centreline)] - track.centreline[k - 1]
        yaw = float(np.arctan2(d[1], d[0]) + rng.uniform(-0.3, 0.3))
        sim.set_pose(x, y, yaw)
        # the JAX state is the centre of gravity, `lr` ahead of the rear axle
        s = state.replace(
            x=jnp.float32(x + params.lr * np.cos(yaw)),
            y=jnp.float32(y + params.lr * np.sin(yaw)),
            yaw=jnp.float32(yaw),
        )
        errors.append(np.abs(np.asarray(jax_lidar(s)) - sim.lidar()))
    sim.close()
    err = np.concatenate(errors)
    assert np.median(err) < 0.02 and np.percentile(err, 95) < 0.05
