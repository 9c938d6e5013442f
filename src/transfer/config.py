"""The experiment's config: variants, seeds, budgets, tracks, the two pretraining sources, and the PPO and
pretraining configs derived from it for one variant or source."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from src import config
from src.config import (
    DataConfig,
    EnvConfig,
    EvalConfig,
    ModelConfig,
    ObjectivesConfig,
    PPOConfig,
    PretrainConfig,
    RLConfig,
    RunConfig,
    TrainingConfig,
)

BASE_VARIANTS = ("scratch", "frozen_random", "frozen_pretrained", "finetuned")


PRETRAINED = ("frozen_pretrained", "finetuned")


SOURCES = ("cmht", "sim")


@dataclasses.dataclass(frozen=True)
class TransferSection:
    """What the experiment compares and where."""

    variants: tuple[str, ...] = BASE_VARIANTS  # base names; pretrained ones run once per source
    sources: tuple[str, ...] = SOURCES
    seeds: int = 5  # seeds 0 .. seeds-1 (run.seed is added)
    budgets: tuple[float, ...] = (0.25, 0.5, 1.0)  # fractions of ppo.total_env_steps at which to evaluate
    # "procedural:<seed>" or a track name / map .yaml path (tracks.get_track)
    train_tracks: tuple[str, ...] = ("procedural:1", "procedural:2", "procedural:3", "procedural:4")
    eval_tracks: tuple[str, ...] = ("procedural:101", "tests/fixtures/tracks/Spielberg/Spielberg.yaml")
    max_speed: float = 10.0  # m/s: the car's top speed; corners bind below it
    frame_reward: float = -0.1  # per control step: the time cost that makes a faster lap a higher return


@dataclasses.dataclass(frozen=True)
class SimRecordConfig:
    """The positive control's pretraining data: the pure-pursuit driver on the training tracks."""

    episodes_per_track: int = 4
    frames: int = 64  # per episode
    frame_every: int = 4  # control steps between frames
    speed_range: tuple[float, float] = (3.0, 8.0)  # m/s target speed per episode
    noise: tuple[float, float] = (0.1, 0.15)  # std of the [motor, steering] noise
    max_lateral_accel: float = 8.0  # the driver's cornering limit (m/s^2)


@dataclasses.dataclass(frozen=True)
class PretrainSection:
    """Both pretraining sources share the optimisation and objectives; `cmht` is a CMHT data section."""

    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    objectives: ObjectivesConfig = dataclasses.field(default_factory=ObjectivesConfig)
    cmht: DataConfig = dataclasses.field(default_factory=DataConfig)
    sim: SimRecordConfig = dataclasses.field(default_factory=SimRecordConfig)
    probe_samples: int = 128


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """One transfer experiment (`python -m src.training.transfer`)."""

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    env: EnvConfig = dataclasses.field(default_factory=EnvConfig)
    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    transfer: TransferSection = dataclasses.field(default_factory=TransferSection)
    pretrain: PretrainSection = dataclasses.field(default_factory=PretrainSection)


def variant_names(cfg: TransferConfig) -> tuple[str, ...]:
    """Every variant of the experiment: the base names, the pretrained ones once per source."""
    bad = [v for v in cfg.transfer.variants if v not in BASE_VARIANTS]
    if bad:
        raise config.ConfigError(f"transfer.variants: unknown {bad}; valid: {list(BASE_VARIANTS)}")
    bad = [s for s in cfg.transfer.sources if s not in SOURCES]
    if bad:
        raise config.ConfigError(f"transfer.sources: unknown {bad}; valid: {list(SOURCES)}")
    out = []
    for v in cfg.transfer.variants:
        out += [f"{v}_{s}" for s in cfg.transfer.sources] if v in PRETRAINED else [v]
    return tuple(out)


def select_variants(cfg: TransferConfig, arg: str | None) -> tuple[str, ...]:
    """`--variants a,b`: full names, or a base name for all its sources; unknown names list the valid ones."""
    valid = variant_names(cfg)
    if not arg:
        return valid
    picked: list[str] = []
    for name in (a.strip() for a in arg.split(",") if a.strip()):
        matches = [v for v in valid if v == name or (name in PRETRAINED and v.startswith(name + "_"))]
        if not matches:
            raise ValueError(f"--variants: unknown variant {name!r}; valid: {list(valid)}")
        picked += [m for m in matches if m not in picked]
    return tuple(picked)


def select_seeds(cfg: TransferConfig, arg: str | None) -> tuple[int, ...]:
    """`--seeds 0-4` or `--seeds 0,2,5`: seed indices in [0, transfer.seeds)."""
    n = cfg.transfer.seeds
    if not arg:
        return tuple(range(n))
    seeds: list[int] = []
    try:
        for part in arg.split(","):
            lo, _, hi = part.partition("-")
            seeds += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"--seeds {arg!r}: expected a range like 0-4 or a list like 0,2,5") from None
    bad = [s for s in seeds if not 0 <= s < n]
    if bad or not seeds:
        raise ValueError(f"--seeds {arg!r}: seeds must lie in 0..{n - 1} (transfer.seeds = {n}); got {bad or seeds}")
    return tuple(sorted(set(seeds)))


def source_of(variant: str) -> str | None:
    return variant.rsplit("_", 1)[1] if variant.startswith(PRETRAINED) else None


def config_sha256(cfg: TransferConfig) -> str:
    """Hash of everything a part's numbers depend on: the whole config except which variants and how many seeds
    the experiment holds (those only choose which parts exist)."""
    data = config.to_dict(cfg)
    data["transfer"] = {k: v for k, v in data["transfer"].items() if k not in ("variants", "seeds")}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def run_path(cfg: TransferConfig) -> Path:
    return Path(cfg.run.out_dir) / cfg.run.name


def rl_config(cfg: TransferConfig, name: str = "transfer", pretrained: str = "", freeze: bool = False) -> RLConfig:
    """The PPO config of one variant (the experiment's model, env, PPO and eval sections)."""
    return RLConfig(
        run=dataclasses.replace(cfg.run, name=name),
        model=cfg.model,
        env=cfg.env,
        ppo=dataclasses.replace(cfg.ppo, agent="raceformer"),
        finetune=config.FinetuneConfig(pretrained_ckpt=pretrained, freeze_encoders=freeze),
        eval=cfg.eval,
    )


def pretrain_config(cfg: TransferConfig, source: str) -> PretrainConfig:
    """The pretraining run of one source: the experiment's model, the shared optimisation and objectives."""
    data = cfg.pretrain.cmht
    if source == "sim":  # recorded in memory by `record_sim_frames`: the pretrainer gets it as its data_fn
        data = DataConfig(source="episodes", root="simulator:" + ",".join(cfg.transfer.train_tracks))
    return PretrainConfig(
        run=RunConfig(name=f"pretrain_{source}", out_dir=str(run_path(cfg)), seed=cfg.run.seed, resume=True),
        model=cfg.model,
        data=data,
        training=cfg.pretrain.training,
        objectives=cfg.pretrain.objectives,
    )
