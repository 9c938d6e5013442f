"""Ground surfaces for the pure-JAX racing env: a class raster on the track, their grip and rolling resistance, their
look (a procedural texture fixed in the world), a top-down ground image around the car, and the surface layer PNG.

Surface classes (ids in the raster and in a layer PNG): 0 asphalt, 1 kerb, 2 gravel, 3 grass; 4 barrier (outside
the walls, never driven). The raster shares the env's grid (cell [0, 0]'s corner at `origin`, `res` m cells, row =
y, column = x). It comes from a layer PNG beside a map (`<map stem>_surface.png`, same size as the map image,
8-bit palette or grey, pixel value = class id, 4 (or anything) off the corridor) or is generated from a seed:
the lap is cut into sections `section_m` long; road sections are asphalt with kerbs (`kerb_m`) along both walls
and a run-off strip (`runoff_m`, grass or gravel) between kerb and wall, and between two road sections lies an
off-road section whose whole width is grass or gravel (alternating), so that every surface is driven on any line
(`offroad=False`: road sections only, so that a driver can keep to the asphalt).

Dynamics: each class scales the tyres' friction coefficient (`grip`: the lateral force limit and, through the
friction circle, the longitudinal acceleration limit min(max_accel, grip * mu * g)) and adds rolling resistance
(`rolling`: a deceleration rolling * g against the motion), looked up under each axle.

Look: every class has a base colour and its own pattern (asphalt fine grain, kerb red/white bands, gravel coarse
speckle, grass green blades) from an integer hash of world coordinates, so two views of a place agree. The ground
image is that texture seen from above around the car (rows forward, columns to the left: the BEV convention of
`src.terrain.extract`, the car's rear axle at `ground_geometry`), each pixel the mean of four samples spread over
a footprint that grows with the square of its distance from the car, as a downward-looking camera's homography
gives (farther pixels blurrier).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from PIL import Image
from scipy import ndimage

from src.envs.tracks import maps
from src.envs.tracks.raster import DEFAULT_RESOLUTION, rasterize
from src.envs.tracks.registry import get_track
from src.envs.tracks.validation import check_track

NAMES = ("asphalt", "kerb", "gravel", "grass")
ASPHALT, KERB, GRAVEL, GRASS, BARRIER = range(5)
# PNG palette (and the ground-truth map's colours): one RGB per class id, barrier last
PALETTE = ((90, 90, 96), (220, 40, 40), (200, 170, 110), (60, 150, 60), (30, 30, 30))
G = 9.81  # m/s^2, the car model's g: tyre loads, friction circle, rolling resistance, the lap-time bound


@dataclasses.dataclass(frozen=True)
class SurfaceConfig:
    """Surface map, per-class dynamics and the ground image (module docstring). grip / rolling per class id."""

    seed: int = 0
    layer: str = (
        ""  # a layer PNG path; "seed": from the seed; "": `<stem>_surface.png` beside a map, else the seed
    )
    section_m: tuple[float, float] = (6.0, 12.0)  # section lengths, uniform in this range
    runoff_m: float = 0.35
    kerb_m: float = 0.3
    offroad: bool = True  # all-grass / all-gravel sections between road sections; False: every section is road
    road_patches: int = 0  # grass / gravel discs (radius in patch_radius_m) laid on the asphalt, per lap
    patch_radius_m: tuple[float, float] = (0.3, 0.5)
    grip: tuple[float, float, float, float] = (1.0, 0.85, 0.5, 0.6)
    rolling: tuple[float, float, float, float] = (0.015, 0.04, 0.35, 0.15)
    ground_image: bool = False  # observation "ground_image"
    ground_size: tuple[int, int] = (140, 80)  # rows (forward), columns (across)
    ground_px_per_m: float = 40.0
    ground_behind_m: float = 0.5  # image rows behind the rear axle
    ground_blur: float = 0.01  # footprint (m) of a pixel d m from the car: ground_blur * d**2

    def __post_init__(self) -> None:
        if len(self.grip) != len(NAMES) or len(self.rolling) != len(NAMES):
            raise ValueError(f"SurfaceConfig: grip and rolling need one value per class {NAMES}")
        if min(self.grip) <= 0 or min(self.rolling) < 0:
            raise ValueError(
                f"SurfaceConfig: grip must be > 0 and rolling >= 0, got {self.grip}, {self.rolling}"
            )
        lo, hi = self.section_m
        if not 0 < lo <= hi or self.runoff_m < 0 or self.kerb_m < 0:
            raise ValueError(f"SurfaceConfig: section_m must be 0 < lo <= hi and widths >= 0, got {self}")
        if min(self.ground_size) < 1 or self.ground_px_per_m <= 0 or self.ground_blur < 0:
            raise ValueError(
                f"SurfaceConfig: bad ground image settings {self.ground_size}, {self.ground_px_per_m}"
            )


@struct.dataclass
class TerrainParams:
    """The surface raster (a pytree leaf) and its static settings; `EnvParams.terrain` (None: surfaces off)."""

    surface: jax.Array  # [H, W] int32 class id
    origin: jax.Array  # [2] world (x, y) of the corner of cell [0, 0]
    res: float = struct.field(pytree_node=False, default=0.05)
    grip: tuple[float, ...] = struct.field(pytree_node=False, default=SurfaceConfig.grip)
    rolling: tuple[float, ...] = struct.field(pytree_node=False, default=SurfaceConfig.rolling)
    ground_image: bool = struct.field(pytree_node=False, default=False)
    ground_size: tuple[int, int] = struct.field(pytree_node=False, default=SurfaceConfig.ground_size)
    ground_px_per_m: float = struct.field(pytree_node=False, default=40.0)
    ground_behind_m: float = struct.field(pytree_node=False, default=0.5)
    ground_blur: float = struct.field(pytree_node=False, default=0.01)


# ------------------------------------------------------------------------------------------ the raster


def generate_layout(
    cfg: SurfaceConfig, dist: np.ndarray, progress: np.ndarray, track_length: float, res: float
) -> np.ndarray:
    """int32 [H, W] class ids from the seed (module docstring); `dist` signed distance to the walls (m, + on the
    track) and `progress` lap fraction of the nearest centreline point, per `res` m cell. `road_patches` discs of
    grass or gravel, centred on random asphalt cells, then cover the asphalt they overlap (obstacles a driver can
    steer around)."""
    rng = np.random.default_rng(cfg.seed)
    n = 2 * max(1, round(track_length / (2 * np.mean(cfg.section_m))))  # even: road and off-road alternate
    ends = np.cumsum(rng.uniform(*cfg.section_m, n))
    ends = ends * (track_length / ends[-1])  # stretched to the lap
    section = np.minimum(np.searchsorted(ends, progress * track_length, side="right"), n - 1)
    first = int(rng.integers(2))
    off_kind = np.array([(GRAVEL, GRASS)[(first + k // 2) % 2] for k in range(n)])  # alternates off-road
    runoff_kind = rng.choice([GRAVEL, GRASS], n)
    road = ((np.arange(n) % 2 == 0) | (not cfg.offroad))[section]
    ids = np.where(
        dist < cfg.runoff_m, runoff_kind[section], np.where(dist < cfg.runoff_m + cfg.kerb_m, KERB, ASPHALT)
    )
    ids = np.where(road, ids, off_kind[section])
    ids = np.where(dist < 0, BARRIER, ids).astype(np.int32)
    asphalt = np.argwhere(ids == ASPHALT)
    for _ in range(cfg.road_patches if len(asphalt) else 0):
        r, c = asphalt[rng.integers(len(asphalt))]
        radius = rng.uniform(*cfg.patch_radius_m) / res
        k = int(np.ceil(radius))
        rows, cols = np.ogrid[max(r - k, 0) : r + k + 1, max(c - k, 0) : c + k + 1]
        disc = ((rows - r) ** 2 + (cols - c) ** 2 <= radius**2) & (ids[rows, cols] == ASPHALT)
        ids[rows, cols] = np.where(disc, rng.choice([GRAVEL, GRASS]), ids[rows, cols])
    return ids


def layer_path(track_source: str | Path | None, cfg: SurfaceConfig) -> Path | None:
    """The layer PNG to read: `cfg.layer`, else `<stem>_surface.png` beside a map YAML when it exists."""
    if cfg.layer == "seed":
        return None
    if cfg.layer:
        return Path(cfg.layer)
    if track_source is not None and Path(str(track_source)).suffix.lower() in (".yaml", ".yml"):
        beside = Path(track_source).with_name(Path(track_source).stem + "_surface.png")
        return beside if beside.is_file() else None
    return None


def _cell_centres(origin: np.ndarray, res: float, shape: tuple[int, int]) -> np.ndarray:
    cx = origin[0] + (np.arange(shape[1]) + 0.5) * res
    cy = origin[1] + (np.arange(shape[0]) + 0.5) * res
    return np.stack(np.meshgrid(cx, cy), -1)  # [H, W, 2]


def read_layer(png: Path, yaml_path: Path, dist: np.ndarray, origin: np.ndarray, res: float) -> np.ndarray:
    """int32 [H, W] class ids on the env grid from a layer PNG over the map `yaml_path` (nearest pixel)."""
    free, map_res, map_origin = maps.read_occupancy(yaml_path)
    try:
        with Image.open(png) as im:
            ids = np.asarray(im if im.mode in ("P", "L") else im.convert("L"))
    except OSError as e:
        raise ValueError(f"{png}: cannot read the surface layer: {e}") from e
    if ids.shape != free.shape:
        raise ValueError(
            f"{png}: surface layer is {ids.shape[::-1]} px, its map {yaml_path.name} is {free.shape[::-1]}"
        )
    cols, rows = maps.world_to_pixels(
        _cell_centres(origin, res, dist.shape), free.shape, map_res, map_origin
    )
    r = np.clip(np.rint(rows), 0, free.shape[0] - 1).astype(np.int64)
    c = np.clip(np.rint(cols), 0, free.shape[1] - 1).astype(np.int64)
    out = ids[r, c].astype(np.int32)
    bad = (dist >= 0) & (out > BARRIER)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ValueError(
            f"{png}: value {out[i, j]} at pixel (row {r[i, j]}, column {c[i, j]}) on the track is not a class id "
            f"(0..{BARRIER}: {', '.join(NAMES)}, barrier)"
        )
    # the map and the env grid trace the walls at different resolutions: a track cell that the layer marks barrier
    # takes the class of the nearest surface pixel
    barrier = out == BARRIER
    nearest = ndimage.distance_transform_edt(barrier, return_distances=False, return_indices=True)
    out = np.where(barrier, out[nearest[0], nearest[1]], out)
    return np.where(dist < 0, BARRIER, out).astype(np.int32)


def write_layer(terrain: TerrainParams, yaml_path: str | Path, out: str | Path) -> Path:
    """Write the raster as a layer PNG over the map `yaml_path` (same size as its image, palette = `PALETTE`)."""
    free, map_res, map_origin = maps.read_occupancy(yaml_path)
    rows, cols = np.meshgrid(np.arange(free.shape[0]), np.arange(free.shape[1]), indexing="ij")
    world = maps.pixels_to_world(cols, rows, free.shape, map_res, map_origin)
    ids = np.asarray(surface_at(terrain, jnp.asarray(world, jnp.float32))).astype(np.uint8)
    im = Image.fromarray(ids, mode="P")
    im.putpalette([v for rgb in PALETTE for v in rgb])
    im.save(out)
    return Path(out)


def build(
    cfg: SurfaceConfig,
    track_length: float,
    dist: np.ndarray,
    progress: np.ndarray,
    origin: np.ndarray,
    res: float,
    track_source: str | Path | None = None,
) -> TerrainParams:
    """TerrainParams on the env grid: from a layer PNG (`layer_path`) or the seed."""
    png = layer_path(track_source, cfg)
    if png is not None:
        if track_source is None or not png.is_file():
            raise FileNotFoundError(
                f"surface layer {png}: needs an existing PNG and a map track (a .yaml path)"
            )
        surface = read_layer(png, Path(track_source), dist, origin, res)
    else:
        surface = generate_layout(cfg, dist, progress, track_length, res)
    return TerrainParams(
        surface=jnp.asarray(surface, jnp.int32),
        origin=jnp.asarray(origin, jnp.float32),
        res=float(res),
        grip=tuple(float(v) for v in cfg.grip),
        rolling=tuple(float(v) for v in cfg.rolling),
        ground_image=cfg.ground_image,
        ground_size=tuple(int(v) for v in cfg.ground_size),
        ground_px_per_m=float(cfg.ground_px_per_m),
        ground_behind_m=float(cfg.ground_behind_m),
        ground_blur=float(cfg.ground_blur),
    )


# ------------------------------------------------------------------------------------------ lookups (JAX)


def surface_at(terrain: TerrainParams, xy: jax.Array) -> jax.Array:
    """int32 class id of the cell holding each world point [..., 2]; off the raster: barrier."""
    h, w = terrain.surface.shape
    g = jnp.floor((xy - terrain.origin) / terrain.res).astype(jnp.int32)
    inside = (g[..., 0] >= 0) & (g[..., 0] < w) & (g[..., 1] >= 0) & (g[..., 1] < h)
    flat = jnp.clip(g[..., 1], 0, h - 1) * w + jnp.clip(g[..., 0], 0, w - 1)
    return jnp.where(inside, terrain.surface.reshape(-1)[flat], BARRIER)


def axle_forces(
    terrain: TerrainParams, front: jax.Array, rear: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(grip under the front axle, grip under the rear axle, mean rolling resistance coefficient) at points [2]."""
    grip = jnp.asarray((*terrain.grip, terrain.grip[ASPHALT]), jnp.float32)  # barrier: never driven on
    rolling = jnp.asarray((*terrain.rolling, terrain.rolling[ASPHALT]), jnp.float32)
    f, r = surface_at(terrain, front), surface_at(terrain, rear)
    return grip[f], grip[r], 0.5 * (rolling[f] + rolling[r])


