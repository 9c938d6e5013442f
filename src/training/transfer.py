"""The transfer experiment: does pretraining help the racing policy?

    python -m src.training.transfer --config configs/transfer_racecar.toml [--set k=v ...]
        [--variants a,b] [--seeds 0-4] [--pretrain-only] [--report-only] [--no-report] [--list-parts K]

For N seeds each, PPO trains the variants on the pure-JAX racing env:
  scratch                   the Raceformer trained from its random initialisation;
  frozen_random             a control: the same encoders + fusion, randomly initialised and frozen;
  frozen_pretrained_<src>   the encoders + fusion pretrained on source <src>, frozen;
  finetuned_<src>           the same, trained further.
Pretraining sources: `cmht` (CMHT-format data: the synthetic sequence, or a real CMHT root via
`pretrain.cmht.root`) and `sim`, the positive control: masked modeling on the simulator's own driving, recorded
on the training tracks through the same sensor contract the policy sees (the episode log format keeps no lidar,
so the recording is taken here, in memory, with the pure-pursuit driver of `src.data.episodes`' recorder).
Every variant takes the experiment's one `[model]`; the observation holds every modality the simulator produces
through the contract (lidar BEV on `[model.bev]`, camera RGB, GPS, IMU; radar and IR absent and masked).

The task has no ceiling: training episodes run on `transfer.train_tracks` (procedural tracks, `N` envs split in
equal slices, one track per slice), evaluation on `transfer.eval_tracks`, which training never sees (the
F1TENTH Spielberg map among them), from `eval.start_positions` starts spread around each, one lap each. The car's
top speed (`transfer.max_speed`) makes the minimum-time lap slower than flooring the throttle, and a time cost
per step (`transfer.frame_reward`) makes the return grow with lap speed: return = 100 * laps - cost * steps.
Every lap time is reported beside that track's minimum-time lap (`src.envs.laptime`).

Seeds run as a vmap axis of the jitted PPO engine (`ppo.SeedBatch`). Each variant is evaluated at the budgets
`transfer.budgets` (fractions of training) and the result of one (variant, seed group) is written to
`<run dir>/parts/<variant>__seeds<a>-<b>.npz` (plain arrays, a JSON record with the config hash) at once, so
SLURM array tasks can each run a part (`--variants`, `--seeds`) and `--report-only` aggregates every part
present into `<run dir>/report/`. Pretraining runs once per source under `<run dir>/pretrain_<src>/` and is
skipped when its exported encoder exists with the same config (`--pretrain-only` runs just that stage).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from src import config, processes
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
from src.envs import controllers, laptime
from src.envs.racecar import env as racecar
from src.envs.racecar.params import make_params
from src.envs.tracks.geometry import Track
from src.envs.tracks.procedural import procedural_track
from src.envs.tracks.registry import get_track
from src.training import ppo, rl_agent
from src.training.checkpoint import ENCODER_PARTS, encoder_sha256

BASE_VARIANTS = ("scratch", "frozen_random", "frozen_pretrained", "finetuned")
PRETRAINED = ("frozen_pretrained", "finetuned")
SOURCES = ("cmht", "sim")


# --------------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class TransferSection:
    """What the experiment compares and where."""

    variants: tuple[str, ...] = BASE_VARIANTS  # base names; pretrained ones run once per source
    sources: tuple[str, ...] = SOURCES
    seeds: int = 5  # seeds 0 .. seeds-1 (run.seed is added)
    budgets: tuple[float, ...] = (0.25, 0.5, 1.0)  # fractions of ppo.total_env_steps at which to evaluate
    # "procedural:<seed>" or a track name / map .yaml path (tracks.registry.get_track)
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


# --------------------------------------------------------------------------------------------- tracks and env


def load_track(spec: str) -> Track:
    """"procedural:<seed>" -> `procedural_track(seed)`; anything else -> `get_track` (name or map .yaml)."""
    if spec.startswith("procedural:"):
        try:
            seed = int(spec.split(":", 1)[1])
        except ValueError:
            raise config.ConfigError(f"track {spec!r}: expected procedural:<integer seed>") from None
        return procedural_track(seed)
    return get_track(spec)


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


def env_params(cfg: TransferConfig, track: Track, reset_mode: str | None = None) -> Any:
    """The racing env on `track` with the experiment's car: the run's sensors and task, the camera at the
    model's rgb size, `transfer.max_speed` and the time cost per step."""
    settings = rl_agent.env_settings(rl_config(cfg))
    if reset_mode is not None:
        settings["reset_mode"] = reset_mode
    if "rgb" in cfg.model.modalities:
        h, w = cfg.model.modalities["rgb"].shape[:2]
        settings.update(camera=True, camera_height=h, camera_width=w)
    return make_params(
        track, **settings, max_speed=cfg.transfer.max_speed, frame_reward=cfg.transfer.frame_reward
    )


