"""Training throughput: flan_jax's packed, jitted Adafactor step vs PyTorch T5, same examples.

For each size (T5 1.1 "tiny" and "small" dimensions, float32 on CPU):

- flan_jax: examples best-fit packed into rows (segment ids, positions), the sharded train
  step of :mod:`flan_jax.training.train_step` with Adafactor (z-loss, fused loss kernel);
- PyTorch: transformers' ``T5ForConditionalGeneration`` with ``torch.optim.AdamW``, one
  example per row padded to the longest in its batch (dynamic padding, the usual practice);

both on the same examples, whose (input, target) lengths come from real instruction data
(``../shared/data/flan_cot_data`` and ``gsm8k``; see ``benchmarks/packing_bench.py``).
The figure of merit is real (non-padding) target tokens per second. MFU is the model's
matmul FLOPs per second of the padded shapes over the matmul peak of this CPU, measured
here by timing a large float32 matmul in JAX, or, on an accelerator with a published peak
(``accelerator_peaks.tsv``), that peak times the device count. Packing efficiency of our
packer vs seqio's ``trim_and_pack`` on the same data is reported too (from ``packing_bench``).

Prints a table and writes ``benchmarks/results/train_bench.json``.

    python benchmarks/train_bench.py [--quick]
    # on an accelerator (accelerator_check.sh): larger sizes in bf16, no PyTorch peer
    python benchmarks/train_bench.py --sizes base,large --dtype bfloat16 --jax_only \
        --lengths auto
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import accelerator_peaks
import packing_bench
import t5_sizes

from flan_jax.data import file_io, packing
from flan_jax.models import t5
from flan_jax.models.config import T5Config
from flan_jax.testing import data as data_testing
from flan_jax.training import (
    adafactor,
    losses,
    train_state,
    train_step,
    trainer,
)

RESULTS = Path(__file__).parent / "results" / "train_bench.json"
SIZES = t5_sizes.T5_1_1_DIMS
# Rows per step and row lengths per size; small is kept short so a CPU step takes seconds.
# base and larger are for accelerators: rows of 512 / 128 tokens, XL with half the rows so a
# 2.85B-parameter train step fits one large device.
SHAPES = {
    "tiny": (8, {"inputs": 256, "targets": 128}),
    "small": (4, {"inputs": 192, "targets": 128}),
    "base": (32, {"inputs": 512, "targets": 128}),
    "large": (32, {"inputs": 512, "targets": 128}),
    "xl": (16, {"inputs": 512, "targets": 128}),
}
CPU_SIZES = ("tiny", "small")  # the default: what the 2-core CPU runs in minutes


def measure_matmul_peak(size: int = 3072, trials: int = 5, repeats: int = 3) -> float:
    """FLOP/s of a jitted float32 ``[size, size] @ [size, size]`` matmul on this machine.

    The best of several trials: a shared machine's other work only ever slows a trial, so
    the fastest one is the closest to the hardware's attainable peak.
    """
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            out = matmul(a, a)
        out.block_until_ready()
        best = max(best, 2.0 * size**3 * repeats / (time.perf_counter() - start))
    return best


def make_model_config(size: str, dtype: str = "float32") -> T5Config:
    return T5Config(vocab_size=32128, dtype=dtype, **SIZES[size])


class _ListBatches:
    """A :class:`flan_jax.data.batch_source.BatchSource` over prepared numpy batches."""

    def __init__(self, batches: list[dict]):
        self._batches, self._next = batches, 0

    def __next__(self) -> dict:
        batch = self._batches[self._next]
        self._next += 1
        return batch

    def get_state(self) -> dict:
        return {"next": self._next}

    def set_state(self, state) -> None:
        self._next = int(state["next"])

    def log_scalars(self) -> dict:
        return {}


def build_jax_run(config: T5Config):
    """The trainer's run (mesh, Adafactor, the jitted train step) and a fresh state."""
    run = trainer.build_run(
        t5.T5Model(config),
        learning_rate=1e-3,
        optimizer_config=adafactor.AdafactorConfig(),
        loss_config=losses.LossConfig(normalization="average_per_sequence"),
        step_config=train_step.TrainStepConfig(),
        partitioning_config=trainer.PartitioningConfig(),
    )
    params = jax.tree.map(np.asarray, t5.init_params(config, jax.random.key(0)))
    state = train_state.init_sharded_train_state(params, run.optimizer, run.shardings)
    return run, state


def make_packed_batches(examples, rows: int, lengths: dict, count: int) -> list[dict]:
    """``count`` batches of ``rows`` packed rows, from one 1024-example buffer whose rows are
    shuffled (as the training pipeline does), so batches mix long and short examples."""
    packed = packing.pack_examples(examples[:1024], packing.FeatureLengths.from_mapping(lengths))
    order = np.random.default_rng(0).permutation(len(packed["decoder_target_tokens"]))
    if len(order) < rows * count:
        raise ValueError(f"only {len(order)} packed rows for {count} batches of {rows}")
    return [
        {k: v[order[i * rows : (i + 1) * rows]] for k, v in packed.items()} for i in range(count)
    ]


