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
#
# A job that survives a lost node: NNODES=MIN:MAX (e.g. 1:2), MAX_RESTARTS >= 1 and resume=auto. When
# a node dies, the others' workers fail, their agents restart them (one restart) and the rendezvous
# closes with the nodes left (at least MIN), which resume from the newest checkpoint at the smaller
# world size. A node that is started again (its same command, NNODES=2 or MIN:MAX) joins the next
# round: the running agents restart their workers for it and the job goes on at the larger world size
# from the newest checkpoint (tests/train/test_node_restart.py).
#   RDZV_JOIN_TIMEOUT (600 s): how long a rendezvous waits for MIN nodes
#   RDZV_LAST_CALL_TIMEOUT (30 s): once MIN nodes are there, how long it waits for more (up to MAX)
#   RDZV_CLOSE_TIMEOUT (30 s), RDZV_KEEP_ALIVE (5 s x 3 missed beats: a node silent that long is dead)
#   NODE_NAME (default: the host name): how the job's log lines and metrics name this node
#
# Where the rendezvous lives (RDZV_BACKEND):
#   c10d (default): a store in the agent of the node RDZV_HOST names, the one node the job cannot
#     lose. RDZV_IS_HOST (1/0): whether this node's agent hosts it (default: the node whose address
#     is RDZV_HOST; set it when several agents share one address, as two agents on 127.0.0.1 do).
#   etcd-v2: an etcd server outside the nodes (etcd >= 3.4 started with --enable-v2, and the
#     python-etcd client in cit_fast's Python): RDZV_ENDPOINT=host:2379 (or RDZV_HOST/RDZV_PORT,
#     port 2379). Any node, the first one included, can then die and come back. JOB_ID must be new
#     for every job (etcd keeps a finished job's rendezvous closed).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
NPROC=${1:-1}
shift || true
[[ "${1:-}" == "--" ]] && shift
NNODES=${NNODES:-1}
MAX_RESTARTS=${MAX_RESTARTS:-0}
ARGS=(--nproc_per_node "$NPROC" --nnodes "$NNODES" --max-restarts "$MAX_RESTARTS")
BACKEND=${RDZV_BACKEND:-c10d}
if [[ "$NNODES" == "1" && -z "${RDZV_HOST:-}" && -z "${RDZV_ENDPOINT:-}" && -z "${RDZV_BACKEND:-}" ]]; then
  ARGS+=(--standalone)
else
  CONF="join_timeout=${RDZV_JOIN_TIMEOUT:-600},last_call_timeout=${RDZV_LAST_CALL_TIMEOUT:-30}"
  CONF+=",close_timeout=${RDZV_CLOSE_TIMEOUT:-30},keep_alive_interval=${RDZV_KEEP_ALIVE:-5},keep_alive_max_attempt=3"
  case "$BACKEND" in
    c10d)
      ENDPOINT=${RDZV_ENDPOINT:-${RDZV_HOST:?set RDZV_HOST (the address of the first node) for multi-node}:${RDZV_PORT:-29400}}
      [[ -n "${RDZV_IS_HOST:-}" ]] && CONF+=",is_host=${RDZV_IS_HOST}" ;;
    etcd-v2)
      ENDPOINT=${RDZV_ENDPOINT:-${RDZV_HOST:?set RDZV_ENDPOINT=host:port of the etcd server for RDZV_BACKEND=etcd-v2}:${RDZV_PORT:-2379}}
      if ! "$PY" -c "import etcd" 2>/dev/null; then
        echo "$(basename "$0"): RDZV_BACKEND=etcd-v2 needs the python-etcd client in $PY (pip install python-etcd, or cit-fast[etcd])" >&2
        exit 2
      fi ;;
    *) echo "$(basename "$0"): RDZV_BACKEND=$BACKEND: expected c10d or etcd-v2" >&2; exit 2 ;;
  esac
  # Every rendezvous round publishes its own MASTER_ADDR/PORT and rank 0's worker hosts a store of
  # its own. With torch's shared agent store (the default) the agents keep the first round's store
  # address, so a node that is started again and joins a later round waits for it until both agents
  # fail (DistStoreError ... MASTER_ADDR / role_info; pytorch/pytorch#147064), and under etcd-v2 the
  # store would live in one node again: tests/train/test_node_restart.py.
  export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
  ARGS+=(--rdzv_backend "$BACKEND" --rdzv_endpoint "$ENDPOINT" --rdzv_id "${JOB_ID:-cit_fast}" --rdzv_conf "$CONF")
fi
export CIT_FAST_NODE=${NODE_NAME:-$(hostname)}  # how rank 0 names this node (cit_fast.train.membership)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # torchrun's default, without its banner
exec "$PY" -m cit_fast.launch "${ARGS[@]}" -m cit_fast.cli train "$@"
