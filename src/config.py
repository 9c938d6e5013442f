"""Typed run configuration: frozen dataclasses loaded from TOML, with `--set a.b=value` overrides.

One top-level config object describes one run (`PretrainConfig` for the pretrainer, `RLConfig` for PPO).
Sections are frozen dataclasses; a TOML table maps onto a section field by field. Unknown sections or keys and
values of the wrong type are errors that name the key and list the valid ones, so a typo never silently falls
back to a default. `to_toml` writes the resolved config back (every run saves it next to its checkpoints).
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import tomli_w

MODALITIES: tuple[str, ...] = ("lidar", "rgb", "radar", "ir", "gps", "imu")
"""Canonical modality order: tokens are concatenated in this order by the fusion module."""


class ConfigError(ValueError):
    """A config file or override does not fit the schema (unknown key, wrong type, bad value)."""


# --------------------------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where a run writes and how it is seeded."""

    name: str = "debug"
    out_dir: str = "runs"
    seed: int = 0
    resume: bool = True  # continue from the run's latest checkpoint when one exists


@dataclasses.dataclass(frozen=True)
class ModalityConfig:
    """Input of one modality as the encoder sees it (Contract 1, without the batch axis).

    shape: (H, W, C) for images and BEV grids, (L, C) for 1-D sequences such as a raw LiDAR scan, (k,) for vectors.
    patch_size: side of a square patch (length of a 1-D patch); 0 means the model's default `patch_size`.
    """

    shape: tuple[int, ...] = (64, 64, 3)
    patch_size: int = 0