def multi_track_env(cfg: TransferConfig, tracks: list[Track]) -> tuple[ppo.JaxEnv, list[Any]]:
    """`env.num_envs` cars split into equal contiguous slices, slice k on track k.

    Why slices: a track is a set of arrays of its own shapes (walls, distance and progress grids), so cars on
    different tracks cannot share one vmapped step; each slice is one vmapped step on its own track's constant
    arrays, all inside the engine's one jitted iteration (K copies of the env code, no gather of track data)."""
    n, k = cfg.env.num_envs, len(tracks)
    if k < 1 or n % k:
        raise config.ConfigError(f"env.num_envs={n} must be a multiple of the {k} transfer.train_tracks")
    per = n // k
    params = [env_params(cfg, t) for t in tracks]
    obs_fn = rl_agent.contract_obs_fn(rl_config(cfg), params[0])

    def cut(tree: Any, i: int) -> Any:
        return jax.tree.map(lambda x: x[i * per : (i + 1) * per], tree)

    def cat(trees: list[Any]) -> Any:
        return jax.tree.map(lambda *xs: jnp.concatenate(xs), *trees)

    def reset_batch(keys: jax.Array) -> tuple[Any, Any]:
        outs = [jax.vmap(lambda key, p=p: racecar.reset(key, p))(cut(keys, i)) for i, p in enumerate(params)]
        return cat([o[0] for o in outs]), cat([o[1] for o in outs])

    def step_batch(keys: jax.Array, state: Any, action: jax.Array) -> tuple:
        outs = [
            jax.vmap(lambda key, s, a, p=p: racecar.step(key, s, a, p))(cut(keys, i), cut(state, i), cut(action, i))
            for i, p in enumerate(params)
        ]
        return tuple(cat([o[j] for o in outs]) for j in range(6))

    env = ppo.JaxEnv(
        reset=lambda key: racecar.reset(key, params[0]),
        step=lambda key, state, action: racecar.step(key, state, action, params[0]),
        obs_fn=obs_fn,
        episode_info=rl_agent.RACING_INFO,
        reset_batch=reset_batch,
        step_batch=step_batch,
    )
    return env, params


def env_example(env: ppo.JaxEnv) -> Any:
    """One agent observation (no batch axis) of the env: what the agent is sized for."""
    return jax.jit(lambda key: env.obs_fn(env.reset(key)[0]))(jax.random.PRNGKey(0))


# --------------------------------------------------------------------------------------------- evaluation


@dataclasses.dataclass
class EvalTrack:
    name: str
    min_lap_time: float
    rollout: Callable[[ppo.Learner, Any], dict[str, np.ndarray]]  # stacked states [S] -> figures [S, E]