def bench_flan_jax(config: T5Config, batches: list[dict], lengths: dict) -> dict:
    """Real target tokens/s of packed training; the first batch only compiles.

    The steps run as the trainer runs them between two logging steps
    (:func:`flan_jax.training.trainer.advance`: dispatch only), and their metrics are
    fetched once at the end, as at a logging step.
    """
    run, state = build_jax_run(config)
    rows = len(batches[0]["decoder_target_tokens"])
    source = _ListBatches(batches)
    state, _ = trainer.advance(run, state, source, 1)
    jax.block_until_ready(state)
    start = time.perf_counter()
    state, pending = trainer.advance(run, state, source, len(batches) - 1)
    fetched = jax.device_get(pending)
    seconds = time.perf_counter() - start
    tokens = sum(float(out["num_real_target_tokens"]) for out in fetched)
    sequences = sum(float(out["num_sequences"]) for out in fetched)
    steps = len(batches) - 1
    flops = (
        t5.estimate_train_flops_per_step(
            config,
            batch_size=rows,
            inputs_length=lengths["inputs"],
            targets_length=lengths["targets"],
        )
        * steps
    )
    return {
        "seconds_per_step": seconds / steps,
        "real_target_tokens_per_s": tokens / seconds,
        "sequences_per_s": sequences / seconds,
        "flops_per_s": flops / seconds,
    }


def _torch_batch(examples, torch):
    """One example per row, padded to the longest input / target of the batch."""
    enc_len = max(len(e["inputs"]) for e in examples)
    dec_len = max(len(e["targets"]) for e in examples)
    enc = np.zeros((len(examples), enc_len), np.int64)
    labels = np.full((len(examples), dec_len), -100, np.int64)  # -100: ignored by HF
    for i, e in enumerate(examples):
        enc[i, : len(e["inputs"])] = e["inputs"]
        labels[i, : len(e["targets"])] = e["targets"]
    return torch.from_numpy(enc), torch.from_numpy(enc > 0), torch.from_numpy(labels)


def bench_torch(config: T5Config, packed_batches: list[dict]) -> dict:
    """Real target tokens/s of transformers' T5 training with AdamW on the same examples:
    step i trains on exactly the examples packed into flan_jax's batch i."""
    import torch
    import transformers

    from flan_jax.models.hf_convert import hf_config_from_config

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    hf = {
        k: v
        for k, v in hf_config_from_config(config).items()
        if k not in ("architectures", "model_type")
    }
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**hf)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = [_torch_batch(data_testing.unpack_rows(b), torch) for b in packed_batches]
    steps = len(batches) - 1

    def train_one(batch):
        enc, mask, labels = batch
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=enc, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()

    train_one(batches[0])  # warm-up
    tokens = flops = sequences = 0.0
    start = time.perf_counter()
    for batch in batches[1:]:
        train_one(batch)
        tokens += float((batch[2] >= 0).sum())
        sequences += batch[0].shape[0]
        flops += t5.estimate_train_flops_per_step(
            config,
            batch_size=batch[0].shape[0],
            inputs_length=batch[0].shape[1],
            targets_length=batch[2].shape[1],
        )
    seconds = time.perf_counter() - start
    return {
        "seconds_per_step": seconds / steps,
        "real_target_tokens_per_s": tokens / seconds,
        "sequences_per_s": sequences / seconds,
        "flops_per_s": flops / seconds,
    }


def bench_size(
    size: str, examples, steps: int, peak: float, *, dtype: str = "float32", jax_only: bool = False
) -> dict:
    config = make_model_config(size, dtype)
    rows, lengths = SHAPES[size]
    batches = make_packed_batches(examples, rows, lengths, steps + 1)
    ours = bench_flan_jax(config, batches, lengths)
    ours["mfu"] = ours["flops_per_s"] / peak
    run = {"size": size, "dtype": dtype, "rows": rows, "lengths": lengths, "flan_jax": ours}
    if not jax_only:
        theirs = bench_torch(config, batches)
        theirs["mfu"] = theirs["flops_per_s"] / peak
        run["pytorch"] = theirs
        run["tokens_per_s_ratio"] = (
            ours["real_target_tokens_per_s"] / theirs["real_target_tokens_per_s"]
        )
    return run


def bench_packing(examples) -> list[dict]:
    rows = []
    for lengths in packing_bench.CAPACITIES[:2]:
        rows.append(
            {
                "lengths": lengths,
                "flan_jax": packing_bench.run_ours(examples, lengths, 1024),
                "seqio_trim_and_pack": packing_bench.run_seqio(examples, lengths),
            }
        )
    return rows


