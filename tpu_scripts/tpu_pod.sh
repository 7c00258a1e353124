#!/usr/bin/env bash
# A Cloud TPU pod run from a laptop: create a queued-resource slice (or several joined over
# DCN), install flan_jax on every worker, start `flan-jax train` with the same gin on all of
# them, follow worker 0's log, stop, delete.
#
#   tpu_scripts/tpu_pod.sh create  --name ft --zone us-central2-b --accelerator-type v4-32
#   tpu_scripts/tpu_pod.sh status  --name ft --zone us-central2-b
#   tpu_scripts/tpu_pod.sh install --name ft --zone us-central2-b \
#     --repo https://github.com/ORG/flan_jax.git --ref main       # or: --source .
#   tpu_scripts/tpu_pod.sh train   --name ft --zone us-central2-b \
#     --model-dir gs://bucket/runs/ft --mixture flan2022_submix -- \
#     --gin_file=models/t5_1_1_base.gin --gin_file=runs/finetune.gin \
#     --gin.VOCABULARY_PATH=gs://bucket/spiece.model --gin.BATCH_SIZE=1024
#   tpu_scripts/tpu_pod.sh logs    --name ft --zone us-central2-b
#   tpu_scripts/tpu_pod.sh stop    --name ft --zone us-central2-b
#   tpu_scripts/tpu_pod.sh delete  --name ft --zone us-central2-b
#
# Every subcommand takes --dry-run (print the gcloud commands, run nothing; no gcloud
# needed) and --project. --slices N (the same N for every subcommand) makes a multi-slice
# queued resource of N nodes NAME-0 .. NAME-(N-1); train then exports the MEGASCALE
# variables that join the slices and binds MeshConfig.num_slices=N, so data parallelism
# crosses the slices over DCN while fsdp and model stay inside each slice.
#
# Each worker is one JAX process; `coordinator_address=auto` lets jax.distributed discover
# the coordinator, process count and ids from the TPU metadata. MODEL_DIR must be storage
# every worker sees (a gs:// bucket): orbax writes each process's checkpoint shards there
# and restores from it on restart.
set -euo pipefail

# shellcheck source=tpu_scripts/launch_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_lib.sh"

# Where things live on a worker, relative to its home directory (ssh starts there).
readonly REMOTE_DIR=flan_jax
readonly REMOTE_LOG=flan_jax_train.log
readonly REMOTE_PID=flan_jax_train.pid
# The DCN port of the multi-slice runtime (the value Ray's and MaxText's launchers use).
readonly MEGASCALE_PORT=8081

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Flags:
  --name NAME               queued resource id (and node id, or node prefix with --slices)
  --zone ZONE               TPU zone
  --project PROJECT         Google Cloud project (default: gcloud's configured one)
  --slices N                slices of a multi-slice run (default 1)
  --dry-run                 print the commands instead of running them
create:  --accelerator-type TYPE (v4-32, v5p-64, ...) [--runtime-version VERSION] [--spot]
install: --repo URL [--ref REF] | --source DIR (a git checkout; its HEAD is copied)
train:   --model-dir gs://... --mixture NAME [-- flan-jax train arguments]
EOF
}

main() {
  [[ $# -gt 0 ]] || { usage; exit 2; }
  local subcommand=$1
  shift
  case ${subcommand} in
    -h | --help) usage; return ;;
    create | status | delete | install | train | logs | stop) ;;
    *) die "unknown subcommand '${subcommand}'; one of create status delete install train logs stop" ;;
  esac
  parse_flags "$@"
  require_value --name "${NAME}"
  require_value --zone "${ZONE}"
  require_positive_int --slices "${SLICES}"
  "cmd_${subcommand}"
}

parse_flags() {
  NAME="" ZONE="" PROJECT="" SLICES=1 ACCELERATOR_TYPE="" RUNTIME_VERSION=tpu-ubuntu2204-base
  SPOT=0 REPO="" REF=main SOURCE="" MODEL_DIR="" MIXTURE="" TRAIN_ARGS=()
  while [[ $# -gt 0 ]]; do
    case $1 in
      --dry-run) DRY_RUN=1 ;;
      --spot) SPOT=1 ;;
      --name | --zone | --project | --slices | --accelerator-type | --runtime-version | \
        --repo | --ref | --source | --model-dir | --mixture)
        [[ $# -ge 2 ]] || die "$1 needs a value"
        set_flag "$1" "$2"
        shift ;;
      --) shift; TRAIN_ARGS=("$@"); break ;;
      *) die "unknown flag '$1' (flan-jax train arguments go after --)" ;;
    esac
    shift
  done
}

set_flag() {
  case $1 in
    --name) NAME=$2 ;;
    --zone) ZONE=$2 ;;
    --project) PROJECT=$2 ;;
    --slices) SLICES=$2 ;;
    --accelerator-type) ACCELERATOR_TYPE=$2 ;;
    --runtime-version) RUNTIME_VERSION=$2 ;;
    --repo) REPO=$2 ;;
    --ref) REF=$2 ;;
    --source) SOURCE=$2 ;;
    --model-dir) MODEL_DIR=$2 ;;
    --mixture) MIXTURE=$2 ;;
  esac
}

# The flags every gcloud call takes.
location_flags() {
  LOCATION=(--zone="${ZONE}")
  [[ -z ${PROJECT} ]] || LOCATION+=(--project="${PROJECT}")
}

# The TPU VM names of the queued resource: NAME, or NAME-0 .. NAME-(N-1) for N slices
# (gcloud's --node-prefix naming).
node_names() {
  NODES=()
  if [[ ${SLICES} == 1 ]]; then
    NODES=("${NAME}")
  else
    local i
    for ((i = 0; i < SLICES; i++)); do NODES+=("${NAME}-${i}"); done
  fi
}