def eval_track(cfg: TransferConfig, spec: str) -> EvalTrack:
    """A jitted, seed-vmapped evaluation on one track: `eval.start_positions` starts spread around the lap,
    one deterministic episode each (one lap or `eval.max_steps` steps)."""
    track = load_track(spec)
    params = env_params(cfg, track, reset_mode="grid")
    env = ppo.JaxEnv(
        reset=lambda key: racecar.reset(key, params),
        step=lambda key, state, action: racecar.step(key, state, action, params),
        obs_fn=rl_agent.contract_obs_fn(rl_config(cfg), params),
        episode_info=rl_agent.RACING_INFO,
    )
    k = cfg.eval.start_positions
    starts = jnp.arange(k, dtype=jnp.float32) / k

    def reset(keys: jax.Array) -> tuple[Any, Any]:
        return jax.vmap(lambda key, p: racecar.reset_at(key, params, p))(keys, starts)

    compiled: dict[int, Callable] = {}

    def rollout(learner: ppo.Learner, states: ppo.TrainState) -> dict[str, np.ndarray]:
        if id(learner) not in compiled:
            one = lambda s, key: rl_agent.jax_eval_rollout(  # noqa: E731
                learner, env, s, key, k, cfg.eval.max_steps, reset
            )
            compiled[id(learner)] = jax.jit(jax.vmap(one, in_axes=(0, None)))
        rec = jax.device_get(compiled[id(learner)](states, jax.random.PRNGKey(cfg.run.seed + 10_000)))
        n_seeds = len(rec["done"])
        per = [rl_agent.episode_figures({k_: v[s] for k_, v in rec.items()}, params.control_dt) for s in range(n_seeds)]
        return {key: np.stack([p[key] for p in per]) for key in ("return", "clean", "lap_time")}

    limits = laptime.CarLimits.from_params(params)
    return EvalTrack(track.name, laptime.min_lap_time(track, limits), rollout)


# --------------------------------------------------------------------------------------------- pretraining


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