def print_tables(peak: float, peak_source: str, runs: list[dict], packing_rows: list[dict]) -> None:
    print(f"\nMFU against {peak_source}: {peak / 1e9:,.1f} GFLOP/s")
    header = (
        f"{'size':<6} | {'framework':<9} | {'s/step':>7} | {'real tgt tok/s':>14} | "
        f"{'seq/s':>7} | {'MFU':>6} | {'ratio':>6}"
    )
    print(header + "\n" + "-" * len(header))
    for run in runs:
        for name in ("flan_jax", "pytorch"):
            if name not in run:
                continue
            r = run[name]
            ratio = f"{run['tokens_per_s_ratio']:.2f}x" if "tokens_per_s_ratio" in run else ""
            ratio = ratio if name == "flan_jax" else ""
            print(
                f"{run['size']:<6} | {name:<9} | {r['seconds_per_step']:>7.3f} | "
                f"{r['real_target_tokens_per_s']:>14,.0f} | {r['sequences_per_s']:>7.1f} | "
                f"{r['mfu']:>6.1%} | {ratio:>6}"
            )
    if packing_rows:
        print("\npacking efficiency (share of real tokens, both streams; bottleneck stream)")
    for row in packing_rows:
        ours, theirs = row["flan_jax"], row["seqio_trim_and_pack"]
        print(
            f"  {row['lengths']['inputs']}/{row['lengths']['targets']}: flan_jax "
            f"{ours['combined']:.1%} ({ours['bottleneck']:.1%}) vs seqio "
            f"{theirs['combined']:.1%} ({theirs['bottleneck']:.1%})"
        )


def sample_synthetic_length_examples(count: int = 4096) -> list[dict]:
    """Random-token examples with seeded uniform lengths (inputs 8-400, targets 2-100), for
    a machine without ``../shared/data`` (an accelerator lent for a few minutes)."""
    rng = np.random.default_rng(0)
    pairs = list(zip(rng.integers(8, 401, count).tolist(), rng.integers(2, 101, count).tolist()))
    return data_testing.make_examples_from_lengths(pairs, 0)


def sample_examples(lengths: str) -> list[dict]:
    """``real`` (instruction data lengths, empty without the data), ``synthetic``, or
    ``auto`` (real when the data is there)."""
    examples = sample_real_length_examples() if lengths in ("real", "auto") else []
    if not examples and lengths in ("synthetic", "auto"):
        examples = sample_synthetic_length_examples()
    return examples


def device_peak() -> tuple[float, str]:
    """The FLOP/s MFU is measured against, and what it is."""
    kind = jax.devices()[0].device_kind
    published = accelerator_peaks.published_peak(kind)
    if published is not None:
        count = jax.device_count()
        return published["flops_per_s"] * count, f"{count} x {published['device']} bf16 peak"
    return measure_matmul_peak(), f"the measured f32 matmul peak of this {kind}"


def sample_real_length_examples(count: int = 4096) -> list[dict]:
    """Random-token examples with the (input, target) lengths of ``count`` real instruction
    examples (seeded); empty when ``../shared/data`` is absent."""
    pairs = data_testing.load_instruction_lengths()
    if not pairs:
        return []
    rng = np.random.default_rng(0)
    sample = [
        pairs[int(i)] for i in rng.choice(len(pairs), size=min(count, len(pairs)), replace=False)
    ]
    return data_testing.make_examples_from_lengths(sample, 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer timed steps")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per framework")
    parser.add_argument("--sizes", default=",".join(CPU_SIZES), help=f"of {', '.join(SHAPES)}")
    parser.add_argument("--dtype", default="float32", help="activation dtype (bfloat16 on TPU/GPU)")
    parser.add_argument("--jax_only", action="store_true", help="no PyTorch peer, no packing")
    parser.add_argument(
        "--lengths",
        choices=("real", "synthetic", "auto"),
        default="real",
        help="example lengths: real instruction data, seeded uniform, or real when present",
    )
    args = parser.parse_args(argv)
    steps = args.steps or (2 if args.quick else 5)
    sizes = args.sizes.split(",")
    unknown = sorted(set(sizes) - set(SHAPES))
    if unknown:
        parser.error(f"--sizes: unknown {unknown}; choose from {', '.join(SHAPES)}")
    examples = sample_examples(args.lengths)
    if not examples:
        print(f"No real data under {data_testing.shared_data_dir()}; nothing to measure.")
        return 1
    peak, peak_source = device_peak()
    runs = [
        bench_size(size, examples, steps, peak, dtype=args.dtype, jax_only=args.jax_only)
        for size in sizes
    ]
    packing_rows = [] if args.jax_only else bench_packing(examples[: 2048 if args.quick else 4096])
    print_tables(peak, peak_source, runs, packing_rows)
    result = {
        "machine": platform.processor() or platform.machine(),
        "devices": [str(d) for d in jax.devices()],
        "quick": args.quick,
        "timed_steps": steps,
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "lengths": args.lengths,
        "peak_flops_per_s": peak,
        "peak_source": peak_source,
        "runs": runs,
        "packing": packing_rows,
    }
    name = RESULTS.with_name("train_bench_quick.json" if args.quick else RESULTS.name)
    if args.jax_only:  # an accelerator check's run never overwrites the CPU comparison
        name = RESULTS.with_name("train_bench_accelerator.json")
    file_io.write_json_atomically(name, result)
    print(f"wrote {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
