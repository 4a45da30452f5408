#!/usr/bin/env bash
# Run a titan_phases training job with torchrun, in torchtitan's run_train.sh convention.
#
#   ./run_train.sh                                  default phased fine-tune (debug model)
#   ./run_train.sh --training.steps 20              extra arguments go to the job config CLI
#   CONFIG_FILE=train_configs/llama3_8b_phases.toml NGPU=8 ./run_train.sh
#
# Environment:
#   CONFIG_FILE    job config TOML (default: train_configs/debug_model.toml)
#   NGPU           processes per node (default: all visible GPUs; 2 CPU processes without GPUs)
#   LOG_RANK       ranks whose output is shown (default: 0)
#   NNODES         nodes (default: 1); multi-node also needs RDZV_ENDPOINT=host:port and RDZV_ID
#   RDZV_BACKEND   torchrun rendezvous backend (default: c10d)
#   RDZV_ENDPOINT  rendezvous endpoint (default: localhost:0, a free local port)
#   RDZV_ID        rendezvous id shared by all nodes of one job (default: none)
#   TORCHRUN_ARGS  further torchrun arguments, e.g. "--max-restarts 2"
#
# Without an accelerator the job runs on CPU processes over gloo (titan_phases.runtime.cpu).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh

CONFIG_FILE="${CONFIG_FILE:-./train_configs/debug_model.toml}"
if [ -z "${NGPU:-}" ]; then
    NGPU="$("$PYTHON" -c 'import torch; n = torch.accelerator.device_count() if torch.accelerator.is_available() else 0; print(n or 2)')"
fi

launch() {
    local config="$1"
    shift
    local rdzv=(--rdzv_backend "${RDZV_BACKEND:-c10d}" --rdzv_endpoint "${RDZV_ENDPOINT:-localhost:0}")
    if [ -n "${RDZV_ID:-}" ]; then
        rdzv+=(--rdzv_id "$RDZV_ID")
    fi
    # shellcheck disable=SC2086
    PYTORCH_ALLOC_CONF="${PYTORCH_ALLOC_CONF:-expandable_segments:True}" \
        "$PYTHON" -m torch.distributed.run --nnodes "${NNODES:-1}" --nproc_per_node "$NGPU" \
        "${rdzv[@]}" --local-ranks-filter "${LOG_RANK:-0}" --role rank --tee 3 \
        ${TORCHRUN_ARGS:-} -m titan_phases.train --job.config_file "$config" "$@"
}

# A config may name a recipe that produces its missing initial checkpoint ([pretrained]
# recipe); it runs once and its checkpoint is reused afterwards.
recipe="$("$PYTHON" -m titan_phases.prepare --job.config_file "$CONFIG_FILE" "$@")"
if [ -n "$recipe" ]; then
    echo "[titan_phases] initial checkpoint missing: running its recipe $recipe first" >&2
    launch "$recipe"
fi
launch "$CONFIG_FILE" "$@"
