"""What the per-step host read cost: the train step run as the trainer runs it now vs with
the per-step read the old step did, side by side in one run.

- **deferred** (the trainer since the one-loop redesign): steps are dispatched back to back
  and their metrics are fetched once, at the logging step (every ``--log_period`` steps);
- **per-step read**: the same steps, each followed by ``int(metrics["nonfinite"])``, the
  read the old ``TrainStep.__call__`` did in its default ``on_nonfinite="raise"`` mode.

Both use the same jitted T5 train step (:mod:`flan_jax.training.train_step`), Adafactor and
host batches (each step assembles its global batch from numpy, as the trainer does), on
whatever device JAX picks (CPU here; a GPU through ``benchmarks/accelerator_check.sh``).
Prints a table and writes ``benchmarks/results/step_sync_bench.json``.

    python benchmarks/step_sync_bench.py [--steps 60] [--sizes tiny,small] [--dtype float32]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax
import numpy as np
import t5_sizes

from flan_jax.data import file_io
from flan_jax.models import t5
from flan_jax.models.config import T5Config
from flan_jax.testing.training import make_random_batch
from flan_jax.training import adafactor, losses, partitioning, train_state, train_step

RESULTS = Path(__file__).parent / "results" / "step_sync_bench.json"
# Rows, input length and target length per step, per T5 1.1 size.
SHAPES = {"tiny": (32, 64, 32), "small": (8, 256, 128)}


def build(size: str, dtype: str):
    dims, (rows, enc_len, dec_len) = t5_sizes.T5_1_1_DIMS[size], SHAPES[size]
    config = T5Config(vocab_size=32128, dtype=dtype, **dims)
    model = t5.T5Model(config)
    mesh = partitioning.make_mesh(partitioning.MeshConfig())
    rules = partitioning.get_logical_axis_rules("1d")
    axes = model.param_logical_axes()
    optimizer = adafactor.make_adafactor(1e-3, param_axes=axes)
    shardings = train_state.get_train_state_shardings(
        model.abstract_params(), axes, optimizer, mesh, rules
    )
    step = train_step.make_train_step(
        model=model,
        optimizer=optimizer,
        loss_config=losses.LossConfig(),
        mesh=mesh,
        rules=rules,
        state_shardings=shardings,
    )
    params = jax.tree.map(np.asarray, model.init_params(jax.random.key(0)))
    state = train_state.init_sharded_train_state(params, optimizer, shardings)
    batches = [make_random_batch(i, rows, enc_len, dec_len, 32000) for i in range(8)]
    return step, state, mesh, rules, batches


def run_steps(step, state, mesh, rules, batches, num_steps, *, log_period, read_each_step):
    """Seconds for ``num_steps`` steps (metrics fetched every ``log_period`` steps)."""
    pending = []
    start = time.perf_counter()
    for i in range(num_steps):
        batch = partitioning.make_global_batch(batches[i % len(batches)], mesh, rules)
        state, metrics = step(state, batch)
        if read_each_step:
            int(metrics["nonfinite"])
        pending.append(metrics)
        if (i + 1) % log_period == 0 or i + 1 == num_steps:
            jax.device_get(pending)
            pending.clear()
    jax.block_until_ready(state)
    return time.perf_counter() - start, state


def bench(size: str, dtype: str, steps: int, log_period: int, repeats: int) -> dict:
    step, state, mesh, rules, batches = build(size, dtype)
    _, state = run_steps(
        step, state, mesh, rules, batches, 3, log_period=1, read_each_step=True
    )  # compiles
    best = {"deferred": float("inf"), "per_step_read": float("inf")}
    for _ in range(repeats):  # alternate, so drift on a shared machine hits both
        for mode in best:
            seconds, state = run_steps(
                step,
                state,
                mesh,
                rules,
                batches,
                steps,
                log_period=log_period,
                read_each_step=mode == "per_step_read",
            )
            best[mode] = min(best[mode], seconds / steps)
    return {
        "size": size,
        "dtype": dtype,
        "deferred_s_per_step": best["deferred"],
        "per_step_read_s_per_step": best["per_step_read"],
        "speedup": best["per_step_read"] / best["deferred"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log_period", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    rows = [
        bench(size, args.dtype, args.steps, args.log_period, args.repeats)
        for size in args.sizes.split(",")
    ]
    device = jax.devices()[0].device_kind
    print(
        f"train step, {args.steps} steps, metrics every {args.log_period}, {args.dtype}, "
        f"{device}, {os.cpu_count()} CPU(s); best of {args.repeats}"
    )
    print(f"{'size':<6} {'deferred s/step':>16} {'per-step read s/step':>21} {'speedup':>8}")
    for row in rows:
        print(
            f"{row['size']:<6} {row['deferred_s_per_step']:>16.4f} "
            f"{row['per_step_read_s_per_step']:>21.4f} {row['speedup']:>7.2f}x"
        )
    file_io.write_json_atomically(
        RESULTS, {"device": device, "cpus": os.cpu_count(), "args": vars(args), "rows": rows}
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
