"""Pure-JAX racing env: determinism, vmap, collisions, laps with the pure-pursuit baseline, lidar accuracy."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from src.envs.controllers import pure_pursuit
from src.envs.racecar import dynamics, raycast, sensors
from src.envs.racecar import env as racecar
from src.envs.racecar.params import make_params
from src.envs.tracks.geometry import Track, inside_loop, point_segment_distance
from src.envs.tracks.maps import read_waypoints
from src.envs.tracks.registry import get_track

SMALL = {"lidar_rays": 16}
SPIELBERG = Path(__file__).parent / "fixtures" / "tracks" / "Spielberg"  # a real F1TENTH map, ATTRIBUTION.md


@pytest.fixture(scope="module")
def params():
    return make_params("default", reset_mode="random", **SMALL)


@pytest.fixture(scope="module")
def jitted():
    return jax.jit(racecar.reset), jax.jit(racecar.step)


def _rollout(params, jitted, key, actions):
    reset, step = jitted
    obs, s = reset(key, params)
    out = [obs["lidar"]]
    for k, a in zip(jax.random.split(key, len(actions)), actions):
        obs, s, *_ = step(k, s, a, params)
        out.append(obs["lidar"])
    return np.stack(out), s


def test_determinism_under_a_seed(params, jitted):
    actions = jnp.asarray([[0.5, 0.2]] * 4)
    a, sa = _rollout(params, jitted, jax.random.key(1), actions)
    b, sb = _rollout(params, jitted, jax.random.key(1), actions)
    c, _ = _rollout(params, jitted, jax.random.key(2), actions)
    np.testing.assert_array_equal(a, b)
    assert float(sa.x) == float(sb.x)
    assert not np.array_equal(a, c)  # lidar noise depends on the key


def test_vmap_over_64_envs_equals_single_runs(params, jitted):
    reset, step = jitted
    keys = jax.random.split(jax.random.key(3), 64)
    actions = jax.random.uniform(jax.random.key(4), (64, 2), minval=-1, maxval=1)
    p = params
    vobs, vs = jax.vmap(racecar.reset, in_axes=(0, None))(keys, p)
    vobs, vs, vr, *_ = jax.jit(jax.vmap(racecar.step, in_axes=(0, 0, 0, None)))(keys, vs, actions, p)
    assert len(np.unique(np.asarray(vs.x))) > 32  # random starts really differ
    for i in range(64):
        obs, s = reset(keys[i], p)
        obs, s, r, *_ = step(keys[i], s, actions[i], p)
        np.testing.assert_allclose(obs["lidar"], vobs["lidar"][i], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(float(s.x), float(vs.x[i]), rtol=1e-6, atol=1e-5)
        np.testing.assert_allclose(float(r), float(vr[i]), rtol=1e-5, atol=1e-5)


def test_driving_into_a_wall_collides_and_stops(params, jitted):
    reset, step = jitted
    obs, s = reset(jax.random.key(0), params)
    s = s.replace(yaw=s.yaw + np.pi / 2)  # face the (left) wall
    hit_at = None
    for i in range(40):
        obs, s, r, term, trunc, info = step(jax.random.key(i), s, jnp.array([1.0, 0.0]), params)
        if bool(info["wall_collision"]):
            hit_at = i
            break
    assert hit_at is not None and hit_at < 20
    assert float(dynamics.distance(params, jnp.stack([s.x, s.y]))) > 0.0  # never driven through the wall
    # terminate_on_collision ends the episode on the same contact
    p2 = make_params(
        "default", terminate_on_collision=True, collision_reward=-5.0, reset_mode="random", **SMALL
    )
    step2 = jax.jit(racecar.step)
    for i in range(5):
        _, s, r, term, _, info = step2(jax.random.key(i), s, jnp.array([1.0, 0.0]), p2)
        if bool(term):
            break
    assert bool(term) and bool(info["wall_collision"]) and float(r) <= -5.0 + 1e-3


def _drive(params, steps, reverse=False):
    """Pure pursuit around the track (or the reversed centreline, facing backwards) for `steps` control steps."""
    centre = params.centreline[::-1] if reverse else params.centreline

    def body(state, key):
        pose = jnp.stack(
            [state.x - params.lr * jnp.cos(state.yaw), state.y - params.lr * jnp.sin(state.yaw), state.yaw]
        )
        a = pure_pursuit(pose, state.vx, centre)
        _, state, r, term, trunc, info = racecar.step(key, state, a, params)
        return state, (info["lap"], info["total_progress"], info["wall_collision"], term, info["wrong_way"])

    @jax.jit
    def run(key):
        _, s = racecar.reset(key, params)
        if reverse:
            s = s.replace(yaw=s.yaw + jnp.pi)
        return jax.lax.scan(body, s, jax.random.split(key, steps))[1]

    return [np.asarray(v) for v in run(jax.random.key(0))]


@pytest.mark.parametrize("name", ["default", "wide_loop", "twisty"])
def test_pure_pursuit_completes_one_lap(name):
    params = make_params(name, lidar_rays=4, pose_noise=0.0)
    lap, total, hit, term, _ = _drive(params, 900)
    assert term.any(), f"no lap within 900 steps on {name}: progress {total.max():.3f}"
    end = int(np.argmax(term))
    assert not hit[: end + 1].any()
    assert lap[0] == 1 and lap[end] == 2 and (np.diff(lap[: end + 1]) >= 0).all()
    assert np.count_nonzero(np.diff(lap[: end + 1])) == 1  # the lap counter increments exactly once
    assert 1.0 <= total[end] < 1.0 + 5.0 / params.track_length


def test_reversed_lap_does_not_count():
    params = make_params("default", lidar_rays=4, pose_noise=0.0)
    lap, total, hit, term, wrong = _drive(params, 900, reverse=True)
    assert not term.any() and lap.max() == 1
    assert total.min() < -0.95  # a whole loop driven the wrong way
    assert wrong[50:].mean() > 0.9


@pytest.fixture(scope="module")
def spielberg_track():
    return get_track(SPIELBERG / "Spielberg.yaml")  # walls traced from the image, centreline from the CSV


@pytest.fixture(scope="module")
def spielberg(spielberg_track):
    return make_params(spielberg_track, lidar_rays=4, pose_noise=0.0, time_limit=400.0)


def test_make_params_validates_the_track():
    # Before: walls offset from this CSV fold over at a 0.59 m turn and the env was built from them silently.
    centre, w_right, w_left = read_waypoints(SPIELBERG / "Spielberg_centerline.csv")
    with pytest.raises(ValueError, match=r"'spielberg_csv'.*fold over"):
        make_params(Track("spielberg_csv", centre, w_left, w_right))


def test_distance_grid_is_exact_near_the_walls(spielberg, spielberg_track):
    # signed distance at cell centres: exact within 0.5 m of a wall, within a cell beyond; + on the track
    walls = np.asarray(spielberg.walls, np.float64)
    dist = np.asarray(spielberg.dist, np.float64)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, dist.shape[0], 1500), rng.integers(0, dist.shape[1], 1500)
    pts = np.asarray(spielberg.grid_origin, np.float64) + (np.stack([cols, rows], 1) + 0.5) * 0.05
    exact = np.min(point_segment_distance(pts[:, None], walls[None]), 1)
    got = dist[rows, cols]
    near = exact < 0.45
    assert near.sum() > 20 and np.abs(np.abs(got[near]) - exact[near]).max() < 1e-4
    assert np.abs(np.abs(got) - exact).max() < 0.06
    left, right = spielberg_track.boundaries()
    on_track = np.array([inside_loop(q, left) != inside_loop(q, right) for q in pts])
    assert on_track.sum() > 20 and ((got > 0) == on_track)[exact > 1e-3].all()


def test_pure_pursuit_laps_spielberg_cleanly(spielberg):
    lap, total, hit, term, _ = _drive(
        spielberg, 3500
    )  # compile-dominated: a lap costs little more than a turn
    assert term.any(), f"no lap within 3500 steps: progress {total.max():.3f}"
    end = int(np.argmax(term))
    assert not hit[: end + 1].any() and lap[end] == 2
    assert (end + 1) * spielberg.control_dt < 130.0  # 115 s at the controller's 3 m/s cap


def test_lidar_equals_brute_force_on_spielberg(spielberg):
    # walls traced from the image (2219 segments); 360 rays over the lidar's fan, from 12 poses
    walls = np.asarray(spielberg.walls, np.float64)
    centre = np.asarray(spielberg.centreline, np.float64)
    fan = raycast.Fan(360, spielberg.lidar_fov, depth=spielberg.ray_depth)
    cast = jax.jit(lambda o, h: raycast.cast_rays(spielberg, o, h, fan, 15.0))
    rng = np.random.default_rng(0)
    errs = []
    for i in rng.choice(len(centre), 12, replace=False):
        o = centre[i] + rng.normal(0, 0.3, 2)
        if float(dynamics.distance(spielberg, jnp.asarray(o, jnp.float32))) < 0.05:
            continue
        heading = rng.uniform(-np.pi, np.pi)
        got, seg = cast(jnp.asarray(o, jnp.float32), jnp.float32(heading))
        want = _brute_force(walls, o, heading + fan.angles(), 15.0)
        errs.append(np.abs(np.asarray(got) - want))
        assert ((np.asarray(seg) >= 0) == (want < 15.0)).all()
    e = np.concatenate(errs)
    assert len(errs) >= 8 and e.max() < 2e-3 and np.median(e) < 1e-5


def _brute_force(walls, origin, angles, max_range):
    d = np.stack([np.cos(angles), np.sin(angles)], -1)[:, None]
    a, e = walls[None, :, :2], walls[None, :, 2:] - walls[None, :, :2]
    ao = a - origin
    den = d[..., 0] * e[..., 1] - d[..., 1] * e[..., 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (ao[..., 0] * e[..., 1] - ao[..., 1] * e[..., 0]) / den
        u = (ao[..., 0] * d[..., 1] - ao[..., 1] * d[..., 0]) / den
    t = np.where((u >= 0) & (u <= 1) & (t > 0), t, np.inf)
    return np.minimum(t.min(1), max_range)


def test_lidar_matches_analytic_ranges_in_a_square_corridor():
    # Square ring: centreline square of side 8 with rounded corners, 1 m to each wall; the car sits in the
    # middle of the bottom straight, so rays towards the straight walls have closed-form ranges.
    side, r = 8.0, 2.0
    s = np.linspace(0, 1, 80, endpoint=False)
    arcs = []
    for k, (cx, cy) in enumerate(
        [
            (side / 2 - r, -side / 2 + r),
            (side / 2 - r, side / 2 - r),
            (-side / 2 + r, side / 2 - r),
            (-side / 2 + r, -side / 2 + r),
        ]
    ):
        straight = np.stack(
            [np.linspace(-side / 2 + r, side / 2 - r, 40, endpoint=False), np.full(40, -side / 2)], 1
        )
        rot = np.array(
            [[np.cos(k * np.pi / 2), -np.sin(k * np.pi / 2)], [np.sin(k * np.pi / 2), np.cos(k * np.pi / 2)]]
        )
        th = -np.pi / 2 + k * np.pi / 2 + s * np.pi / 2
        arcs += [straight @ rot.T, np.stack([cx + r * np.cos(th), cy + r * np.sin(th)], 1)]
    centre = np.concatenate(arcs)
    room = Track("square", centre, np.full(len(centre), 1.0), np.full(len(centre), 1.0))
    p = make_params(room, grid_resolution=0.05)
    origin = np.array([0.0, -side / 2])
    fan = raycast.Fan(360, 2 * np.pi * 359 / 360)  # one ray per degree, -179.5 .. +179.5
    ranges, seg = jax.jit(lambda o: raycast.cast_rays(p, o, jnp.float32(np.pi / 360), fan, 15.0))(
        jnp.asarray(origin, jnp.float32)
    )
    angles = np.deg2rad(np.array([90.0, -90.0, 60.0, -60.0, 30.0, -30.0, 120.0, -150.0]))
    k = np.round(np.rad2deg(angles) + 179.5 - 0.5).astype(int)  # those rays' indices
    np.testing.assert_allclose(fan.angles()[k] + np.pi / 360, angles, atol=1e-9)
    analytic = 1.0 / np.abs(np.sin(angles))  # both walls 1 m away, parallel to the x axis
    np.testing.assert_allclose(np.asarray(ranges)[k], analytic, atol=1e-4)
    assert (np.asarray(seg)[k] >= 0).all()


@pytest.mark.parametrize("name", ["default", "twisty", "wide_loop"])
def test_lidar_equals_brute_force_on_every_bundled_track(name):
    track = get_track(name)
    p = make_params(track, lidar_rays=1080, camera=True)
    walls = track.walls().astype(np.float64)
    rng = np.random.default_rng(0)
    lidar = raycast.lidar_fan(p)
    camera = raycast.camera_fan(p)
    cast = jax.jit(lambda o, h, fan: raycast.cast_rays(p, o, h, fan, 15.0), static_argnums=2)
    errs = []
    for _ in range(24):
        o = track.centreline[rng.integers(len(track.centreline))] + rng.normal(0, 0.3, 2)
        if float(dynamics.distance(p, jnp.asarray(o, jnp.float32))) < 0.05:
            continue  # sensors never leave the track
        heading = rng.uniform(-np.pi, np.pi)
        for fan in (lidar, camera):
            got, seg = cast(jnp.asarray(o, jnp.float32), jnp.float32(heading), fan)
            want = _brute_force(walls, o, heading + fan.angles(), 15.0)
            errs.append(np.abs(np.asarray(got) - want))
            assert ((np.asarray(seg) >= 0) == (want < 15.0)).all()
    e = np.concatenate(errs)
    assert len(errs) > 30 and e.max() < 2e-3 and np.median(e) < 1e-5


def test_a_small_pair_buffer_only_takes_more_chunks():
    # ray_depth sizes the pair buffer swept per chunk; a tiny one must give the same scans, batched too.
    common = {"camera": True, "camera_width": 32, "camera_height": 8, "reset_mode": "random"}
    default = make_params("twisty", **common)
    tiny = make_params("twisty", ray_depth=0.05, camera_ray_depth=0.05, **common)
    assert tiny.ray_depth == 0.05 and default.ray_depth > 1.0
    keys = jax.random.split(jax.random.key(0), 8)
    obs = [jax.jit(jax.vmap(racecar.reset, in_axes=(0, None)))(keys, p)[0] for p in (default, tiny)]
    assert len(np.unique(np.asarray(obs[0]["pose"])[:, 0])) == 8  # eight different poses
    np.testing.assert_array_equal(obs[0]["lidar"], obs[1]["lidar"])
    np.testing.assert_array_equal(obs[0]["rgb_camera"], obs[1]["rgb_camera"])


def test_invalid_actions_are_zeroed_and_flagged(params, jitted):
    reset, step = jitted
    _, s = reset(jax.random.key(0), params)
    k = jax.random.key(5)
    _, s_nan, _, _, _, info = step(k, s, jnp.array([jnp.nan, 0.5]), params)
    _, s_zero, _, _, _, info0 = step(k, s, jnp.array([0.0, 0.5]), params)
    assert bool(info["invalid_action"]) and not bool(info0["invalid_action"])
    assert float(s_nan.x) == float(s_zero.x) and float(s_nan.steer) == float(s_zero.steer)
    with pytest.raises(ValueError, match="NaN or inf"):
        racecar.check_action(np.array([np.inf, 0.0]))


def test_auto_reset_and_camera():
    p = make_params(
        "default",
        lidar_rays=16,
        auto_reset=True,
        final_obs=True,
        time_limit=0.2,
        camera=True,
        camera_height=16,
        camera_width=16,
    )
    reset, step = jax.jit(racecar.reset), jax.jit(racecar.step)
    obs, s = reset(jax.random.key(0), p)
    assert obs["rgb_camera"].shape == (16, 16, 3) and obs["rgb_camera"].dtype == jnp.uint8
    img = np.asarray(obs["rgb_camera"]).astype(int)
    np.testing.assert_array_equal(img[0, 0], sensors.SKY)  # top row: sky, bottom row: floor, middle: a wall
    assert (img[0] == sensors.SKY).all() and (img[-1] != sensors.SKY).any(-1).all()
    assert (img[8] != sensors.SKY).any(-1).all() and (img[8] != img[-1]).any(-1).all()
    for i in range(5):
        obs, s, r, term, trunc, info = step(jax.random.key(i), s, jnp.array([1.0, 0.0]), p)
    assert bool(trunc) and not bool(term)
    assert int(info["episode_length"]) == 5 and float(info["time"]) == pytest.approx(0.2)
    assert float(s.time) == 0.0 and int(s.steps) == 0  # the returned state is a fresh episode
    assert float(info["final_obs"]["time"][0]) == pytest.approx(0.2) and float(obs["time"][0]) == 0.0
    assert float(info["final_obs"]["velocity"][0]) > 0.5 and float(obs["velocity"][0]) == 0.0
