#!/usr/bin/env bash
# The short accelerator check (at most about 8 minutes), run from anywhere in the checkout on a
# machine where JAX finds a GPU or TPU. Nothing is installed: the checkout is imported from
# PYTHONPATH, beside the machine's own JAX (a `pip install -e .` would swap in the pinned CPU
# jaxlib). It runs, in bfloat16:
#   1. train_bench: the trainer's packed T5 1.1 train step, base and large, and XL when the
#      device has the memory (checked first); real target tokens/s and MFU;
#   2. decoder_bench: the decoder-only train step (tiny, Llama-style 125M, OPT-125m);
#   3. model_bench: T5 1.1 small vs transformers PyTorch on the same device (when torch is
#      there);
# MFU is against the device's published bf16 peak (benchmarks/accelerator_peaks.tsv, with
# sources). Tables go to the console and logs, JSON to $OUT when set, else benchmarks/results.
#
#   ACCEL_CHECK_SMOKE=1 benchmarks/accelerator_check.sh   # tiny sizes, f32, ~1-2 min on a CPU
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
python="${PYTHON:-python3}"
out="${OUT:-benchmarks/results}"
mkdir -p "$out" benchmarks/results
started="$out/.accelerator_check_started"  # JSON older than this is from an earlier run
touch "$started"
failed=0

# run NAME SECONDS COMMAND...: one benchmark under a time limit, logged; a failure is
# reported and the check goes on.
run() {
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local status=${PIPESTATUS[0]}
  if [ "$status" -ne 0 ]; then
    echo "== $name FAILED with status $status (124: over its time limit)"
    failed=1
  fi
}

"$python" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, \
jax.device_count(), 'x', jax.devices()[0].device_kind)" || exit 1

if [ "${ACCEL_CHECK_SMOKE:-0}" = 1 ]; then
  dtype=float32 t5_sizes=tiny decoder_models=tiny steps=1
else
  dtype=bfloat16 t5_sizes=base,large decoder_models=tiny,llama_125m,opt_125m steps=5
  # XL (2.85B parameters) trains with f32 parameters and gradients plus Adafactor's factored
  # state (about 12 bytes per parameter, 34 GB) and 16 rows of activations: ask for 48 GiB.
  memory=$("$python" -c "import jax; s = jax.devices()[0].memory_stats() or {}; \
print(s.get('bytes_limit', 0))")
  if [ "${memory:-0}" -ge $((48 * 1024 ** 3)) ]; then
    t5_sizes=base,large,xl
  else
    echo "== T5 1.1 XL skipped: the device has ${memory:-unknown} bytes, under 48 GiB"
  fi
fi

run train_bench 270 "$python" benchmarks/train_bench.py --sizes "$t5_sizes" --dtype "$dtype" \
  --steps "$steps" --jax_only --lengths auto
run decoder_bench 100 "$python" benchmarks/decoder_bench.py --models "$decoder_models" \
  --dtype "$dtype" --steps "$steps" --jax_only --lengths auto
if [ "${ACCEL_CHECK_SMOKE:-0}" != 1 ] && "$python" -c "import torch, transformers" 2>/dev/null; then
  run model_bench 80 "$python" benchmarks/model_bench.py --iters 3 --dtypes bfloat16
fi

for name in train_bench_accelerator decoder_bench_accelerator model_bench; do
  json="benchmarks/results/$name.json"
  if [ "$out" != benchmarks/results ] && [ "$json" -nt "$started" ]; then
    cp "$json" "$out/"
  fi
done
rm -f "$started"
exit "$failed"
