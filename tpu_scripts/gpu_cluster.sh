#!/usr/bin/env bash
# `flan-jax train` on several GPU nodes, two ways (tpu_scripts/GPU_CLUSTERS.md explains them):
#
#   slurm: submit tpu_scripts/slurm_train.sbatch (one process per GPU; jax.distributed
#          reads SLURM's environment, gin preset gpu/slurm.gin):
#     tpu_scripts/gpu_cluster.sh slurm --nodes 2 --size xl \
#       --model-dir /shared/runs/ft --mixture flan2022_submix -- \
#       --gin.VOCABULARY_PATH=/shared/ckpts/flan_t5_xl/spiece.model
#
#   ssh:   no scheduler; one process per host over ssh, host 0 the coordinator (plain
#          jax.distributed, gin preset gpu/multi_node.gin):
#     tpu_scripts/gpu_cluster.sh ssh --hosts node0,node1 --size xxl \
#       --model-dir /shared/runs/ft --mixture flan2022_submix -- ...
#
# --size small|base|large|xl|xxl picks models/t5_1_1_SIZE.gin, runs/finetune.gin and
# gpu/t5_1_1_SIZE.gin; arguments after -- go to `flan-jax train` after them. --dry-run prints
# the sbatch or ssh commands and runs nothing. MODEL_DIR must be a file system every node
# sees: each process writes its own checkpoint shards there.
set -euo pipefail

# shellcheck source=tpu_scripts/launch_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/launch_lib.sh"

readonly SBATCH_FILE=tpu_scripts/slurm_train.sbatch
readonly REMOTE_LOG=flan_jax_train.log

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
  cat <<'EOF'
Flags:
  --size SIZE          T5 1.1 size: small, base, large, xl or xxl
  --model-dir DIR      run directory on a shared file system
  --mixture NAME       registered seqio task or mixture
  --dry-run            print the commands instead of running them
slurm: --nodes N [--gpus-per-node 8] [--partition P] [--time HH:MM:SS] [--job-name NAME]
ssh:   --hosts H0,H1,... [--port 1234] [--repo-dir DIR (default: this checkout's path)]
EOF
}

main() {
  [[ $# -gt 0 ]] || { usage; exit 2; }
  local subcommand=$1
  shift
  case ${subcommand} in
    -h | --help) usage; return ;;
    slurm | ssh) ;;
    *) die "unknown subcommand '${subcommand}'; one of slurm ssh" ;;
  esac
  parse_flags "$@"
  case ${SIZE} in
    small | base | large | xl | xxl) ;;
    *) die "--size must be one of small base large xl xxl; got '${SIZE}'" ;;
  esac
  require_value --model-dir "${MODEL_DIR}"
  require_value --mixture "${MIXTURE}"
  TRAIN_ARGS=(--gin_file="models/t5_1_1_${SIZE}.gin" --gin_file=runs/finetune.gin
    --gin_file="gpu/t5_1_1_${SIZE}.gin" "${EXTRA_ARGS[@]}"
    --gin.MODEL_DIR="${MODEL_DIR}" --gin.MIXTURE_OR_TASK_NAME="${MIXTURE}")
  "cmd_${subcommand}"
}

parse_flags() {
  SIZE="" MODEL_DIR="" MIXTURE="" NODES="" GPUS_PER_NODE=8 PARTITION="" TIME_LIMIT=""
  JOB_NAME=flan_jax HOSTS="" PORT=1234 REPO_DIR="${PWD}" EXTRA_ARGS=()
  while [[ $# -gt 0 ]]; do
    case $1 in
      --dry-run) DRY_RUN=1 ;;
      --size | --model-dir | --mixture | --nodes | --gpus-per-node | --partition | --time | \
        --job-name | --hosts | --port | --repo-dir)
        [[ $# -ge 2 ]] || die "$1 needs a value"
        set_flag "$1" "$2"
        shift ;;
      --) shift; EXTRA_ARGS=("$@"); break ;;
      *) die "unknown flag '$1' (flan-jax train arguments go after --)" ;;
    esac
    shift
  done
}

set_flag() {
  case $1 in
    --size) SIZE=$2 ;;
    --model-dir) MODEL_DIR=$2 ;;
    --mixture) MIXTURE=$2 ;;
    --nodes) NODES=$2 ;;
    --gpus-per-node) GPUS_PER_NODE=$2 ;;
    --partition) PARTITION=$2 ;;
    --time) TIME_LIMIT=$2 ;;
    --job-name) JOB_NAME=$2 ;;
    --hosts) HOSTS=$2 ;;
    --port) PORT=$2 ;;
    --repo-dir) REPO_DIR=$2 ;;
  esac
}

cmd_slurm() {
  require_positive_int --nodes "${NODES}"
  require_positive_int --gpus-per-node "${GPUS_PER_NODE}"
  local options=(--job-name="${JOB_NAME}" --nodes="${NODES}"
    --ntasks-per-node="${GPUS_PER_NODE}" --gpus-per-node="${GPUS_PER_NODE}")
  [[ -z ${PARTITION} ]] || options+=(--partition="${PARTITION}")
  [[ -z ${TIME_LIMIT} ]] || options+=(--time="${TIME_LIMIT}")
  run sbatch "${options[@]}" "${SBATCH_FILE}" "${TRAIN_ARGS[@]}" --gin_file=gpu/slurm.gin
}

cmd_ssh() {
  require_value --hosts "${HOSTS}"
  require_positive_int --port "${PORT}"
  local hosts
  IFS=, read -r -a hosts <<<"${HOSTS}"
  local process
  for ((process = 0; process < ${#hosts[@]}; process++)); do
    local train_line
    train_line=$(quote_words .venv/bin/flan-jax train "${TRAIN_ARGS[@]}" \
      --gin_file=gpu/multi_node.gin --gin.COORDINATOR_ADDRESS="${hosts[0]}:${PORT}" \
      --gin.NUM_PROCESSES="${#hosts[@]}" --gin.PROCESS_ID="${process}")
    # nohup: the process outlives the ssh session; its log stays on its host.
    run ssh "${hosts[process]}" "cd $(quote_word "${REPO_DIR}") && nohup ${train_line} \
> ~/${REMOTE_LOG} 2>&1 < /dev/null &"
  done
}

main "$@"
