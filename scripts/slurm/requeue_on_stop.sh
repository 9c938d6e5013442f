#!/usr/bin/env bash
# Run a job step; requeue the batch job when the step stopped early with a checkpoint saved.
#
#   scripts/slurm/requeue_on_stop.sh srun ... python -m src.training.pretrainer ...   # inside an sbatch script
#
# The pretrainer exits with 75 (EXIT_STOPPED_EARLY, src/training/pretrainer.py) when SIGTERM (the time-limit
# warning of `--signal=TERM@N`, a pre-emption, `scancel --signal=TERM`) stopped it before its last step, after
# saving a checkpoint. SLURM counts a job that ends by itself as COMPLETED and would not run it again, so this
# script requeues it (`scontrol requeue`): the job goes back to PENDING with SLURM_RESTART_COUNT + 1 and the next
# run resumes from the checkpoint; with `--open-mode=append` every run's output stays in the one log file. Every
# other exit status is passed on unchanged. The job must be requeueable (`--requeue`; JobRequeue=1 is the default).
set -uo pipefail

EXIT_STOPPED_EARLY=75
started=$(date +%s)
echo "requeue_on_stop: job ${SLURM_JOB_ID:-?} run $(( ${SLURM_RESTART_COUNT:-0} + 1 )) started at $(date -u +%FT%TZ)"
"$@"
rc=$?
if [ "$rc" -ne "$EXIT_STOPPED_EARLY" ]; then
    exit "$rc"
fi
if [ -z "${SLURM_JOB_ID:-}" ]; then
    echo "requeue_on_stop: stopped early with a checkpoint, but not in a SLURM job: run it again to continue" >&2
    exit "$rc"
fi
echo "requeue_on_stop: job $SLURM_JOB_ID stopped early with a checkpoint after $(( $(date +%s) - started )) s;" \
    "requeueing it at $(date -u +%FT%TZ)"
if ! scontrol requeue "$SLURM_JOB_ID"; then
    echo "requeue_on_stop: scontrol requeue $SLURM_JOB_ID failed; resubmit the job to continue" >&2
fi
exit "$rc"