def _hash01(ix: jax.Array, iy: jax.Array, salt: int) -> jax.Array:
    """Uniform [0, 1) from integer cell coordinates (a 32-bit integer mix, the same on every backend)."""
    u = jnp.uint32
    h = jax.lax.bitcast_convert_type(ix, u) * u(0x8DA6B343) ^ jax.lax.bitcast_convert_type(iy, u) * u(
        0xD8163841
    )
    h = h ^ u(salt * 0x9E3779B1 & 0xFFFFFFFF)
    h = (h ^ (h >> 15)) * u(0x2C1B3C6D)
    h = (h ^ (h >> 12)) * u(0x297A2D39)
    h = h ^ (h >> 15)
    return (h >> 8).astype(jnp.float32) / float(1 << 24)


def _noise(xy: jax.Array, cell: float, salt: int) -> jax.Array:
    g = jnp.floor(xy / cell).astype(jnp.int32)
    return _hash01(g[..., 0], g[..., 1], salt)


def texture(terrain: TerrainParams, xy: jax.Array) -> jax.Array:
    """float32 RGB [..., 3] of the ground at world points [..., 2] (module docstring: colour + pattern)."""
    cls = surface_at(terrain, xy)
    fine, coarse = _noise(xy, 0.025, 1), _noise(xy, 0.05, 2)
    base = jnp.asarray(PALETTE, jnp.float32)[cls]
    asphalt = base + 24.0 * (fine[..., None] - 0.5)
    band = jnp.mod(jnp.floor((xy[..., 0] + xy[..., 1]) / 0.2), 2.0)[..., None]  # kerb: red / white bands
    kerb = jnp.where(band > 0, base, jnp.asarray((235.0, 235.0, 230.0))) + 12.0 * (fine[..., None] - 0.5)
    gravel = base * (0.65 + 0.7 * fine[..., None])
    grass = (
        base + jnp.asarray((20.0, 70.0, 15.0)) * (coarse[..., None] - 0.5) + 16.0 * (fine[..., None] - 0.5)
    )
    k = cls[..., None]
    out = jnp.where(k == ASPHALT, asphalt, jnp.where(k == KERB, kerb, jnp.where(k == GRAVEL, gravel, base)))
    return jnp.where(k == GRASS, grass, out)


