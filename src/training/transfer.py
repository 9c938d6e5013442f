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

Seeds run as a vmap axis of the jitted PPO engine (`train_jax.SeedBatch`). Each variant is evaluated at the budgets
`transfer.budgets` (fractions of training) and the result of one (variant, seed group) is written to
`<run dir>/parts/<variant>__seeds<a>-<b>.npz` (plain arrays, a JSON record with the config hash) at once, so
SLURM array tasks can each run a part (`--variants`, `--seeds`) and `--report-only` aggregates every part
present into `<run dir>/report/`. Pretraining runs once per source under `<run dir>/pretrain_<src>/` and is
skipped when its exported encoder exists with the same config (`--pretrain-only` runs just that stage).
"""

from __future__ import annotations

import argparse
import sys

from src import config
from src.transfer.config import (
    TransferConfig,
    run_path,
    select_seeds,
    select_variants,
)
from src.transfer.experiment import run
from src.transfer.parts import array_parts
from src.transfer.report import report


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
