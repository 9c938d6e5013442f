#!/usr/bin/env bash
# Submit the transfer experiment as SLURM jobs: pretraining, then a job array with one task per
# (variant, seed group), then the report; each stage starts when the one before it succeeded (afterok).
#
#   scripts/slurm/transfer_array.sh [CONFIG] [SEEDS_PER_TASK] [sbatch options ...]
#   scripts/slurm/transfer_array.sh configs/transfer_racecar.toml 5                  # one task per variant
#   scripts/slurm/transfer_array.sh configs/transfer_racecar.toml 1 --partition=gpu --gpus-per-task=1
#   EXTRA_ARGS="--set transfer.seeds=10" scripts/slurm/transfer_array.sh              # config overrides
#
# CONFIG defaults to configs/transfer_racecar.toml, SEEDS_PER_TASK to 5 (the seeds of a task run as a vmap axis
# in one process, so fewer, wider tasks cost less than many narrow ones). The parts list is written to
# runs/transfer-array-<time>.parts (or PARTS_FILE); the logs go to runs/slurm-raceformer-transfer-<job>.out and,
# for the array, runs/slurm-raceformer-transfer-<array job>_<task>.out (sbatch options given here, such as
# --output, override these). Prints the three job ids (pretrain, array, report), one per line.
set -euo pipefail
cd "$(dirname "$0")/../.."

config="${1:-configs/transfer_racecar.toml}"
per_task="${2:-5}"
shift $(( $# < 2 ? $# : 2 ))
script=scripts/slurm/transfer.sbatch
mkdir -p runs
parts="${PARTS_FILE:-runs/transfer-array-$(date -u +%Y%m%dT%H%M%S)-$$.parts}"
# shellcheck disable=SC2086  # EXTRA_ARGS is a list of arguments
uv run --frozen python -m src.training.transfer --config "$config" ${EXTRA_ARGS:-} --list-parts "$per_task" \
    >"$parts"
count=$(wc -l <"$parts")
if [ "$count" -eq 0 ]; then
    echo "transfer_array.sh: $config gives no (variant, seed group) parts" >&2
    exit 2
fi
export CONFIG="$config" PARTS_FILE="$parts" EXTRA_ARGS="${EXTRA_ARGS:-}"
pretrain=$(STAGE=pretrain sbatch --parsable --output=runs/slurm-%x-%j.out "$@" "$script")
pretrain="${pretrain%%;*}"
array=$(STAGE=part sbatch --parsable --array="0-$(( count - 1 ))" --dependency="afterok:$pretrain" "$@" "$script")
array="${array%%;*}"
report=$(STAGE=report sbatch --parsable --output=runs/slurm-%x-%j.out --dependency="afterok:$array" "$@" "$script")
report="${report%%;*}"
echo "transfer_array.sh: $count parts in $parts; jobs: pretrain $pretrain, array $array (tasks 0-$(( count - 1 )))," \
    "report $report" >&2
printf '%s\n' "$pretrain" "$array" "$report"