@dataclasses.dataclass(frozen=True)
class BevConfig:
    """The BEV grid of the sensor contract (src/contract.py), shared by LiDAR and radar rasters of every source.

    Metric extent in the LiDAR frame (x forward, y left, z up, metres; z relative to the LiDAR, not the ground);
    the size in cells comes from model.modalities.lidar/radar.shape (resolution = extent / cells). Raw
    intensities divided by intensity_max give the mean-intensity channel (Velodyne: 0..255). Part of [model]
    so that it is exported with the encoder and a fine-tuning run builds its BEV the same way.
    """

    x_range: tuple[float, float] = (-51.2, 51.2)
    y_range: tuple[float, float] = (-51.2, 51.2)
    z_range: tuple[float, float] = (-3.0, 3.0)
    intensity_max: float = 255.0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The Raceformer: per-modality ViT encoders, a fusion transformer and heads."""

    embed_dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    patch_size: int = 16
    fusion_depth: int = 2
    dropout: float = 0.0
    pos_embedding: Literal["sincos", "learned"] = "sincos"
    missing_modality: Literal["mask", "learned_token"] = "mask"
    vector_tokens: int = 1
    decoder_dim: int = 64
    decoder_depth: int = 1
    decoder_heads: int = 4
    projection_dim: int = 64
    action_dim: int = 2
    init_log_std: float = -0.5
    modalities: dict[str, ModalityConfig] = dataclasses.field(
        default_factory=lambda: {
            "lidar": ModalityConfig(shape=(64, 64, 4)),
            "rgb": ModalityConfig(shape=(64, 64, 3)),
            "radar": ModalityConfig(shape=(64, 64, 3)),
            "ir": ModalityConfig(shape=(64, 64, 1)),
            "gps": ModalityConfig(shape=(5,)),
            "imu": ModalityConfig(shape=(6,)),
        }
    )
    bev: BevConfig = dataclasses.field(default_factory=BevConfig)

    def __post_init__(self) -> None:
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown:
            raise ConfigError(f"model.modalities: unknown modality {unknown}; valid: {list(MODALITIES)}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"model.embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where samples come from and how each modality is preprocessed."""

    source: Literal["cmht", "rosbag", "episodes"] = "cmht"
    root: str = "data/cmht_demo"
    synthesize_if_missing: bool = False
    synthetic_frames: int = 200
    on_error: Literal["raise", "skip"] = "raise"
    num_workers: int = 0
    prefetch: int = 2
    shuffle: bool = True
    # LiDAR-clock sync (src/data/sync.py): per-sensor nearest-neighbour tolerance in s (rgb/ir/radar; absent =
    # half that sensor's median period), the widest gap GPS change points / IMU records are interpolated across
    # (IMU: extrapolated that far beyond the ends; GPS: the edge fix is held 1 s, never extrapolated), and the GPS
    # segment speed (m/s) above which a fix jump is not motion.
    sync_tolerance: dict[str, float] = dataclasses.field(default_factory=dict)
    sync_gps_max_gap: float = 10.0
    sync_imu_max_gap: float = 1.0
    sync_gps_max_speed: float = 80.0
    # radar BEV values (src/data/bev.py) map to ~[0, 1]; the grid itself is [model.bev]
    radar_velocity_scale: float = 20.0
    radar_rcs_scale: float = 20.0
    # source = "episodes": cameras to load (views for the multi-view objectives), the one that feeds `rgb`
    # ("" = the first), the temporal-pair offset range in frames [min, max], and recording a demo set on first use.
    episode_cameras: tuple[str, ...] = ("front", "front_left", "front_right")
    episode_rgb_camera: str = ""
    episode_dt: tuple[int, int] = (1, 3)
    record_if_missing: bool = False
    record_episodes: int = 8
    record_frames: int = 64
    record_drop_prob: float = 0.1  # probability that a recorded camera frame is dropped (exercises the masks)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Optimisation of the pretrainer."""

    steps: int = 100
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    mask_ratio: float = 0.5
    dirichlet_alpha: float = 0.0
    # modalities whose masked-modeling targets are normalised per patch (camera images; not sparse BEV grids)
    norm_pix_loss: tuple[Literal["lidar", "rgb", "radar", "ir"], ...] = ("rgb", "ir")
    dtype: Literal["float32", "bfloat16"] = "float32"
    log_every: int = 10
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    min_lr_ratio: float = 0.0  # cosine decay ends at learning_rate * min_lr_ratio
    export_encoder: bool = True  # write runs/<name>/encoder (encoders + fusion) when the run completes


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh and multi-host runtime. data * fsdp must equal the number of devices (-1: all the rest)."""

    data: int = -1
    fsdp: int = 1
    param_sharding: Literal["replicated", "fsdp"] = "replicated"
    distributed: Literal["auto", "off", "on"] = "auto"
    coordinator_address: str = ""
    num_processes: int = 0
    process_id: int = -1


@dataclasses.dataclass(frozen=True)
class ObjectivesConfig:
    """Weights of the pretraining objectives summed into the loss (0 = off)."""

    masked_modeling: float = 1.0
    # Episode (multi-camera) objectives, src/objectives/contrastive.py `contrastive_loss`; need data.source = "episodes".
    multiview: float = 0.0  # InfoNCE between the cameras of one instant
    temporal: float = 0.0  # InfoNCE between one camera at t and t + dt (data.episode_dt)
    multipositive: float = 0.0  # SupCon: all views of t and t + dt are positives of each other
    latent_recon: float = 0.0  # reconstruct a dropped camera's fused latent from the other cameras'
    temperature: float = 0.1  # InfoNCE / SupCon temperature
    latent_decoder_hidden: int = 128


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run (`python -m src.training.pretrainer`)."""

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    objectives: ObjectivesConfig = dataclasses.field(default_factory=ObjectivesConfig)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Which simulator PPO trains in. jax_racecar and gymnax run the jitted engine; bullet and gymnasium the
    host loop."""

    kind: Literal["jax_racecar", "bullet", "gymnasium", "gymnax"] = "jax_racecar"
    id: str = "Pendulum-v1"  # gymnasium or gymnax id (kind = "gymnasium" / "gymnax")
    track: str = ""  # track name for the racing envs ("" = the env's default track)
    num_envs: int = 16
    max_episode_steps: int = 0  # 0 = the env's own time limit
    # racing envs (jax_racecar, bullet): sensors and the maximize_progress task
    lidar_rays: int = 1080
    camera: bool = False  # render the front camera (rgb_camera -> the rgb modality; costly on CPU)
    time_limit: float = 120.0  # s of simulated time, then truncated
    signed_progress: bool = False  # reward forward progress only (racecar_gym rewards |d progress|)
    collision_reward: float = 0.0
    terminate_on_collision: bool = False
    reset_mode: Literal["grid", "random"] = "grid"  # training starts (jax_racecar); evaluation uses "grid"
    # jax_racecar ground surfaces (src/envs/surfaces.py) and a learned terrain cost in the reward (issue 13)
    surfaces: bool = False
    surface_seed: int = 0
    surface_offroad: bool = True  # all-grass / all-gravel sections between road sections (False: road only)
    surface_patches: int = 0  # grass / gravel discs on the asphalt per lap (obstacles to steer around)
    terrain_cost_run: str = ""  # a terrain run dir (src.training.terrain on source.kind = "sim")
    terrain_cost_weight: float = 0.0  # the reward adds -weight * the run's learned cost of the patch under the car


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters; every implementation detail is a named switch (CleanRL's names)."""

    total_env_steps: int = 1_000_000
    num_steps: int = 128  # rollout length per env and iteration
    num_minibatches: int = 4
    update_epochs: int = 10
    learning_rate: float = 3e-4
    anneal_lr: bool = True  # linear decay to 0 over the run
    adam_eps: float = 1e-5
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_coef: float = 0.2
    clip_vloss: bool = True
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    max_grad_norm: float = 0.5
    norm_adv: bool = True  # per minibatch
    norm_obs: bool = False  # running mean/std z-scoring of observations (which ones: norm_obs_modalities)
    # Raceformer agent: the modalities norm_obs normalises; empty = the vector modalities (shape (k,)). Inputs of
    # an imported encoder ([finetune] pretrained_ckpt) are never normalised: they reach it as in pretraining.
    norm_obs_modalities: tuple[str, ...] = ()
    clip_obs: float = 10.0
    norm_reward: bool = False  # divide by the running std of the discounted return
    clip_reward: float = 10.0
    bootstrap_truncation: bool = True  # a time-limit end bootstraps from V(final obs)
    action_dist: Literal["clip", "tanh"] = "clip"
    action_scale: float = 1.0  # env action = scale * squash(u)
    agent: Literal["mlp", "raceformer"] = "raceformer"
    mlp_hidden: tuple[int, ...] = (64, 64)
    log_every: int = 1  # iterations
    checkpoint_every: int = 10  # iterations (0 = only at the end)
    keep_checkpoints: int = 3


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Start PPO from a pretraining run's exported encoder + fusion weights, optionally frozen."""

    pretrained_ckpt: str = ""  # path of an exported encoder ("" = train from scratch)
    freeze_encoders: bool = False


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Periodic deterministic evaluation (policy mean) during training, and the `--eval` mode."""

    every: int = 10  # iterations (0 = off)
    episodes: int = 10
    # jax_racecar: episode e starts at lap fraction (e % K) / K on the centreline, K = start_positions, and
    # drives its laps from there; figures are reported as mean and spread over starts. 1 = the start line only.
    start_positions: int = 1
    max_steps: int = 2000  # per episode
    gif: bool = True  # --eval writes a top-down GIF of the first episode (the one from the start line)
    gif_frame_every: int = 4  # env steps per GIF frame


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """One PPO run (`python -m src.training.rl_agent`)."""

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)


# --------------------------------------------------------------------------------------------- loading

C = TypeVar("C")


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` (as parsed from TOML) against the annotation `tp` and convert it (lists -> tuples, ...)."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table for {tp.__name__}, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} does not fit {_type_name(tp)} ({'; '.join(errors)})")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (arg,) = get_args(tp)
        return [_convert(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {type(value).__name__} {value!r}")
        _, vt = get_args(tp)
        return {str(k): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported annotation {tp!r}")  # a schema bug, not a user error


def from_dict(cls: type[C], data: dict[str, Any], prefix: str = "") -> C:
    """Build the dataclass `cls` from a (TOML) dict; unknown keys and wrong types raise `ConfigError`."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"[{prefix}]" if prefix else "top level"
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if name in fields and get_origin(tp) is dict and dataclasses.is_dataclass(get_args(tp)[1]):
            # A table of sub-sections (e.g. model.modalities.lidar): start each entry from the default's entry.
            default = _field_default(fields[name])
            merged = {}
            for k, v in value.items() if isinstance(value, dict) else ():
                base = dataclasses.asdict(default[k]) if default and k in default else {}
                merged[k] = {**base, **v} if isinstance(v, dict) else v
            value = merged if isinstance(value, dict) else value
        kwargs[name] = _convert(value, tp, key)
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - dataclass signature mismatch is a schema bug
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from e


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _parse_override_value(raw: str) -> Any:
    """Parse the right-hand side of `--set key=value` as a TOML value; a bare word is a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings to a nested dict (a copy); the schema check happens in `from_dict`."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        path, raw = item.split("=", 1)
        keys = [k.strip() for k in path.strip().split(".")]
        if any(not k for k in keys):
            raise ConfigError(f"--set {item!r}: empty key in {path!r}")
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {k!r} is a value, not a section")
        node[keys[-1]] = _parse_override_value(raw.strip())
    return data


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list | tuple):
        return [_drop_none(v) for v in obj]
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain TOML-able data (tuples become lists, None values are left out)."""
    return _drop_none(dataclasses.asdict(cfg))


def to_toml(cfg: Any) -> str:
    return tomli_w.dumps(to_dict(cfg))


def save(cfg: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(cfg))
    return path


def load(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Load `cls` from a TOML file (or defaults when `path` is None) and apply `--set` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from e
    data = apply_overrides(data, overrides or [])
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path or cls.__name__}: {e}") from None


def replace(cfg: C, **sections: Any) -> C:
    """`dataclasses.replace` for nested configs: `replace(cfg, training={'steps': 5})`."""
    updates = {}
    for name, value in sections.items():
        current = getattr(cfg, name)
        updates[name] = dataclasses.replace(current, **value) if isinstance(value, dict) else value
    return dataclasses.replace(cfg, **updates)


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> argparse.ArgumentParser:
    parser.add_argument("--config", required=required, help="TOML config file (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (TOML syntax for the value; repeatable), e.g. --set training.steps=10",
    )
    return parser


def load_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """Load the config named by `--config`/`--set`, turning schema errors into a clean CLI exit."""
    try:
        return load(cls, args.config, args.overrides)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
