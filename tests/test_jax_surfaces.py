"""Surfaces in the pure-JAX racing env: per-surface grip and rolling resistance, the ground image, the layer PNG."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from src.envs import surfaces as sf
from src.envs.racecar import env as racecar
from src.envs.racecar import sensors
from src.envs.racecar.params import make_params
from src.envs.tracks.geometry import Track
from src.envs.tracks.registry import get_track

SPIELBERG = Path(__file__).parent / "fixtures" / "tracks" / "Spielberg" / "Spielberg.yaml"
CFG = sf.SurfaceConfig(seed=1, ground_image=True, ground_size=(64, 40), ground_px_per_m=20.0)
RENDER = jax.jit(sf.ground_image)


MOTORS = jnp.asarray(
    [1.0] * 40 + [0.0]
)  # 1.6 s at full motor (settled: speed_gain = 8 / s), then one braking step


@pytest.fixture(scope="module")
def circle():
    """A wide circle (radius 30 m): a car driving straight stays on it for ~10 m; surfaces swapped per test."""
    a = np.linspace(0, 2 * np.pi, 400, endpoint=False)
    track = Track("circle", 30 * np.stack([np.cos(a), np.sin(a)], 1), np.full(400, 2.5), np.full(400, 2.5))
    params = make_params(track, grid_resolution=0.25, lidar_rays=8, terrain=sf.SurfaceConfig())
    _, start = jax.jit(racecar.reset)(jax.random.key(0), params)
    return params, start.replace(
        vx=jnp.float32(params.max_speed)
    )  # from full speed to each surface's top speed


@jax.jit
def drive(params, state, motors):
    """Forward speed after each control step, steering straight ahead."""

    def body(s, m):
        _, s, *_ = racecar.step(jax.random.key(0), s, jnp.stack([m, 0.0]), params)
        return s, jnp.stack([s.x, s.y, s.vx])

    return jax.lax.scan(body, state, motors)[1]


def _uniform(params, cls):
    return params.replace(terrain=params.terrain.replace(surface=jnp.full_like(params.terrain.surface, cls)))


def test_each_surface_sets_top_speed_and_braking_by_its_grip_and_rolling_resistance(circle):
    params, start = circle
    cfg, mu, g = sf.SurfaceConfig(), params.mu, sf.G
    top = {}
    for cls in range(len(sf.NAMES)):
        vx = np.asarray(drive(_uniform(params, cls), start, MOTORS))[:, 2]
        expected = params.max_speed - cfg.rolling[cls] * g / params.speed_gain
        np.testing.assert_allclose(vx[39], expected, atol=2e-3)
        top[sf.NAMES[cls]] = vx[39]
        decel = (vx[39] - vx[40]) / params.control_dt  # motor 0 asks for 0 m/s: brake at the friction limit
        limit = min(params.max_accel, cfg.grip[cls] * mu * g) + cfg.rolling[cls] * g
        np.testing.assert_allclose(decel, limit, rtol=2e-3)
    assert top["grass"] < top["asphalt"] - 0.15 and top["gravel"] < top["grass"] - 0.2


def test_neutral_surfaces_leave_the_dynamics_as_without_them(circle):
    params, start = circle
    neutral = params.replace(terrain=params.terrain.replace(grip=(1.0,) * 4, rolling=(0.0,) * 4))
    np.testing.assert_allclose(
        drive(neutral, start, MOTORS * 0.8),
        drive(params.replace(terrain=None), start, MOTORS * 0.8),
        rtol=1e-5,
    )


@pytest.fixture(scope="module")
def default_params():
    return make_params("default", lidar_rays=8, reset_mode="random", terrain=CFG)


def _class_colours(params):
    """Mean texture colour of each class over many of its cells (the reference a pixel is classified by)."""
    surf = np.asarray(params.terrain.surface)
    rng = np.random.default_rng(0)
    out = []
    for cls in range(len(sf.NAMES)):
        rows, cols = np.nonzero(surf == cls)
        pick = rng.choice(len(rows), 2000)
        xy = (
            np.asarray(params.terrain.origin)
            + (np.stack([cols[pick], rows[pick]], 1) + rng.random((2000, 2))) * 0.05
        )
        out.append(np.asarray(sf.texture(params.terrain, jnp.asarray(xy, jnp.float32))).mean(0))
    return np.stack(out)


def test_ground_image_shows_the_map_surfaces_around_the_car(default_params):
    p = default_params
    refs = _class_colours(p)
    surf = np.asarray(p.terrain.surface)
    ppm, r0, c0 = sf.ground_geometry(p.terrain)
    rows, cols = p.terrain.ground_size
    fwd, left = (r0 - np.arange(rows))[:, None] / ppm, (c0 - np.arange(cols))[None, :] / ppm
    near = np.hypot(fwd, left) < 1.5
    for cls in range(len(sf.NAMES)):  # a pose on each surface, heading along the track
        inner = np.argwhere(ndimage.binary_erosion(surf == cls, iterations=2))  # 0.1 m inside its region
        r, c = inner[len(inner) // 2]
        x, y = np.asarray(p.terrain.origin) + (np.array([c, r]) + 0.5) * 0.05
        yaw = float(np.asarray(p.tangent_yaw)[np.argmin(np.hypot(*(np.asarray(p.centreline) - [x, y]).T))])
        img = np.asarray(RENDER(p.terrain, jnp.array([x, y, yaw]))).astype(np.float64)
        # the map's class at each pixel's ground point, computed here independently of the renderer
        wx, wy = x + np.cos(yaw) * fwd - np.sin(yaw) * left, y + np.sin(yaw) * fwd + np.cos(yaw) * left
        gc = np.floor((wx - float(p.terrain.origin[0])) / 0.05).astype(int)
        gr = np.floor((wy - float(p.terrain.origin[1])) / 0.05).astype(int)
        truth = surf[gr, gc]
        assert truth[int(r0), int(c0)] == cls
        nearest = np.argmin(((img[..., None, :] - refs) ** 2).sum(-1), -1)
        on_track = near & (truth < len(sf.NAMES))
        assert (nearest == truth)[on_track].mean() > 0.85, sf.NAMES[cls]
        under = img[int(r0) - 1 : int(r0) + 2, int(c0) - 1 : int(c0) + 2].reshape(-1, 3).mean(0)
        assert np.argmin(((under - refs) ** 2).sum(-1)) == cls, sf.NAMES[cls]


def test_far_pixels_are_blurrier(default_params):
    p = default_params
    img = np.asarray(RENDER(p.terrain, jnp.asarray(p.start))).astype(float)
    sharp = np.asarray(RENDER(p.terrain.replace(ground_blur=0.0), jnp.asarray(p.start))).astype(float)
    ppm, r0, c0 = sf.ground_geometry(p.terrain)
    rows, cols = np.meshgrid(np.arange(img.shape[0]), np.arange(img.shape[1]), indexing="ij")
    near = np.hypot(rows - r0, cols - c0) / ppm < 0.3
    assert (img == sharp).all(-1)[near].mean() > 0.9  # next to the car the footprint is under a millimetre

    def detail(
        a,
    ):  # mean absolute difference of horizontal neighbours in the 10 farthest rows (2.7-3.2 m ahead)
        return np.abs(np.diff(a[:10], axis=1)).mean()

    assert detail(img) < 0.8 * detail(sharp)


def test_vmapped_equals_single_and_is_deterministic(default_params):
    p = default_params
    keys = jax.random.split(jax.random.key(5), 4)
    actions = jnp.asarray([[0.6, 0.3], [0.4, -0.2], [0.8, 0.0], [0.5, 0.5]])

    def run(key, action):
        def body(carry, k):
            return racecar.step(k, carry[1], action, p)[:2], None

        (obs, s), _ = jax.lax.scan(body, racecar.reset(key, p), jax.random.split(key, 3))
        return obs["ground_image"], s.vx

    vimg, vvx = jax.jit(jax.vmap(run))(keys, actions)
    single = jax.jit(run)
    for i in range(4):
        img, vx = single(keys[i], actions[i])
        np.testing.assert_array_equal(np.asarray(img), np.asarray(vimg[i]))
        np.testing.assert_allclose(float(vx), float(vvx[i]), rtol=1e-6)
    again, _ = single(keys[0], actions[0])
    np.testing.assert_array_equal(np.asarray(again), np.asarray(vimg[0]))
    assert len({np.asarray(v).tobytes() for v in vimg}) == 4


def test_camera_floor_shows_the_surfaces(default_params):
    p = default_params.replace(camera_height=16, camera_width=16)
    _, s = jax.jit(racecar.reset)(jax.random.key(0), p)
    img = np.asarray(jax.jit(sensors.camera)(p, s)).astype(float)
    # without surfaces a floor row is one colour; with them the floor has the surfaces' texture across a row
    assert np.abs(np.diff(img[12:], axis=1)).mean() > 3.0
    floor = img[12:].reshape(-1, 3)
    ref = np.asarray(sf.PALETTE[: len(sf.NAMES)], float)
    assert ((floor[:, None] - ref) ** 2).sum(-1).min(1).mean() < ((floor - np.asarray(sensors.FLOOR)) ** 2).sum(
        -1
    ).mean()


def test_layer_png_beside_a_map_is_read_onto_the_grid():
    seed = make_params(get_track(SPIELBERG), lidar_rays=8, terrain=sf.SurfaceConfig(seed=0, layer="seed"))
    png = make_params(str(SPIELBERG), lidar_rays=8, terrain=sf.SurfaceConfig(seed=0))
    a, b = np.asarray(seed.terrain.surface), np.asarray(png.terrain.surface)
    on = a < sf.BARRIER
    assert set(np.unique(b[on])) == set(range(len(sf.NAMES)))
    assert (a == b)[on].mean() > 0.95  # nearest-pixel resampling at 0.058 vs 0.05 m differs on edges only


def test_bad_layer_png_is_named(tmp_path):
    dist = np.ones((3, 3))
    with Image.open(SPIELBERG.with_name("Spielberg.png")) as im:
        w, h = im.size
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(small)
    with pytest.raises(ValueError, match="small.png.*Spielberg.yaml"):
        sf.read_layer(small, SPIELBERG, dist, np.array([0.0, 0.0]), 0.05)
    bad = tmp_path / "bad.png"
    Image.fromarray(np.full((h, w), 7, np.uint8)).save(bad)
    with pytest.raises(ValueError, match=r"bad.png: value 7 at pixel"):
        sf.read_layer(bad, SPIELBERG, dist, np.array([0.0, 0.0]), 0.05)


def test_road_patches_cover_only_asphalt():
    rows, cols = np.mgrid[0:60, 0:400]
    dist = 1.5 - np.abs(rows - 29.5) * 0.05  # a straight 3 m corridor along x, 0.05 m cells
    progress = cols / 400.0
    base = sf.generate_layout(sf.SurfaceConfig(offroad=False), dist, progress, 20.0, 0.05)
    patched = sf.generate_layout(sf.SurfaceConfig(offroad=False, road_patches=6), dist, progress, 20.0, 0.05)
    changed = base != patched
    assert changed.sum() > 6 * np.pi * (0.3 / 0.05) ** 2 * 0.5  # six discs of radius >= 0.3 m, mostly on asphalt
    assert (base[changed] == sf.ASPHALT).all() and set(np.unique(patched[changed])) <= {sf.GRAVEL, sf.GRASS}