def record_sim_frames(cfg: TransferConfig, tracks: list[Track], seed: int) -> dict[str, Any]:
    """Contract samples of the pure-pursuit driver (random target speed, noisy actions, random starts) on
    `tracks`: stacked arrays {modality: [F, ...], "valid": {modality: [F]}}, exactly what the policy sees."""
    rec = cfg.pretrain.sim
    all_params = [env_params(cfg, track, reset_mode="random") for track in tracks]
    obs_fn = rl_agent.contract_obs_fn(rl_config(cfg), all_params[0])  # the scan layout is the same on every track
    frames: list[dict[str, Any]] = []
    for t_index, params in enumerate(all_params):

        def episode(key: jax.Array, params: Any = params) -> Any:
            k_reset, k_speed, k_run = jax.random.split(key, 3)
            obs, state = racecar.reset(k_reset, params)
            target = jax.random.uniform(k_speed, (), minval=rec.speed_range[0], maxval=rec.speed_range[1])

            def control_step(carry: tuple, k: jax.Array) -> tuple[tuple, None]:
                obs, state = carry
                k_noise, k_step = jax.random.split(k)
                a = controllers.pure_pursuit(
                    obs["pose"][jnp.array([0, 1, 5])], obs["velocity"][0], params.centreline, target_speed=target,
                    max_lateral_accel=rec.max_lateral_accel, max_speed=params.max_speed,
                )
                a = jnp.clip(a + jnp.asarray(rec.noise) * jax.random.normal(k_noise, (2,)), -1.0, 1.0)
                obs, state, *_ = racecar.step(k_step, state, a, params)
                return (obs, state), None

            def frame(carry: tuple, k: jax.Array) -> tuple[tuple, Any]:
                sample = obs_fn(carry[0])
                carry, _ = jax.lax.scan(control_step, carry, jax.random.split(k, rec.frame_every))
                return carry, sample

            return jax.lax.scan(frame, (obs, state), jax.random.split(k_run, rec.frames))[1]

        keys = jax.random.split(jax.random.PRNGKey(seed * 1000 + t_index), rec.episodes_per_track)
        out = jax.device_get(jax.jit(jax.vmap(episode))(keys))
        frames.append(jax.tree.map(lambda x: np.asarray(x).reshape((-1,) + x.shape[2:]), out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *frames)


def sim_data_fn(cfg: TransferConfig, tracks: list[Track]) -> Callable[..., Iterator[dict]]:
    """A pretrainer `data_fn` over the recorded simulator frames: a seeded, shuffled, repeated Grain pipeline
    (checkpointable like the CMHT one)."""

    def data_fn(pcfg: PretrainConfig, *, batch_size: int, shard_index: int, shard_count: int) -> Iterator[dict]:
        import grain

        samples = record_sim_frames(cfg, tracks, pcfg.run.seed)
        n = len(samples["valid"][next(iter(samples["valid"]))])
        if n < batch_size:
            raise ValueError(f"pretrain.sim: {n} recorded frames, fewer than training.batch_size={batch_size}")
        items = [jax.tree.map(lambda x, i=i: x[i], samples) for i in range(n)][shard_index::shard_count]
        ds = grain.MapDataset.source(items).shuffle(seed=pcfg.run.seed).repeat().batch(batch_size)
        return iter(ds.to_iter_dataset())

    return data_fn


def check_cmht_source(data: DataConfig, model: ModelConfig) -> None:
    """A CMHT root without usable samples is an error naming the root (before any training starts)."""
    from src.data import pipeline

    pipeline.ensure_dataset(data)
    source = pipeline.build_cmht_source(data, model)
    if len(source) == 0:
        raise ValueError(f"pretrain.cmht.root={data.root}: no usable samples (no LiDAR sweep survived sync)")


def pretrain(cfg: TransferConfig, source: str, tracks: list[Track]) -> Path:
    """Run (or reuse) the pretraining of `source`; returns its exported encoder. Skipped when the export exists
    and the run's stored config equals this one; a different stored config is the pretrainer's error (it
    names the keys and says how to start over)."""
    from src.training import pretrainer

    pcfg = pretrain_config(cfg, source)
    out = Path(pcfg.run.out_dir) / pcfg.run.name
    encoder = out / "encoder"
    if encoder.is_dir() and (out / "config.toml").is_file() and config.load(PretrainConfig, out / "config.toml") == pcfg:
        print(f"[pretrain {source}] reusing {encoder} (same config)", flush=True)
        return encoder
    if source == "cmht":
        check_cmht_source(pcfg.data, pcfg.model)
    result = pretrainer.train(pcfg, data_fn=sim_data_fn(cfg, tracks) if source == "sim" else None, progress=False)
    if result.encoder_dir is None:
        raise RuntimeError(f"pretraining {out} exported no encoder (stopped by {result.stopped_by})")
    print(f"[pretrain {source}] {result.step} steps in {result.wall_s:.0f} s -> {result.encoder_dir}", flush=True)
    return Path(result.encoder_dir)


def pretraining_figures(cfg: TransferConfig, source: str, tracks: list[Track]) -> dict[str, Any]:
    """`probe.pretraining_quality` of a source's run: linear probes on held-out labelled CMHT samples (the sim
    source has no object labels, so its encoder is probed on the same CMHT samples) against a random encoder,
    and the masked-patch reconstruction correlation on the source's own held-out samples."""
    from src.analysis import probe

    pcfg = pretrain_config(cfg, source)
    run = Path(pcfg.run.out_dir) / pcfg.run.name
    cmht_cfg = pretrain_config(cfg, "cmht")
    figures = probe.pretraining_quality(run, cmht_cfg, max_samples=cfg.pretrain.probe_samples, seed=cfg.run.seed)
    if source == "sim":
        figures = {k: v for k, v in figures.items() if not k.startswith("recon_r/")}
        full = probe.restore_pretrained(run, pcfg)
        held_out = record_sim_frames(cfg, tracks, cfg.run.seed + 1)  # another recording than pretraining's
        n = min(cfg.pretrain.probe_samples, len(held_out["valid"]["lidar"]) if "lidar" in held_out["valid"] else 0)
        held_out = jax.tree.map(lambda x: x[:n], held_out)
        if full is not None and n:
            for m, r in probe.reconstruction_correlation(full, held_out, pcfg, cfg.run.seed).items():
                figures[f"recon_r/{m}"] = r
    return {f"{source}/{k}": v for k, v in figures.items()}


# --------------------------------------------------------------------------------------------- one part


def params_digest(model: nnx.Module) -> str:
    """sha256 over the encoder + fusion parameters (name, dtype, shape, bytes): bitwise identity."""
    digest = hashlib.sha256()
    for part in ENCODER_PARTS:
        for path, var in sorted(nnx.to_flat_state(nnx.state(getattr(model, part), nnx.Param)), key=lambda t: str(t[0])):
            arr = np.ascontiguousarray(np.asarray(jax.device_get(var.get_value())))
            digest.update(f"{part}/{'/'.join(map(str, path))}:{arr.dtype.str}:{arr.shape}".encode())
            digest.update(arr.tobytes())
    return digest.hexdigest()


def budget_iterations(cfg: TransferConfig, total: int) -> list[int]:
    its = sorted({max(1, min(total, int(round(f * total)))) for f in cfg.transfer.budgets})
    bad = [f for f in cfg.transfer.budgets if not 0 < f <= 1]
    if bad:
        raise config.ConfigError(f"transfer.budgets: fractions in (0, 1] expected, got {bad}")
    return its


def run_part(
    cfg: TransferConfig,
    variant: str,
    seeds: tuple[int, ...],
    encoders: dict[str, Path],
    env: ppo.JaxEnv,
    evals: list[EvalTrack],
    engines: dict[tuple[bool, bool], ppo.SeedBatch],
    example: Any,
) -> dict[str, Any]:
    """Train `variant` for `seeds` as one vmapped batch, evaluate at every budget; returns the part's arrays
    and record. `engines` caches one compiled seed batch per kind of learner (frozen?, imported?): variants of
    one kind differ only in their parameters, so they share the compiled iteration and evaluation."""
    t0 = time.perf_counter()
    source = source_of(variant)
    encoder = str(encoders[source]) if source else ""
    freeze = variant.startswith("frozen")
    setups = []
    for s in seeds:
        rl = rl_config(cfg, f"{variant}_seed{s}", encoder, freeze)
        rl = config.replace(rl, run={"seed": cfg.run.seed + s})
        bundle = rl_agent.EnvBundle(2, example, lambda learner: ppo.JaxEngine(learner, env, cfg.env.num_envs), None)
        setups.append(rl_agent.setup(rl, bundle))
    kind = (freeze, bool(encoder))
    if kind not in engines:
        engines[kind] = ppo.SeedBatch(ppo.JaxEngine(setups[0].learner, env, cfg.env.num_envs))
    batch = engines[kind]
    learner = batch.engine.learner
    trains = [
        learner.init_state(su.params, example, jax.random.PRNGKey(cfg.run.seed + s)) for su, s in zip(setups, seeds)
    ]
    initial = [params_digest(learner.module(t.params).model) for t in trains]
    runner = batch.init(trains, [jax.random.PRNGKey(cfg.run.seed + s + 1) for s in seeds])
    total = setups[0].iterations
    budgets = budget_iterations(cfg, total)
    arrays: dict[str, list] = {}
    env_steps = []
    train_returns = []
    for it in range(1, total + 1):
        runner, metrics = batch.run_iteration(runner)
        train_returns.append([m.get("episode/return", np.nan) for m in metrics])
        if it in budgets:
            env_steps.append(it * cfg.ppo.num_steps * cfg.env.num_envs)
            for ev in evals:
                figures = ev.rollout(learner, runner.train)
                for key, value in figures.items():
                    arrays.setdefault(f"{ev.name}/{key}", []).append(value)
            print(
                f"[{variant} seeds {seeds[0]}-{seeds[-1]}] iteration {it}/{total}: "
                + ", ".join(f"{ev.name} return {np.mean(arrays[f'{ev.name}/return'][-1]):.1f}" for ev in evals),
                flush=True,
            )
    final = [params_digest(learner.module(ppo.SeedBatch.seed(runner, i).train.params).model) for i in range(len(seeds))]
    out = {k: np.stack(v, axis=1) for k, v in arrays.items()}  # [S, B, E]
    out["train_return"] = np.asarray(train_returns, np.float64).T  # [S, iterations]
    record = {
        "variant": variant,
        "seeds": list(seeds),
        "config_sha256": config_sha256(cfg),
        "encoder": encoder,
        "encoder_sha256": encoder_sha256(encoder) if encoder else "",
        "budgets_env_steps": env_steps,
        "eval_tracks": [ev.name for ev in evals],
        "min_lap_time_s": {ev.name: ev.min_lap_time for ev in evals},
        "encoder_digest_initial": initial,
        "encoder_digest_final": final,
        "wall_s": time.perf_counter() - t0,
    }
    return {"arrays": out, "record": record}


# --------------------------------------------------------------------------------------------- parts on disk


def part_path(cfg: TransferConfig, variant: str, seeds: tuple[int, ...]) -> Path:
    return run_path(cfg) / "parts" / f"{variant}__seeds{seeds[0]}-{seeds[-1]}.npz"


def write_part(path: Path, part: dict[str, Any]) -> Path:
    """Arrays and the JSON record in one .npz (no pickle); written to a temporary name, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **part["arrays"], record=np.array(json.dumps(part["record"])))
    tmp.replace(path)
    return path


def read_part(path: Path, cfg: TransferConfig) -> dict[str, Any]:
    """A part file; one written under another config is an error that says how to start over."""
    with np.load(path, allow_pickle=False) as z:
        record = json.loads(str(z["record"]))
        arrays = {k: z[k] for k in z.files if k != "record"}
    if record.get("config_sha256") != config_sha256(cfg):
        raise ValueError(
            f"{path}: written under another config (sha256 {str(record.get('config_sha256'))[:12]}, this config "
            f"{config_sha256(cfg)[:12]}); its results cannot be mixed with this run's. Start over: move "
            f"{run_path(cfg)} aside (or delete it), or give the experiment another run.name"
        )
    return {"arrays": arrays, "record": record}


def existing_parts(cfg: TransferConfig) -> list[dict[str, Any]]:
    return [read_part(p, cfg) for p in sorted((run_path(cfg) / "parts").glob("*__seeds*.npz"))]


def done_seeds(parts: list[dict[str, Any]], variant: str) -> set[int]:
    return {s for p in parts if p["record"]["variant"] == variant for s in p["record"]["seeds"]}


# --------------------------------------------------------------------------------------------- report


def report(cfg: TransferConfig, pretraining: dict[str, Any] | None = None) -> dict[str, Any]:
    """Aggregate every part present into `<run dir>/report/` (one report per evaluation track) and
    `<run dir>/report/report.md`; a seed present in two parts of one variant is an error."""
    from src.analysis.report import write_report

    parts = existing_parts(cfg)
    if not parts:
        raise FileNotFoundError(f"{run_path(cfg) / 'parts'}: no results yet; run the experiment first")
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for p in parts:
        by_variant.setdefault(p["record"]["variant"], []).append(p)
    order = [v for v in variant_names(cfg) if v in by_variant]
    budgets = parts[0]["record"]["budgets_env_steps"]
    tracks = parts[0]["record"]["eval_tracks"]
    min_laps = parts[0]["record"]["min_lap_time_s"]
    merged: dict[str, dict[str, np.ndarray]] = {}
    seeds_of: dict[str, list[int]] = {}
    for v in order:
        seen: list[int] = []
        for p in by_variant[v]:
            dup = sorted(set(seen) & set(p["record"]["seeds"]))
            if dup:
                raise ValueError(f"{run_path(cfg) / 'parts'}: variant {v} has seeds {dup} in more than one part")
            seen += p["record"]["seeds"]
        seeds_of[v] = sorted(seen)
        ps = sorted(by_variant[v], key=lambda p: p["record"]["seeds"][0])
        merged[v] = {k: np.concatenate([p["arrays"][k] for p in ps]) for k in ps[0]["arrays"]}
    if pretraining is None:
        file = run_path(cfg) / "pretraining.json"
        pretraining = json.loads(file.read_text()) if file.is_file() else None
    out = run_path(cfg) / "report"
    results = {}
    baseline = "scratch" if "scratch" in merged else order[0]
    sections = []
    for track in tracks:
        r = write_report(
            out / track,
            {v: merged[v][f"{track}/return"] for v in order},
            budgets,
            baseline=baseline,
            clean_laps={v: merged[v][f"{track}/clean"] for v in order},
            lap_times={v: merged[v][f"{track}/lap_time"] for v in order},
            min_lap_time=min_laps[track],
            pretraining=pretraining,
            seed=cfg.run.seed,
        )
        results[track] = r
        sections.append(f"## Evaluation track `{track}`\n\n![learning curve]({track}/learning_curve.png)\n\n"
                        + (out / track / "report.md").read_text())
    frozen_ok = {
        v: all(a == b for p in by_variant[v] for a, b in zip(p["record"]["encoder_digest_initial"],
                                                              p["record"]["encoder_digest_final"]))
        for v in order if v.startswith("frozen")
    }
    summary = {"variants": order, "seeds": seeds_of, "eval_tracks": tracks, "frozen_encoder_unchanged": frozen_ok,
               "wall_s": {v: sum(p["record"]["wall_s"] for p in by_variant[v]) for v in order}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(
        "# Transfer experiment\n\n" + "\n".join(sections)
        + f"\nFrozen variants' encoder + fusion bitwise unchanged by training: {frozen_ok}\n"
    )
    return {"tracks": results, **summary}


# --------------------------------------------------------------------------------------------- the command


def array_parts(cfg: TransferConfig, seeds_per_part: int) -> list[tuple[str, str]]:
    """The experiment cut into (variant, seed range) parts of at most `seeds_per_part` seeds: one SLURM array task
    each (`scripts/slurm/transfer_array.sh`), in the `--variants` / `--seeds` forms the command takes."""
    if seeds_per_part < 1:
        raise ValueError(f"--list-parts {seeds_per_part}: the number of seeds per part must be at least 1")
    n = cfg.transfer.seeds
    groups = [(lo, min(lo + seeds_per_part, n) - 1) for lo in range(0, n, seeds_per_part)]
    return [(v, f"{lo}-{hi}") for v in variant_names(cfg) for lo, hi in groups]


def run(
    cfg: TransferConfig,
    variants: tuple[str, ...],
    seeds: tuple[int, ...],
    *,
    pretrain_only: bool = False,
    write_report: bool = True,
) -> dict[str, Any] | None:
    """Pretrain what the chosen variants need, run every (variant, seed group) not done yet, report (unless a
    SLURM array task, which leaves the report to the aggregation job)."""
    processes.prepare_process()
    out = run_path(cfg)
    out.mkdir(parents=True, exist_ok=True)
    existing_parts(cfg)  # a part from another config is an error before any work
    record = out / "experiment.toml"
    if not record.is_file():
        config.save(cfg, record)
    train_tracks = [load_track(t) for t in cfg.transfer.train_tracks]
    sources = sorted({source_of(v) for v in variants} - {None})
    encoders = {s: pretrain(cfg, s, train_tracks) for s in sources}
    fig_file = out / "pretraining.json"
    figures = json.loads(fig_file.read_text()) if fig_file.is_file() else {}
    for s in sources:
        if not any(k.startswith(f"{s}/") for k in figures):
            figures.update(pretraining_figures(cfg, s, train_tracks))
            fig_file.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    if pretrain_only:
        return None
    evals = [eval_track(cfg, t) for t in cfg.transfer.eval_tracks]
    env, _ = multi_track_env(cfg, train_tracks)
    engines: dict[tuple[bool, bool], ppo.SeedBatch] = {}
    example = env_example(env)
    for v in variants:
        todo = tuple(s for s in seeds if s not in done_seeds(existing_parts(cfg), v))
        if not todo:
            print(f"[{v}] seeds {list(seeds)} already done", flush=True)
            continue
        part = run_part(cfg, v, todo, encoders, env, evals, engines, example)
        path = write_part(part_path(cfg, v, todo), part)
        print(f"[{v}] seeds {list(todo)}: {part['record']['wall_s']:.0f} s -> {path}", flush=True)
    return report(cfg, figures or None) if write_report else None


def main(argv: list[str] | None = None) -> int:
    parser = config.add_config_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--variants", default=None, help="comma-separated variants (default: all); a base name "
                        "such as finetuned means every source")
    parser.add_argument("--seeds", default=None, help="seed indices: 0-4 or 0,2,5 (default: all transfer.seeds)")
    parser.add_argument("--pretrain-only", action="store_true", help="only pretrain (and probe) the sources")
    parser.add_argument("--report-only", action="store_true", help="aggregate the parts present into the report")
    parser.add_argument("--no-report", action="store_true", help="run the parts only (a SLURM array task)")
    parser.add_argument("--list-parts", type=int, metavar="K", default=None,
                        help="print one '<variant> <seeds>' line per part of at most K seeds, and exit")
    args = parser.parse_args(argv)
    cfg = config.load_from_args(TransferConfig, args)
    try:
        if args.list_parts is not None:
            print("\n".join(f"{v} {seeds}" for v, seeds in array_parts(cfg, args.list_parts)))
            return 0
        if args.report_only:
            result = report(cfg)
        else:
            result = run(cfg, select_variants(cfg, args.variants), select_seeds(cfg, args.seeds),
                         pretrain_only=args.pretrain_only, write_report=not args.no_report)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}") from None
    if result is not None:
        print((run_path(cfg) / "report" / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
