#!/usr/bin/env bash
# Object masks computed by NPROC ranks per node under torchrun (no process group is formed: each
# rank reads RANK / WORLD_SIZE, takes its part of SRC and runs --workers processes; rank 0 merges the
# coverage summary and the montage once every rank has left its summary beside the masks).
#
# Usage:
#   launchers/masks_torchrun.sh NPROC SRC [cit-fast masks options]
#   launchers/masks_torchrun.sh 8 /data/in1k-shards --model seg.pt --batch-size 64   # 8 GPUs, one rank each
#   launchers/masks_torchrun.sh 4 /data/birds --workers 16                          # 4 x 16 processes
# Several nodes (run on every node; SRC on a shared filesystem):
#   NNODES=4 RDZV_HOST=node0 RDZV_PORT=29400 JOB_ID=masks1 launchers/masks_torchrun.sh 1 SRC --workers 64
# Restarting the same command continues: finished masks (or mask shards) are skipped.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
NPROC=${1:?usage: launchers/masks_torchrun.sh NPROC SRC [cit-fast masks options]}
shift
NNODES=${NNODES:-1}
ARGS=(--nproc_per_node "$NPROC" --nnodes "$NNODES")
if [[ "$NNODES" == "1" && -z "${RDZV_HOST:-}" ]]; then
  ARGS+=(--standalone)
else
  ARGS+=(--rdzv_backend c10d --rdzv_endpoint "${RDZV_HOST:?set RDZV_HOST}:${RDZV_PORT:-29400}" --rdzv_id "${JOB_ID:-cit_fast_masks}")
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}  # one thread per worker (the job sets it too)
exec "$PY" -m torch.distributed.run "${ARGS[@]}" -m cit_fast.cli masks "$@"
