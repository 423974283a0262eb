#!/usr/bin/env bash
# Distributed training with torchrun: tools/dist_train.sh CONFIG NUM_PROCS [train.py arguments...]
# CONFIG: a classification YAML or an mmdet/mmseg .py config (train.py dispatches on the type).
# One process per GPU (nccl), or CPU processes (gloo) where there is no GPU. Multi-node: set NNODES,
# NODE_RANK, MASTER_ADDR and MASTER_PORT on every node.
set -euo pipefail
CONFIG=$1
NPROC=$2
shift 2
PYTHON=${PYTHON:-python}
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" \
    --nproc_per_node="$NPROC" \
    "$(dirname "$0")/train.py" "$CONFIG" "$@"
