"""Both stages of the research workflow in one command: pretrain, export the encoder, fine-tune with PPO.

    python -m src.training.two_stage --pretrain configs/pretrain_cmht.toml --finetune configs/rl_racecar.toml \
        [--frozen] [--finetuned] [--scratch] [--pretrain-set K=V ...] [--finetune-set K=V ...]

Variants (any combination; default `--frozen`): `--frozen` imports the exported encoder + fusion and freezes
them, `--finetuned` imports and trains them, `--scratch` is the baseline without pretraining. Each variant is a
PPO run named `<finetune run name>_<variant>`. The pretraining run is skipped when only `--scratch` is asked for.
Every variant uses the PRETRAINING config's [model] (keeping the fine-tuning config's action_dim and
init_log_std), so that the encoders fit and the three variants compare the same network; modalities that the
simulator does not produce (e.g. rgb without a camera) are fed as absent (valid = False).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from src import config
from src.config import ModelConfig, PretrainConfig, RLConfig
from src.training import pretrainer, rl_agent

VARIANTS = ("frozen", "finetuned", "scratch")


def variant_config(
    cfg: RLConfig, variant: str, encoder: Path | None, model: ModelConfig | None = None
) -> RLConfig:
    """The fine-tuning config of one variant: run name suffix, pretrained path, freezing, the shared model."""
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r}; valid: {list(VARIANTS)}")
    pretrained = "" if variant == "scratch" else str(encoder)
    if model is not None:
        cfg = config.replace(
            cfg,
            model=dataclasses.replace(
                model, action_dim=cfg.model.action_dim, init_log_std=cfg.model.init_log_std
            ),
        )
    return config.replace(
        cfg,
        run={"name": f"{cfg.run.name}_{variant}"},
        ppo={"agent": "raceformer"},
        finetune={"pretrained_ckpt": pretrained, "freeze_encoders": variant == "frozen"},
    )


def run(pretrain_cfg: PretrainConfig, finetune_cfg: RLConfig, variants: tuple[str, ...]) -> dict[str, dict]:
    """Pretrain (when a variant needs it), then one PPO run per variant; returns each run's last metrics."""
    encoder = None
    if any(v != "scratch" for v in variants):
        result = pretrainer.train(pretrain_cfg)
        encoder = result.encoder_dir
        if encoder is None or not Path(encoder).exists():
            raise RuntimeError(
                f"pretraining run {result.run_dir} exported no encoder (stopped by {result.stopped_by}; "
                "training.export_encoder must be true)"
            )
    results = {}
    for variant in variants:
        result = rl_agent.train(variant_config(finetune_cfg, variant, encoder, pretrain_cfg.model))
        last = result.history[-1] if result.history else {}
        results[variant] = {"run_dir": str(result.run_dir), "wall_s": result.wall_s, **last}
        print(
            f"[{variant}] {result.run_dir}: episodic return {last.get('episode/return', float('nan')):.2f}, "
            f"eval return {last.get('eval/return', float('nan')):.2f}, {result.wall_s:.0f} s"
        )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain", required=True, help="pretraining TOML config")
    parser.add_argument("--finetune", required=True, help="PPO TOML config")
    parser.add_argument("--pretrain-set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--finetune-set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    for v in VARIANTS:
        parser.add_argument(f"--{v}", action="store_true", help=f"run the {v} variant")
    args = parser.parse_args(argv)
    variants = tuple(v for v in VARIANTS if getattr(args, v)) or ("frozen",)
    try:
        pre = config.load(PretrainConfig, args.pretrain, args.pretrain_set)
        fine = config.load(RLConfig, args.finetune, args.finetune_set)
    except config.ConfigError as e:
        raise SystemExit(f"config error: {e}") from None
    run(pre, fine, variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