def ground_geometry(terrain: TerrainParams) -> tuple[float, float, float]:
    """(px_per_m, robot_row, robot_col) of the ground image: where the rear axle sits (continuous pixel)."""
    rows, cols = terrain.ground_size
    return (
        terrain.ground_px_per_m,
        rows - 1.0 - terrain.ground_behind_m * terrain.ground_px_per_m,
        (cols - 1) / 2.0,
    )


def ground_image(terrain: TerrainParams, pose: jax.Array) -> jax.Array:
    """uint8 [rows, cols, 3] top-down image of the ground around the pose (x, y, yaw) of the rear axle; farther
    pixels average the texture over a footprint ground_blur * d**2 wide (four samples)."""
    ppm, r0, c0 = ground_geometry(terrain)
    rows, cols = terrain.ground_size
    fwd = (r0 - np.arange(rows, dtype=np.float32))[:, None] / ppm
    left = (c0 - np.arange(cols, dtype=np.float32))[None, :] / ppm
    foot = terrain.ground_blur * (fwd**2 + left**2)  # [rows, cols] m, static
    offsets = (
        np.array([(-1, -1), (-1, 1), (1, -1), (1, 1)], np.float32) * 0.25
    )  # +-1/4: a box of the footprint
    c, s = jnp.cos(pose[2]), jnp.sin(pose[2])
    f = jnp.asarray(np.broadcast_to(fwd, foot.shape)[None] + offsets[:, 0, None, None] * foot)
    lt = jnp.asarray(np.broadcast_to(left, foot.shape)[None] + offsets[:, 1, None, None] * foot)
    xy = jnp.stack([pose[0] + c * f - s * lt, pose[1] + s * f + c * lt], -1)  # [4, rows, cols, 2]
    rgb = texture(terrain, xy).mean(0)
    return jnp.clip(jnp.round(rgb), 0, 255).astype(jnp.uint8)


# ------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> None:
    """Write a map's surface layer PNG (`<stem>_surface.png` beside it) generated from a seed."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("map_yaml")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    yaml_path = Path(args.map_yaml)
    out = yaml_path.with_name(yaml_path.stem + "_surface.png")
    track = get_track(str(yaml_path))
    check_track(track)
    grid = rasterize(track, DEFAULT_RESOLUTION)  # the JAX env's grid, as `make_params` builds it
    cfg = SurfaceConfig(seed=args.seed, layer="seed")
    terrain = build(cfg, float(track.length), grid.dist, grid.progress, grid.origin, grid.res)
    print(write_layer(terrain, yaml_path, out))


if __name__ == "__main__":
    main()
