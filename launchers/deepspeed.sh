#!/usr/bin/env bash
# Launch cit-fast training with the DeepSpeed launcher (engine: deepspeed).
#
# Usage:
#   launchers/deepspeed.sh [HOSTFILE] -- [cit-fast train args...]
# One node, all local GPUs:
#   launchers/deepspeed.sh -- --config my.yaml dist.zero_stage=2 dist.precision=bf16
# Several nodes (passwordless ssh between them; see launchers/hostfile.example):
#   launchers/deepspeed.sh launchers/hostfile.example -- --config my.yaml dist.zero_stage=2
# CPU only: DS_ACCELERATOR=cpu NUM_GPUS=2 launchers/deepspeed.sh -- ... (gloo; NUM_GPUS = processes).
# NUM_GPUS limits the local processes; MASTER_PORT picks the rendezvous port (default 29500).
#
# Runs DeepSpeed's launcher from the Python that has cit_fast (launchers/_python.sh): nothing to
# activate. DeepSpeed appends --local_rank=N to each process's arguments; cit-fast train accepts it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
HOSTFILE=""
if [[ $# -gt 0 && "$1" != "--" ]]; then HOSTFILE=$1; shift; fi
[[ "${1:-}" == "--" ]] && shift
ARGS=()
[[ -n "$HOSTFILE" ]] && ARGS+=(--hostfile "$HOSTFILE")
[[ -n "${NUM_GPUS:-}" ]] && ARGS+=(--num_gpus "$NUM_GPUS")
[[ -n "${MASTER_PORT:-}" ]] && ARGS+=(--master_port "$MASTER_PORT")
exec "$PY" -m deepspeed.launcher.runner "${ARGS[@]}" --module cit_fast.cli train dist.engine=deepspeed "$@"