# ssh_workers NODE WORKER COMMAND: runs a shell command on a worker ("all" or an index).
ssh_workers() {
  run gcloud compute tpus tpu-vm ssh "$1" "${LOCATION[@]}" --worker="$2" --command="$3"
}

cmd_create() {
  require_value --accelerator-type "${ACCELERATOR_TYPE}"
  location_flags
  local nodes=(--node-id="${NAME}")
  [[ ${SLICES} == 1 ]] || nodes=(--node-count="${SLICES}" --node-prefix="${NAME}")
  local spot=()
  [[ ${SPOT} == 0 ]] || spot=(--spot)
  run gcloud compute tpus queued-resources create "${NAME}" "${LOCATION[@]}" \
    --accelerator-type="${ACCELERATOR_TYPE}" --runtime-version="${RUNTIME_VERSION}" \
    "${nodes[@]}" "${spot[@]}"
}

cmd_status() {
  location_flags
  run gcloud compute tpus queued-resources describe "${NAME}" "${LOCATION[@]}"
}

cmd_delete() {
  location_flags
  # --force deletes the TPU VMs with the request; --quiet skips the confirmation prompt.
  run gcloud compute tpus queued-resources delete "${NAME}" "${LOCATION[@]}" --force --quiet
}

cmd_install() {
  location_flags
  node_names
  local fetch
  if [[ -n ${SOURCE} ]]; then
    [[ -z ${REPO} ]] || die "give --repo or --source, not both"
    local archive="/tmp/flan_jax-${NAME}.tar.gz"
    run git -C "${SOURCE}" archive --format=tar.gz --output="${archive}" HEAD
    local node
    for node in "${NODES[@]}"; do
      run gcloud compute tpus tpu-vm scp "${archive}" "${node}:flan_jax.tar.gz" \
        "${LOCATION[@]}" --worker=all
    done
    fetch="rm -rf ${REMOTE_DIR} && mkdir ${REMOTE_DIR} && tar -xzf flan_jax.tar.gz -C ${REMOTE_DIR}"
  else
    require_value "--repo (or --source)" "${REPO}"
    local repo ref
    repo=$(quote_word "${REPO}")
    ref=$(quote_word "${REF}")
    fetch="if [ -d ${REMOTE_DIR}/.git ]; then git -C ${REMOTE_DIR} fetch --quiet ${repo} ${ref}"
    fetch+=" && git -C ${REMOTE_DIR} checkout --quiet FETCH_HEAD; else git clone --quiet"
    fetch+=" ${repo} ${REMOTE_DIR} && git -C ${REMOTE_DIR} checkout --quiet ${ref}; fi"
  fi
  # jax[tpu] at the version setup.py pinned, so libtpu matches the jax the package uses.
  local setup="cd ${REMOTE_DIR} && python3 -m venv .venv && .venv/bin/pip install --quiet -e ."
  setup+=" && .venv/bin/pip install --quiet \"jax[tpu]==\$(.venv/bin/python -c"
  setup+=" 'import jax; print(jax.__version__)')\""
  local node
  for node in "${NODES[@]}"; do
    ssh_workers "${node}" all "set -e; ${fetch}; ${setup}"
  done
}

cmd_train() {
  require_value --model-dir "${MODEL_DIR}"
  require_value --mixture "${MIXTURE}"
  location_flags
  node_names
  local args=("${TRAIN_ARGS[@]}" --gin.MODEL_DIR="${MODEL_DIR}"
    --gin.MIXTURE_OR_TASK_NAME="${MIXTURE}"
    --gin.trainer.PartitioningConfig.coordinator_address=auto)
  local coordinator=""
  if [[ ${SLICES} != 1 ]]; then
    args+=(--gin.partitioning.MeshConfig.num_slices="${SLICES}")
    coordinator=$(capture "COORDINATOR_IP" gcloud compute tpus tpu-vm describe "${NODES[0]}" \
      "${LOCATION[@]}" --format='value(networkEndpoints[0].ipAddress)')
  fi
  local train_line
  train_line="$(quote_words .venv/bin/flan-jax train "${args[@]}")"
  local slice
  for ((slice = 0; slice < ${#NODES[@]}; slice++)); do
    local env=""
    if [[ ${SLICES} != 1 ]]; then
      env="export MEGASCALE_COORDINATOR_ADDRESS=${coordinator}:${MEGASCALE_PORT}"
      env+=" MEGASCALE_PORT=${MEGASCALE_PORT} MEGASCALE_NUM_SLICES=${SLICES}"
      env+=" MEGASCALE_SLICE_ID=${slice}; "
    fi
    # nohup and a pid file: the run outlives the ssh session, and `stop` finds it.
    ssh_workers "${NODES[slice]}" all "cd ${REMOTE_DIR} && ${env}nohup ${train_line} \
> ~/${REMOTE_LOG} 2>&1 < /dev/null & echo \$! > ~/${REMOTE_PID}"
  done
}

cmd_logs() {
  location_flags
  node_names
  ssh_workers "${NODES[0]}" 0 "tail -n +1 -F ~/${REMOTE_LOG}"
}

cmd_stop() {
  location_flags
  node_names
  local node
  for node in "${NODES[@]}"; do
    ssh_workers "${node}" all "if [ -f ~/${REMOTE_PID} ]; then kill \"\$(cat ~/${REMOTE_PID})\" \
|| true; rm -f ~/${REMOTE_PID}; fi"
  done
}

main "$@"
