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


@dataclasses.dataclass(frozen=True)
class ModalityConfig:
    """Input of one modality as the encoder sees it (Contract 1, without the batch axis).

    shape: (H, W, C) for images and BEV grids, (L, C) for 1-D sequences such as a raw LiDAR scan, (k,) for vectors.
    patch_size: side of a square patch (length of a 1-D patch); 0 means the model's default `patch_size`.
    """

    shape: tuple[int, ...] = (64, 64, 3)
    patch_size: int = 0


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
            "gps": ModalityConfig(shape=(4,)),
            "imu": ModalityConfig(shape=(6,)),
        }
    )

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
    norm_pix_loss: bool = False
    dtype: Literal["float32", "bfloat16"] = "float32"
    log_every: int = 10
    checkpoint_every: int = 50
    keep_checkpoints: int = 3


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
class PretrainConfig:
    """One pretraining run (`python -m src.training.pretrainer`)."""

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
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
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(args, value, strict=True)))
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
