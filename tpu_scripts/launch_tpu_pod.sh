#!/usr/bin/env bash
# Launch `flan-jax train` on every worker of a Cloud TPU VM pod slice, with the same gin
# files as a laptop run. Each worker is one JAX process; on Cloud TPU
# `jax.distributed.initialize()` discovers the coordinator, process count and ids itself,
# which the gin binding `trainer.PartitioningConfig.coordinator_address = "auto"` selects.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b MODEL_DIR=gs://bucket/runs/ft \
#   MIXTURE=flan2022_submix tpu_scripts/launch_tpu_pod.sh \
#     --gin_file=models/t5_1_1_base.gin --gin_file=runs/finetune.gin \
#     --gin.VOCABULARY_PATH=gs://bucket/spiece.model \
#     --gin.BATCH_SIZE=1024 --gin.partitioning.MeshConfig.model=4
#
# MODEL_DIR must be storage every worker sees (a GCS bucket): orbax writes each process's
# shards of the parameters and Adafactor statistics there, and restores from it on restart.
# Extra arguments are passed to `flan-jax train` unchanged.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE to the TPU zone}"
: "${MODEL_DIR:?set MODEL_DIR (a gs:// path every worker can write)}"
: "${MIXTURE:?set MIXTURE to a registered seqio task or mixture}"
PROJECT_FLAG=${PROJECT:+--project=${PROJECT}}
REPO_DIR=${REPO_DIR:-\$HOME/flan_jax}

quoted_args=""
for arg in "$@"; do
  quoted_args+=" $(printf '%q' "${arg}")"
done

command="cd ${REPO_DIR} && source .venv/bin/activate && flan-jax train${quoted_args} \
  --gin.MODEL_DIR=$(printf '%q' "${MODEL_DIR}") \
  --gin.MIXTURE_OR_TASK_NAME=$(printf '%q' "${MIXTURE}") \
  --gin.trainer.PartitioningConfig.coordinator_address=auto"

# shellcheck disable=SC2086
gcloud alpha compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" ${PROJECT_FLAG} \
  --worker=all --command="${command}"
