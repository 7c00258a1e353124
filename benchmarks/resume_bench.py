"""Data-iterator restore time vs the step restored: the seqio `skip` path against Grain.

Caches the demo mixture's tasks with the Beam caching (`bench_cache.cache_mixture`: seqio's
TFRecord cache and the ArrayRecord shards), then, for each input pipeline,
restores the training iterator at each of `--steps` and times it:

  seqio   `use_cached=True`: the restore reopens the cached `tf.data` stream and skips
          every example before the restored buffer (reads and parses them, no packing)
  grain   the restore sets the position; the first batch reads one buffer by index

A state at step N is the state the iterator would save there: the position (buffer index)
that N steps reach at this pipeline's measured examples per step, which is all that a
restore depends on. "restore" is building the iterator with the state; "first batch" is
the next batch after it (where the seqio replay happens); "total" is both, the time a
resumed run waits before its first step. Seconds are the best of `--repeats`.

    python benchmarks/resume_bench.py [--steps 10,1000,10000] [--batch_size 8]
        [--buffer_size 256] [--cache_dir DIR]

Writes benchmarks/results/resume_bench.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import bench_cache

from flan_jax.data import file_io, pipeline
from flan_jax.tasks import demo

RESULTS_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results", "resume_bench.json"
)
PIPELINES = ("seqio", "grain")
# Steps run to measure examples per step before the restores.
CALIBRATION_STEPS = 20


def make_iterator(args: argparse.Namespace, input_pipeline: str, state=None):
    return pipeline.make_train_iterator(
        demo.DEMO_MIXTURE,
        task_feature_lengths=demo.DEMO_TASK_FEATURE_LENGTHS,
        batch_size=args.batch_size,
        seed=0,
        buffer_size=args.buffer_size,
        use_cached=True,
        input_pipeline=input_pipeline,
        state=state,
    )


def state_at_step(state: dict, step: int, examples_per_step: float, buffer_size: int) -> dict:
    """`state` moved to the start of the buffer that `step` steps reach."""
    return {
        **state,
        "buffer_index": int(step * examples_per_step // buffer_size),
        "row_offset": 0,
        "batches": step,
    }


def measure_pipeline(args: argparse.Namespace, input_pipeline: str) -> dict:
    iterator = make_iterator(args, input_pipeline)
    for _ in range(CALIBRATION_STEPS):
        next(iterator)
    examples_per_step = iterator.stats.examples / CALIBRATION_STEPS
    results = {"examples_per_step": examples_per_step, "steps": {}}
    for step in args.steps:
        state = state_at_step(iterator.get_state(), step, examples_per_step, args.buffer_size)
        best: dict[str, float] = {}
        for _ in range(args.repeats):
            start = time.perf_counter()
            restored = make_iterator(args, input_pipeline, state=state)
            restore = time.perf_counter() - start
            next(restored)
            total = time.perf_counter() - start
            for name, value in (("restore_s", restore), ("total_s", total)):
                best[name] = min(best.get(name, value), value)
        best["first_batch_s"] = best["total_s"] - best["restore_s"]
        best["examples_before"] = state["buffer_index"] * args.buffer_size
        results["steps"][str(step)] = best
        print(f"  {input_pipeline} step {step:>6}: {best['total_s']:.3f} s", flush=True)
    return results


def print_table(results: dict) -> None:
    steps = results["steps"]
    lines = [
        f"{'step':>8}{'examples skipped':>18}"
        + "".join(f"{p + ' total s':>16}" for p in PIPELINES)
        + f"{'grain restore s':>17}{'seqio / grain':>15}"
    ]
    for step in steps:
        figures = {p: results["pipelines"][p]["steps"][str(step)] for p in PIPELINES}
        lines.append(
            f"{step:>8,}{figures['seqio']['examples_before']:>18,}"
            + "".join(f"{figures[p]['total_s']:>16.3f}" for p in PIPELINES)
            + f"{figures['grain']['restore_s']:>17.4f}"
            + f"{figures['seqio']['total_s'] / figures['grain']['total_s']:>14.1f}x"
        )
    grain = [results["pipelines"]["grain"]["steps"][str(s)]["total_s"] for s in steps]
    lines.append(
        f"grain total at step {steps[-1]:,} / step {steps[0]:,}: {grain[-1] / grain[0]:.2f}"
    )
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", default="10,1000,10000")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--buffer_size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache_dir", help="where the cache is (re)used; default: a temp dir")
    args = parser.parse_args()
    args.steps = [int(s) for s in args.steps.split(",")]
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="resume_bench_")
    vocabulary = demo.get_demo_vocabulary(os.path.join(cache_dir, "vocabulary"))
    demo.register_demo_tasks(vocabulary)
    start = time.perf_counter()
    counts = bench_cache.cache_mixture(demo.DEMO_MIXTURE, cache_dir=cache_dir)
    print(
        f"cache: {sum(counts.values()):,} examples of {len(counts)} tasks in "
        f"{time.perf_counter() - start:.0f} s",
        flush=True,
    )
    results = {
        "mixture": demo.DEMO_MIXTURE,
        "cached_examples": sum(counts.values()),
        "batch_size": args.batch_size,
        "buffer_size": args.buffer_size,
        "steps": args.steps,
        "repeats": args.repeats,
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
        "pipelines": {p: measure_pipeline(args, p) for p in PIPELINES},
    }
    file_io.write_json_atomically(RESULTS_PATH, results)
    print_table(results)


if __name__ == "__main__":
    main()
