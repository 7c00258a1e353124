"""T5 1.1 small: flan_jax vs transformers PyTorch on the same machine, in the same run.

On a machine with a CUDA GPU both frameworks run on it (JAX picks it by default; PyTorch is
moved there), and every timed call waits for the device.

Measures forward+backward (a training step without the optimizer) and greedy decoding with
the KV cache, at float32 and bfloat16, for batch 8 x (512 inputs, 128 targets) by default.
Prints a table with the flan_jax / PyTorch speed ratios and writes JSON to
benchmarks/results/model_bench.json.

    python benchmarks/model_bench.py            # full shapes, 3 timed iterations
    python benchmarks/model_bench.py --quick    # small shapes, 1 timed iteration
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from torch_reference import torch_device, torch_t5_from_params

from flan_jax.data import file_io
from flan_jax.models import decoding, t5
from flan_jax.models.config import T5Config

RESULTS = Path(__file__).parent / "results" / "model_bench.json"
NEVER_EOS = -1  # decode the full length in both frameworks


def _time(fn: Callable[[], object], iters: int, sync: Callable[[], None] = lambda: None) -> float:
    """Seconds per call after one warm-up call (which includes compilation)."""
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) / iters


def _inputs(
    config: T5Config, batch: int, enc_len: int, dec_len: int
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.integers(2, config.vocab_size, (batch, enc_len)).astype(np.int32),
        rng.integers(2, config.vocab_size, (batch, dec_len)).astype(np.int32),
    )


def bench_jax(
    config: T5Config, params: dict, enc: np.ndarray, targets: np.ndarray, iters: int
) -> dict[str, float]:
    """Seconds per forward+backward and per greedy decode of targets.shape[1] tokens."""
    model = t5.EncoderDecoder(config)
    dec_in = np.pad(targets[:, :-1], ((0, 0), (1, 0)))

    @jax.jit
    def grad_step(p):
        def loss(p):
            logits = model.apply({"params": p}, enc, dec_in)
            return -jnp.mean(
                jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)
            )

        return jax.value_and_grad(loss)(p)

    def decode():
        return decoding.greedy_decode(
            t5.T5Model(config), params, enc, max_decode_len=targets.shape[1], eos_id=NEVER_EOS
        )

    train = _time(lambda: jax.block_until_ready(grad_step(params)), iters)
    greedy = _time(lambda: jax.block_until_ready(decode().tokens), iters)
    return {"train_step_s": train, "greedy_decode_s": greedy}


def bench_torch(
    config: T5Config, params: dict, enc: np.ndarray, targets: np.ndarray, iters: int, dtype: str
) -> dict[str, float]:
    """The same measurements with transformers' T5ForConditionalGeneration."""
    import torch

    model = torch_t5_from_params(config, params, dtype=dtype)
    device = torch_device()
    enc_t = torch.from_numpy(enc).long().to(device)
    labels = torch.from_numpy(targets).long().to(device)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def train_step():
        model.zero_grad(set_to_none=True)
        model(input_ids=enc_t, labels=labels).loss.backward()

    def decode():
        with torch.no_grad():
            model.generate(
                input_ids=enc_t,
                max_new_tokens=targets.shape[1],
                min_new_tokens=targets.shape[1],
                do_sample=False,
                num_beams=1,
                decoder_start_token_id=0,
                pad_token_id=0,
                eos_token_id=None,
            )

    model.train()
    model.config.dropout_rate = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    train = _time(train_step, iters, sync)
    model.eval()
    return {"train_step_s": train, "greedy_decode_s": _time(decode, iters, sync)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 2 x (128, 32), 1 iteration")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    batch, enc_len, dec_len = (2, 128, 32) if args.quick else (8, 512, 128)
    iters = args.iters or (1 if args.quick else 3)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for dtype in args.dtypes.split(","):
        config = T5Config(dtype=dtype)  # T5 1.1 small dimensions
        params = t5.init_params(config, jax.random.key(0))
        enc, targets = _inputs(config, batch, enc_len, dec_len)
        ours = bench_jax(config, params, enc, targets, iters)
        theirs = bench_torch(config, params, enc, targets, iters, dtype)
        for metric in ("train_step_s", "greedy_decode_s"):
            rows.append(
                {
                    "dtype": dtype,
                    "metric": metric,
                    "flan_jax_s": ours[metric],
                    "torch_s": theirs[metric],
                    "speedup": theirs[metric] / ours[metric],
                }
            )
    print(
        f"T5 1.1 small, batch {batch} x ({enc_len}, {dec_len}), {iters} iteration(s), "
        f"{os.cpu_count()} CPU(s), JAX device {jax.devices()[0].device_kind}"
    )
    print(f"{'dtype':<9} {'metric':<16} {'flan_jax s':>11} {'torch s':>9} {'speedup':>8}")
    for row in rows:
        print(
            f"{row['dtype']:<9} {row['metric']:<16} {row['flan_jax_s']:>11.3f} "
            f"{row['torch_s']:>9.3f} {row['speedup']:>7.2f}x"
        )
    report = {
        "shape": {"batch": batch, "inputs": enc_len, "targets": dec_len},
        "iters": iters,
        "cpus": os.cpu_count(),
        "machine": platform.processor(),
        "jax_device": jax.devices()[0].device_kind,
        "torch_device": torch_device(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "rows": rows,
    }
    file_io.write_json_atomically(RESULTS, report)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
