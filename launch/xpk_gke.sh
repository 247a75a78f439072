#!/usr/bin/env bash
# Train on a GKE cluster with XPK (https://github.com/AI-Hypercomputer/xpk, `pip install xpk`):
# XPK builds an image from BASE_IMAGE plus this checkout, and runs the same lm_research.main
# command on every host of NUM_SLICES TPU slices (or GPU nodes) as one JobSet workload.
#
#   CLUSTER=my-cluster ZONE=us-central2-b TPU_TYPE=v5litepod-256 launch/xpk_gke.sh [--dry_run] \
#       --config=configs/gpt2_small.py --workdir=gs://BUCKET/runs/gpt2 [--config.KEY=VALUE ...]
#   CLUSTER=... ZONE=... DEVICE_TYPE=h100-80gb-8 launch/xpk_gke.sh ...        # GPU nodes
#   launch/xpk_gke.sh --list | --delete=WORKLOAD                          # manage workloads
#
# In the pods, JAX finds its peers by itself (TPU_WORKER_HOSTNAMES, or
# MEGASCALE_COORDINATOR_ADDRESS across slices), and main.py calls jax.distributed.initialize().
# The workdir must be storage every host reaches (a gs:// bucket mounted, or Filestore).
#
# Environment:
#   CLUSTER, ZONE         required (the cluster from `xpk cluster create`)
#   PROJECT               gcloud project ('' = gcloud's default)
#   TPU_TYPE | DEVICE_TYPE  one of them: e.g. v5litepod-256, v6e-256 | h100-80gb-8
#   NUM_SLICES            TPU slices (default 1); several = multislice data parallelism
#                         (adds --config.mesh.dcn_data=NUM_SLICES unless a mesh.dcn_* flag is given)
#   WORKLOAD              workload name (default lm-<user>-<time>, lowercase, <= 40 chars)
#   BASE_IMAGE            image the code is layered on (default python:3.11-slim)
#   MAX_RESTARTS          restarts after a failure or preemption; each resumes (default 3)
#   DRY_RUN=1             same as --dry_run: print the xpk command instead of running it
set -euo pipefail

DRY_RUN="${DRY_RUN:-0}"
ACTION=create
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --dry_run) DRY_RUN=1 ;;
    --list) ACTION=list ;;
    --delete=*) ACTION=delete; WORKLOAD="${arg#--delete=}" ;;
    *) ARGS+=("$arg") ;;
  esac
done
[[ -n "${CLUSTER:-}" ]] || { echo "error: set CLUSTER to the XPK cluster's name." >&2; exit 2; }
[[ -n "${ZONE:-}" ]] || { echo "error: set ZONE to the cluster's zone (e.g. ZONE=us-central2-b)." >&2; exit 2; }
WHERE=(--cluster="$CLUSTER" --zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && WHERE+=(--project="$PROJECT")
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

quote() {
  local a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf ' %s' "$a"; else printf " '%s'" "${a//\'/\'\\\'\'}"; fi
  done
}
run() {
  if [[ "$DRY_RUN" == 1 ]]; then printf '+%s\n' "$(quote "$@")"; else "$@"; fi
}

case "$ACTION" in
  list) run xpk workload list "${WHERE[@]}"; exit ;;
  delete) run xpk workload delete --workload="$WORKLOAD" "${WHERE[@]}"; exit ;;
esac

[[ " ${ARGS[*]:-} " == *" --config="* ]] || { echo "error: pass --config=configs/NAME.py (the lm_research.main flags)." >&2; exit 2; }
[[ " ${ARGS[*]} " == *" --workdir="* ]] || { echo "error: pass --workdir=DIR on storage every host reaches." >&2; exit 2; }
if [[ -n "${TPU_TYPE:-}" ]]; then
  DEVICE=(--tpu-type="$TPU_TYPE" --num-slices="${NUM_SLICES:-1}")
  JAX_EXTRA='jax[tpu]==0.10.2'
  # Several slices: the mesh must span them over DCN; data parallelism across slices unless the
  # flags already say how (--config.mesh.dcn_data / dcn_fsdp).
  if [[ "${NUM_SLICES:-1}" != 1 && " ${ARGS[*]} " != *" --config.mesh.dcn_"* ]]; then
    ARGS+=("--config.mesh.dcn_data=$NUM_SLICES")
  fi
elif [[ -n "${DEVICE_TYPE:-}" ]]; then
  DEVICE=(--device-type="$DEVICE_TYPE" --num-nodes="${NUM_NODES:-1}")
  JAX_EXTRA='jax[cuda12]==0.10.2'
else
  echo "error: set TPU_TYPE (e.g. v5litepod-256) or DEVICE_TYPE (e.g. h100-80gb-8)." >&2; exit 2
fi
WORKLOAD="${WORKLOAD:-lm-$(id -un | tr -cd 'a-z0-9' | cut -c1-12)-$(date +%m%d-%H%M%S)}"

# XPK copies --script-dir into the image; the pod starts in it, installs, then trains.
COMMAND="pip install -q -r requirements.txt '$JAX_EXTRA' && python -m lm_research.main$(quote "${ARGS[@]}")"
run xpk workload create "${WHERE[@]}" --workload="$WORKLOAD" "${DEVICE[@]}" \
    --base-docker-image="${BASE_IMAGE:-python:3.11-slim}" --script-dir="$REPO_ROOT" \
    --max-restarts="${MAX_RESTARTS:-3}" --command="$COMMAND"
if [[ "$DRY_RUN" != 1 ]]; then
  echo "submitted $WORKLOAD; see it with: $0 --list; stop it with: $0 --delete=$WORKLOAD"
fi
