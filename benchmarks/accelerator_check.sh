#!/usr/bin/env bash
# The short accelerator check, run from the repository root on a machine with a GPU and the
# usual JAX / PyTorch / transformers stack (nothing is installed; the checkout is imported
# from PYTHONPATH): flan_jax vs PyTorch on T5 1.1 small (model_bench, float32 and bfloat16)
# and the train step with deferred metrics vs a per-step host read (step_sync_bench).
# Logs and JSON go to $OUT when set, else benchmarks/results.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-benchmarks/results}"
mkdir -p "$out" benchmarks/results
python3 -c "import jax, flax, torch; print('jax', jax.__version__, 'flax', flax.__version__, \
'torch', torch.__version__, jax.devices())"
python3 benchmarks/model_bench.py --iters 5 2>&1 | tee "$out/model_bench.log"
python3 benchmarks/step_sync_bench.py --steps 100 --dtype bfloat16 2>&1 \
  | tee "$out/step_sync_bench.log"
if [ "$out" != benchmarks/results ]; then
  cp benchmarks/results/model_bench.json benchmarks/results/step_sync_bench.json "$out/"
fi
