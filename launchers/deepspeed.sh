#!/usr/bin/env bash
# Launch cit-fast training with the DeepSpeed launcher (engine: deepspeed).
#
# Usage:
#   launchers/deepspeed.sh [HOSTFILE] -- [cit-fast train args...]
# One node, all local GPUs:
#   launchers/deepspeed.sh -- --config my.yaml dist.zero_stage=2 dist.precision=bf16
# Several nodes (passwordless ssh between them; see launchers/hostfile.example):
#   launchers/deepspeed.sh launchers/hostfile.example -- --config my.yaml dist.zero_stage=2
# CPU only: DS_ACCELERATOR=cpu launchers/deepspeed.sh -- ... (gloo); NUM_GPUS limits local processes.
set -euo pipefail
HOSTFILE=""
if [[ $# -gt 0 && "$1" != "--" ]]; then HOSTFILE=$1; shift; fi
[[ "${1:-}" == "--" ]] && shift
ARGS=()
[[ -n "$HOSTFILE" ]] && ARGS+=(--hostfile "$HOSTFILE")
[[ -n "${NUM_GPUS:-}" ]] && ARGS+=(--num_gpus "$NUM_GPUS")
exec deepspeed "${ARGS[@]}" --module cit_fast.cli train dist.engine=deepspeed "$@"
