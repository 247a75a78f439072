#!/usr/bin/env bash
# Train on every worker of a Cloud TPU VM slice: (create it,) copy this checkout there, install,
# run the same lm_research.main command on all workers at once, collect their logs, (delete it).
#
#   TPU_NAME=my-v5e-16 ZONE=us-west4-a launch/tpu_vm.sh [--dry_run] [--create] [--delete] \
#       --config=configs/gpt2_small.py --workdir=/mnt/shared/runs/gpt2 [--config.KEY=VALUE ...]
#
# JAX finds the other workers by itself on a TPU VM (main.py calls jax.distributed.initialize()),
# so every worker runs the identical command. The workdir must be on storage all workers share
# (a mounted bucket or NFS): they write one checkpoint together. Rerunning resumes from it.
#
# Environment:
#   TPU_NAME, ZONE        required
#   PROJECT               gcloud project ('' = gcloud's default)
#   ACCELERATOR_TYPE      for --create, e.g. v5litepod-16, v4-32 (default v5litepod-8)
#   RUNTIME_VERSION       for --create (default v2-alpha-tpuv5-lite)
#   SPOT=1                create a preemptible (spot) slice; SIGTERM makes it checkpoint
#   REMOTE_DIR            where the code goes on the workers (default lm_research)
#   LOG_DIR               where the workers' logs are collected (default logs/$TPU_NAME)
#   DRY_RUN=1             same as --dry_run: print every command instead of running it
#
# W&B: with no key on the workers, worker 0 logs offline into WORKDIR/wandb/ (upload later with
# `wandb sync`). To stream online, run `wandb login` on the workers once and add
# --config.wandb.mode=online; this script never handles the API key.
set -euo pipefail

usage() { echo "usage: TPU_NAME=NAME ZONE=ZONE $0 [--dry_run] [--create] [--delete] --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE ...]" >&2; exit 2; }

DRY_RUN="${DRY_RUN:-0}"
CREATE=0
DELETE=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --dry_run) DRY_RUN=1 ;;
    --create) CREATE=1 ;;
    --delete) DELETE=1 ;;
    -h|--help) usage ;;
    *) ARGS+=("$arg") ;;
  esac
done
[[ -n "${TPU_NAME:-}" ]] || { echo "error: set TPU_NAME to the TPU VM's name (e.g. TPU_NAME=my-v5e-16)." >&2; exit 2; }
[[ -n "${ZONE:-}" ]] || { echo "error: set ZONE to the TPU VM's zone (e.g. ZONE=us-west4-a)." >&2; exit 2; }
[[ " ${ARGS[*]:-} " == *" --config="* ]] || { echo "error: pass --config=configs/NAME.py (the lm_research.main flags)." >&2; exit 2; }
[[ " ${ARGS[*]} " == *" --workdir="* ]] || { echo "error: pass --workdir=DIR on storage every worker shares." >&2; exit 2; }

ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
REMOTE_DIR="${REMOTE_DIR:-lm_research}"
LOG_DIR="${LOG_DIR:-logs/$TPU_NAME}"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && WHERE+=(--project="$PROJECT")

# Each argument, single-quoted when the shell would otherwise split or expand it.
quote() {
  local a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      printf ' %s' "$a"
    else
      printf " '%s'" "${a//\'/\'\\\'\'}"
    fi
  done
}

# Prints the command (copy-pasteable) in a dry run, runs it otherwise.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '+%s\n' "$(quote "$@")"
  else
    "$@"
  fi
}

if [[ "$CREATE" == 1 ]]; then
  CREATE_FLAGS=(--accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  [[ "${SPOT:-0}" == 1 ]] && CREATE_FLAGS+=(--spot)
  run "${GCLOUD[@]}" create "$TPU_NAME" "${WHERE[@]}" "${CREATE_FLAGS[@]}"
fi

# Ship the committed tree (plus the bundled data) as one archive to every worker.
ARCHIVE="/tmp/lm_research_${TPU_NAME}.tar.gz"
run git -C "$REPO_ROOT" archive --format=tar.gz -o "$ARCHIVE" HEAD
run "${GCLOUD[@]}" scp "$ARCHIVE" "$TPU_NAME:~/lm_research.tar.gz" "${WHERE[@]}" --worker=all
SETUP="mkdir -p ~/$REMOTE_DIR && tar -xzf ~/lm_research.tar.gz -C ~/$REMOTE_DIR && cd ~/$REMOTE_DIR && pip install -q -r requirements.txt 'jax[tpu]==0.10.2'"
run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$SETUP"

# The training command, identical on every worker; each tees its own log. pipefail: the worker's
# shell (and so ssh, and this script) reports python's exit status, not tee's.
TRAIN="set -o pipefail && cd ~/$REMOTE_DIR && mkdir -p ~/logs && python -m lm_research.main$(quote "${ARGS[@]}") 2>&1 | tee ~/logs/train_\$(hostname).log"
STATUS=0
run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$TRAIN" || STATUS=$?

run mkdir -p "$LOG_DIR"
run "${GCLOUD[@]}" scp "$TPU_NAME:~/logs/*" "$LOG_DIR/" "${WHERE[@]}" --worker=all || true

if [[ "$DELETE" == 1 ]]; then
  run "${GCLOUD[@]}" delete "$TPU_NAME" "${WHERE[@]}" --quiet
fi
[[ "$DRY_RUN" == 1 ]] || echo "logs in $LOG_DIR; training exit status $STATUS"
exit "$STATUS"
