"""Packing efficiency and speed: flan_jax's best-fit packer vs seqio's `trim_and_pack`.

Lengths come from real instruction data read in place (`../shared/data/flan_cot_data` CoT
TSVs and GSM8K train; input = question, target = rationale + answer), counted with a
tokenizer-free proxy (words and punctuation marks, about one subword each). Both packers
get the same examples in the same order; ours packs buffers of `--buffer_size` examples.

Efficiency is the share of real (non-padding) token slots, per stream and over both; the
"bottleneck" column is the stream with more demand relative to its capacity, the one whose
padding can be reduced at all. Prints a table and writes benchmarks/results/packing_bench.json.

    python benchmarks/packing_bench.py [--num_examples 8192] [--buffer_size 1024]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from flan_jax.data import file_io, packing
from flan_jax.testing import data as data_testing
from flan_jax.testing.shared_data import shared_data_dir

CAPACITIES = (
    {"inputs": 256, "targets": 256},
    {"inputs": 512, "targets": 512},
    {"inputs": 1024, "targets": 1024},
    {"inputs": 512, "targets": 256},
)


def efficiencies(inputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    enc = np.count_nonzero(inputs) / inputs.size
    dec = np.count_nonzero(targets) / targets.size
    both = (np.count_nonzero(inputs) + np.count_nonzero(targets)) / (inputs.size + targets.size)
    return {
        "rows": int(len(inputs)),
        "encoder": enc,
        "decoder": dec,
        "combined": both,
        "bottleneck": max(enc, dec),
    }


def run_ours(examples, lengths, buffer_size):
    spec = packing.FeatureLengths.from_mapping(lengths)
    start = time.perf_counter()
    buffers = [
        packing.pack_examples(examples[i : i + buffer_size], spec)
        for i in range(0, len(examples), buffer_size)
    ]
    seconds = time.perf_counter() - start
    stacked = {k: np.concatenate([b[k] for b in buffers]) for k in buffers[0]}
    result = efficiencies(stacked["encoder_input_tokens"], stacked["decoder_target_tokens"])
    return {**result, "examples_per_s": len(examples) / seconds}


def run_seqio(examples, lengths):
    start = time.perf_counter()
    packed = data_testing.seqio_trim_and_pack(examples, lengths)
    seconds = time.perf_counter() - start
    return {
        **efficiencies(packed["inputs"], packed["targets"]),
        "examples_per_s": len(examples) / seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_examples", type=int, default=8192)
    parser.add_argument("--buffer_size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pairs = data_testing.load_instruction_lengths()
    if not pairs:
        print(f"No real data under {shared_data_dir()}; nothing to measure.")
        return 1
    rng = np.random.default_rng(args.seed)
    sample = [
        pairs[int(i)]
        for i in rng.choice(len(pairs), size=min(args.num_examples, len(pairs)), replace=False)
    ]
    examples = data_testing.make_examples_from_lengths(sample, args.seed)
    rows = []
    for lengths in CAPACITIES:
        ours = run_ours(examples, lengths, args.buffer_size)
        theirs = run_seqio(examples, lengths)
        rows.append(
            {
                "inputs": lengths["inputs"],
                "targets": lengths["targets"],
                "flan_jax": ours,
                "seqio_trim_and_pack": theirs,
            }
        )
    header = (
        f"{'capacity':>10} | {'packer':>8} | {'rows':>5} | {'enc':>6} | {'dec':>6} | "
        f"{'both':>6} | {'bottleneck':>10} | {'examples/s':>10}"
    )
    print(
        f"{len(examples)} examples from {len(pairs)} real (input, target) pairs, "
        f"buffer {args.buffer_size}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        for name, key in (("flan_jax", "flan_jax"), ("seqio", "seqio_trim_and_pack")):
            r = row[key]
            print(
                f"{row['inputs']:>4}/{row['targets']:<5} | {name:>8} | {r['rows']:>5} | "
                f"{r['encoder']:>6.1%} | {r['decoder']:>6.1%} | {r['combined']:>6.1%} | "
                f"{r['bottleneck']:>10.1%} | {r['examples_per_s']:>10,.0f}"
            )
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    result = {
        "num_examples": len(examples),
        "buffer_size": args.buffer_size,
        "length_proxy": "words and punctuation marks",
        "rows": rows,
    }
    path = os.path.join(out_dir, "packing_bench.json")
    file_io.write_json_atomically(path, result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
