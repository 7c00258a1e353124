"""Fused loss kernels vs naive dense losses, and vectorised vs naive token alignment.

Losses: forward + backward (gradients w.r.t. hidden states and output kernel) of the per-token
cross-entropy with z-loss and of the sparse top-5 KL, at vocabulary 32,128 and batch 8 x 512
targets, d_model 512 and 768. Peak memory is XLA's compiled temporary-buffer size
(`memory_analysis().temp_size_in_bytes`: deterministic, excludes inputs and outputs); time is
the median wall time of jitted calls after a warm-up.

Alignment: the naive O(m n) Python DP with a Python Levenshtein per cell against
`flan_jax.distill.alignment.align_tokens`, on GSM8K question + answer texts (from
../shared/data/gsm8k when present, else synthetic arithmetic text) split by two different
rule-based tokenizers (GPT-style " word" / up-to-3-digit tokens vs SentencePiece-style "▁word"
and single digits).

Usage: python benchmarks/kernel_bench.py [--quick] [--repeats N] [--out PATH]
Prints a table and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from flan_jax.data import file_io
from flan_jax.distill import alignment
from flan_jax.kernels import fused_loss
from flan_jax.testing import alignment as naive_alignment
from flan_jax.testing import kernels as naive_kernels
from flan_jax.testing.shared_data import shared_data_dir

VOCAB = 32128
TOP_K = 5
RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
GSM8K = pathlib.Path(shared_data_dir()) / "gsm8k" / "test.jsonl"


def _loss_functions(targets, top_ids, top_logprobs, chunk_size):
    """name -> (fused, naive) functions of (hidden, kernel) returning a scalar."""
    return {
        "ce+z_loss": (
            lambda h, w: fused_loss.cross_entropy_from_hidden(
                h, w, targets, z_loss=1e-4, chunk_size=chunk_size
            ).loss.sum(),
            lambda h, w: naive_kernels.naive_cross_entropy(h, w, targets, z_loss=1e-4)[0].sum(),
        ),
        "sparse_kl": (
            lambda h, w: fused_loss.sparse_kl_from_hidden(
                h, w, top_ids, top_logprobs, missing_mass="residual", chunk_size=chunk_size
            ).sum(),
            lambda h, w: naive_kernels.naive_sparse_kl(
                h, w, top_ids, top_logprobs, missing_mass="residual"
            ).sum(),
        ),
    }


def _measure(fn, hidden, kernel, repeats: int) -> tuple[int, float]:
    """(compiled temp bytes, median seconds) of value_and_grad w.r.t. hidden and kernel."""
    step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
    compiled = step.lower(hidden, kernel).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        raise RuntimeError(f"the {jax.default_backend()} backend reports no memory analysis")
    temp_bytes = int(analysis.temp_size_in_bytes)
    jax.block_until_ready(compiled(hidden, kernel))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(hidden, kernel))
        times.append(time.perf_counter() - start)
    return temp_bytes, statistics.median(times)


def bench_losses(
    batch: int, length: int, d_models: list[int], repeats: int, chunk_size: int
) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    tokens = batch * length
    targets = jnp.asarray(rng.integers(0, VOCAB, size=(batch, length)), jnp.int32)
    ids, logprobs = naive_kernels.random_top_k(rng, (batch, length), VOCAB, TOP_K)
    for d_model in d_models:
        hidden = jnp.asarray(rng.normal(size=(batch, length, d_model)) * 0.1, jnp.float32)
        kernel = jnp.asarray(rng.normal(size=(d_model, VOCAB)) * 0.05, jnp.float32)
        for name, (fused, naive) in _loss_functions(
            targets, jnp.asarray(ids), jnp.asarray(logprobs), chunk_size
        ).items():
            fused_bytes, fused_s = _measure(fused, hidden, kernel, repeats)
            naive_bytes, naive_s = _measure(naive, hidden, kernel, repeats)
            rows.append(
                {
                    "loss": name,
                    "d_model": d_model,
                    "tokens": tokens,
                    "vocab": VOCAB,
                    "chunk_size": chunk_size,
                    "fused_temp_mib": fused_bytes / 2**20,
                    "naive_temp_mib": naive_bytes / 2**20,
                    "memory_ratio": naive_bytes / max(fused_bytes, 1),
                    "fused_s": fused_s,
                    "naive_s": naive_s,
                    "speedup": naive_s / fused_s,
                }
            )
            print(
                f"  {name:<10} d={d_model}: fused {fused_bytes / 2**20:8.1f} MiB "
                f"{fused_s * 1e3:8.1f} ms | naive {naive_bytes / 2**20:8.1f} MiB "
                f"{naive_s * 1e3:8.1f} ms",
                flush=True,
            )
    return rows


def _teacher_tokens(text: str) -> list[str]:
    """GPT-style: a leading space belongs to the token; digits in groups of up to 3."""
    return re.findall(r" ?\d{1,3}| ?[A-Za-z]+| ?[^\sA-Za-z\d]+|\n", text)


def _student_tokens(text: str) -> list[str]:
    """SentencePiece-style: "▁" marks a word start; digits one by one; punctuation apart."""
    pieces = []
    for word in text.split():
        parts = re.findall(r"\d|[A-Za-z]+|[^A-Za-z\d]", word)
        pieces += ["▁" + parts[0]] + parts[1:]
    return pieces


def _alignment_texts(count: int) -> tuple[list[str], str]:
    if GSM8K.exists():
        with open(GSM8K, encoding="utf-8") as handle:
            records = [json.loads(line) for _, line in zip(range(count), handle)]
        return [f"{r['question']}\n{r['answer']}" for r in records], str(GSM8K)
    texts = [
        " ".join(
            f"Step {i}: {i * 7} + {i * 13} = <<{i * 7}+{i * 13}={i * 20}>>{i * 20} apples in total."
            for i in range(1, 12 + n % 5)
        )
        for n in range(count)
    ]
    return texts, "synthetic (GSM8K absent)"


def bench_alignment(count: int) -> dict:
    texts, source = _alignment_texts(count)
    pairs = [(_teacher_tokens(t), _student_tokens(t)) for t in texts]
    for teacher, student in pairs[:3]:  # both give the same path
        assert alignment.align_tokens(teacher, student).pairs.tolist() == [
            list(p) for p in naive_alignment.naive_align(teacher, student)[1]
        ]
    start = time.perf_counter()
    for teacher, student in pairs:
        naive_alignment.naive_align(teacher, student)
    naive_s = time.perf_counter() - start
    start = time.perf_counter()
    for teacher, student in pairs:
        alignment.align_tokens(teacher, student)
    fast_s = time.perf_counter() - start
    teacher_len = float(np.mean([len(t) for t, _ in pairs]))
    student_len = float(np.mean([len(s) for _, s in pairs]))
    row = {
        "source": source,
        "examples": count,
        "mean_teacher_tokens": teacher_len,
        "mean_student_tokens": student_len,
        "naive_examples_per_s": count / naive_s,
        "vectorised_examples_per_s": count / fast_s,
        "speedup": naive_s / fast_s,
    }
    print(
        f"  alignment: {count} examples, ~{teacher_len:.0f} x {student_len:.0f} tokens: naive "
        f"{count / naive_s:.1f} ex/s, vectorised {count / fast_s:.1f} ex/s",
        flush=True,
    )
    return row


def print_tables(losses: list[dict], align: dict) -> None:
    header = (
        f"{'loss':<10} {'d':>4} {'tokens':>6} {'fused MiB':>10} {'naive MiB':>10} "
        f"{'mem x':>6} {'fused ms':>9} {'naive ms':>9} {'speed x':>7}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in losses:
        print(
            f"{r['loss']:<10} {r['d_model']:>4} {r['tokens']:>6} {r['fused_temp_mib']:>10.1f} "
            f"{r['naive_temp_mib']:>10.1f} {r['memory_ratio']:>6.1f} {r['fused_s'] * 1e3:>9.1f} "
            f"{r['naive_s'] * 1e3:>9.1f} {r['speedup']:>7.2f}"
        )
    print(
        f"\nalignment ({align['source']}): {align['examples']} examples, mean "
        f"{align['mean_teacher_tokens']:.0f} teacher x {align['mean_student_tokens']:.0f} "
        f"student tokens; naive {align['naive_examples_per_s']:.1f} ex/s, vectorised "
        f"{align['vectorised_examples_per_s']:.1f} ex/s, speedup {align['speedup']:.1f}x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small shapes (2 x 128 targets, d_model 512) and 5 alignments",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement")
    parser.add_argument("--chunk-size", type=int, default=fused_loss.DEFAULT_CHUNK_SIZE)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/)")
    args = parser.parse_args(argv)
    if args.quick:
        batch, length, d_models, count, repeats = 2, 128, [512], 5, 1
    else:
        batch, length, d_models, count, repeats = 8, 512, [512, 768], 30, args.repeats
    print(f"backend {jax.default_backend()}, {jax.device_count()} device(s)", flush=True)
    losses = bench_losses(batch, length, d_models, repeats, args.chunk_size)
    align = bench_alignment(count)
    print_tables(losses, align)
    out = (
        pathlib.Path(args.out)
        if args.out
        else RESULTS_DIR / ("kernel_bench_quick.json" if args.quick else "kernel_bench.json")
    )
    payload = {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "quick": args.quick,
        "losses": losses,
        "alignment": align,
    }
    file_io.write_json_atomically(out, payload)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
