#!/usr/bin/env bash
# Launch cit-fast training with torchrun (DDP or DeepSpeed engine), on one node or several.
#
# Usage:
#   launchers/torchrun.sh [NPROC_PER_NODE] -- [cit-fast train args...]
# Single node, 8 GPUs:
#   launchers/torchrun.sh 8 -- --config configs/imagenet.yaml dist.engine=ddp
# Multi-node (run on every node; c10d rendezvous on the first node's address):
#   NNODES=4 RDZV_HOST=node0.cluster RDZV_PORT=29400 JOB_ID=cit42 launchers/torchrun.sh 8 -- --config my.yaml
# CPU-only (gloo): works the same; bound intra-op threads per process with threads=N.
#
# Runs the torchrun of the Python that has cit_fast (launchers/_python.sh: $CIT_FAST_PYTHON, the
# repository's .venv, or python3 on PATH): nothing to activate. A user error or Ctrl-C ends the
# job with one line (cit_fast.launch); a crash keeps torchrun's report.
#
# Environment: NNODES (default 1), RDZV_HOST/RDZV_PORT (multi-node), JOB_ID, MAX_RESTARTS (default 0:
# elastic restarts from the newest checkpoint; pass resume=auto so restarted workers continue).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
NPROC=${1:-1}
shift || true
[[ "${1:-}" == "--" ]] && shift
NNODES=${NNODES:-1}
MAX_RESTARTS=${MAX_RESTARTS:-0}
ARGS=(--nproc_per_node "$NPROC" --nnodes "$NNODES" --max-restarts "$MAX_RESTARTS")
if [[ "$NNODES" == "1" && -z "${RDZV_HOST:-}" ]]; then
  ARGS+=(--standalone)
else
  ARGS+=(--rdzv_backend c10d --rdzv_endpoint "${RDZV_HOST:?set RDZV_HOST for multi-node}:${RDZV_PORT:-29400}"
         --rdzv_id "${JOB_ID:-cit_fast}")
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # torchrun's default, without its banner
exec "$PY" -m cit_fast.launch "${ARGS[@]}" -m cit_fast.cli train "$@"
