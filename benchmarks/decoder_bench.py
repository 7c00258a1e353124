"""Decoder-only training and greedy decoding: flan_jax vs transformers PyTorch, same examples.

For each model (a tiny Llama-style model, a Llama-style model of about 125M parameters, and
OPT-125m's dimensions; float32):

- training: flan_jax's trainer step (:func:`flan_jax.training.trainer.advance`, AdamW) on
  rows of 512 tokens, 8 per step, packed by :class:`flan_jax.data.packing.DecoderOnlyFormat`
  (block-diagonal causal mask, positions reset per example, loss on the targets only), vs
  transformers' ``LlamaForCausalLM`` / ``OPTForCausalLM`` holding the same weights, trained
  with ``torch.optim.AdamW`` on exactly the examples of flan_jax's batch i at step i, one
  example per row padded to the longest of its batch (dynamic padding, the usual practice;
  labels -100 on the prompt and the padding). The figure of merit is real target tokens
  per second.
- greedy decoding: :func:`flan_jax.models.decoding.greedy_decode` (KV cache) vs HF
  ``generate(do_sample=False)`` from the same prompts, both forced to the full length.

MaxText's SFT trainer is the issue's second peer. It is reported as not run when the
``maxtext`` distribution cannot be installed from the package index this machine reaches
(the check runs ``pip download maxtext`` into a temporary directory).

The (input, target) lengths come from real instruction data (``../shared/data``, as
``train_bench.py``); the tokens are random ids. Prints a table and writes
``benchmarks/results/decoder_bench.json``.

    python benchmarks/decoder_bench.py [--quick] [--models tiny,llama_125m,opt_125m]
    # on an accelerator (accelerator_check.sh): bf16, flan_jax only, with MFU
    python benchmarks/decoder_bench.py --dtype bfloat16 --jax_only --lengths auto
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gin
from model_bench import _time
from train_bench import _ListBatches, device_peak, sample_examples

from flan_jax.data import file_io, packing
from flan_jax.models import decoder, decoding
from flan_jax.models.config import DecoderConfig
from flan_jax.models.hf_convert_decoder import hf_config_from_config, hf_state_dict_from_params
from flan_jax.testing import data as data_testing
from flan_jax.training import losses, optimizers, train_state, train_step, trainer

RESULTS = Path(__file__).parent / "results" / "decoder_bench.json"
MODEL_GIN_DIR = Path(__file__).resolve().parents[1] / "gin_configs" / "models"
ROWS, LENGTHS = 8, {"inputs": 384, "targets": 128}  # 8 rows x 512 tokens
LEARNING_RATE = 1e-4
# Prompt / generated lengths of the greedy-decoding comparison.
DECODE_BATCH, PROMPT_LEN, DECODE_LEN = 8, 64, 64


def _parse_model_gin(name: str) -> DecoderConfig:
    gin.clear_config()
    try:
        gin.parse_config_file(str(MODEL_GIN_DIR / f"{name}.gin"))
        return gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    finally:
        gin.clear_config()


def model_configs(dtype: str = "float32") -> dict[str, DecoderConfig]:
    """The benchmarked models in ``dtype``; vocabularies cut to 32,000 except OPT's own."""
    llama = _parse_model_gin("llama3_1b")
    return {
        "tiny": _parse_model_gin("decoder_tiny").replace(dtype=dtype),
        # Llama-style at about 125M parameters (GPT-2 small's shape with GQA and SwiGLU).
        "llama_125m": llama.replace(
            vocab_size=32000,
            start_token_id=1,  # a 32,000-id vocabulary's BOS (Llama 2 / Mistral)
            emb_dim=768,
            num_heads=12,
            num_kv_heads=4,
            head_dim=64,
            mlp_dim=2048,
            num_layers=12,
            tie_word_embeddings=False,
            dtype=dtype,
        ),
        "opt_125m": _parse_model_gin("opt_125m").replace(dtype=dtype),
    }


def parameter_count(config: DecoderConfig) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(decoder.abstract_params(config)))


def make_batches(examples, config: DecoderConfig, count: int) -> list[dict]:
    """``count`` batches of ``ROWS`` packed decoder-only rows from one shuffled buffer."""
    model = decoder.DecoderModel(config)
    packed = packing.pack_examples(
        examples[:1024],
        packing.FeatureLengths.from_mapping(LENGTHS),
        feature_format=model.feature_format,
    )
    order = np.random.default_rng(0).permutation(len(packed["decoder_target_tokens"]))
    if len(order) < ROWS * count:
        raise ValueError(f"only {len(order)} packed rows for {count} batches of {ROWS}")
    return [
        {k: v[order[i * ROWS : (i + 1) * ROWS]] for k, v in packed.items()} for i in range(count)
    ]


def bench_flan_jax_training(config: DecoderConfig, params: Any, batches: list[dict]) -> dict:
    """Real target tokens/s of the trainer's step; the first batch only compiles."""
    model = decoder.DecoderModel(config)
    run = trainer.build_run(
        model,
        learning_rate=LEARNING_RATE,
        optimizer_config=optimizers.AdamWConfig(),
        loss_config=losses.LossConfig(normalization="num_real_target_tokens"),
        step_config=train_step.TrainStepConfig(),
        partitioning_config=trainer.PartitioningConfig(),
    )
    state = train_state.init_sharded_train_state(params, run.optimizer, run.shardings)
    source = _ListBatches(batches)
    state, _ = trainer.advance(run, state, source, 1)
    jax.block_until_ready(state)
    start = time.perf_counter()
    state, pending = trainer.advance(run, state, source, len(batches) - 1)
    fetched = jax.device_get(pending)
    seconds = time.perf_counter() - start
    tokens = sum(float(out["num_real_target_tokens"]) for out in fetched)
    steps = len(batches) - 1
    length = LENGTHS["inputs"] + LENGTHS["targets"]
    flops = decoder.estimate_train_flops_per_step(config, batch_size=ROWS, length=length) * steps
    return {
        "seconds_per_step": seconds / steps,
        "real_target_tokens_per_s": tokens / seconds,
        "flops_per_s": flops / seconds,
    }


def torch_model(config: DecoderConfig, params: Any) -> Any:
    """The transformers causal LM holding ``params`` (float32, train mode)."""
    import torch
    import transformers

    hf = hf_config_from_config(config, eos_token_id=1)
    config_class = transformers.AutoConfig.for_model(hf["model_type"])
    hf_config = config_class.__class__(**{k: v for k, v in hf.items() if k != "model_type"})
    model = transformers.AutoModelForCausalLM.from_config(hf_config)
    state = {
        k: torch.from_numpy(np.array(v))
        for k, v in hf_state_dict_from_params(params, config).items()
    }
    loaded = model.load_state_dict(state, strict=False)
    if loaded.unexpected_keys or set(loaded.missing_keys) - {"lm_head.weight"}:
        raise ValueError(f"HF export does not fit transformers: {loaded}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.float()


def _torch_batch(segments: list[dict], torch: Any) -> tuple[Any, Any, Any]:
    """One example per row, right-padded to the longest; labels only on the targets.

    HF reads ``start ++ inputs ++ targets`` (flan_jax's shifted row plus its last target)
    and shifts the labels itself: label ``j + 1`` is what position ``j`` predicts, i.e.
    flan_jax's target ``j``, kept where flan_jax weights it.
    """
    length = max(len(s["decoder_input_tokens"]) for s in segments) + 1
    ids = np.zeros((len(segments), length), np.int64)
    mask = np.zeros((len(segments), length), np.int64)
    labels = np.full((len(segments), length), -100, np.int64)
    for i, s in enumerate(segments):
        n = len(s["decoder_input_tokens"])
        ids[i, :n] = s["decoder_input_tokens"]
        ids[i, n] = s["decoder_target_tokens"][-1]
        mask[i, : n + 1] = 1
        labels[i, 1 : n + 1] = np.where(
            s["decoder_loss_weights"] > 0, s["decoder_target_tokens"], -100
        )
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(labels)


def bench_torch_training(config: DecoderConfig, params: Any, batches: list[dict]) -> dict:
    import torch

    torch.manual_seed(0)
    model = torch_model(config, params).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    torch_batches = [_torch_batch(data_testing.unpack_decoder_only_rows(b), torch) for b in batches]

    def train_one(batch):
        ids, mask, labels = batch
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()

    train_one(torch_batches[0])  # warm-up
    tokens = 0.0
    start = time.perf_counter()
    for batch in torch_batches[1:]:
        train_one(batch)
        tokens += float((batch[2] >= 0).sum())
    seconds = time.perf_counter() - start
    steps = len(torch_batches) - 1
    return {"seconds_per_step": seconds / steps, "real_target_tokens_per_s": tokens / seconds}


def bench_decoding(config: DecoderConfig, params: Any, iters: int) -> dict:
    """Generated tokens/s of greedy decoding, both forced to ``DECODE_LEN`` new tokens."""
    import torch

    rng = np.random.default_rng(1)
    prompts = rng.integers(3, min(config.vocab_size, 1000), (DECODE_BATCH, PROMPT_LEN))
    model = decoder.DecoderModel(config)
    prompts_jax = prompts.astype(np.int32)

    def ours():
        out = decoding.greedy_decode(
            model, params, prompts_jax, max_decode_len=DECODE_LEN, eos_id=-1
        )
        return np.asarray(out.tokens)

    hf = torch_model(config, params).eval()
    # flan_jax reads [start] ++ prompt; HF gets the same ids.
    hf_ids = torch.from_numpy(
        np.concatenate([np.full((DECODE_BATCH, 1), config.start_token_id), prompts], axis=1)
    )

    def theirs():
        with torch.no_grad():
            return hf.generate(
                hf_ids,
                attention_mask=torch.ones_like(hf_ids),
                do_sample=False,
                max_new_tokens=DECODE_LEN,
                min_new_tokens=DECODE_LEN,
                pad_token_id=0,
            )

    ours_s, theirs_s = _time(ours, iters), _time(theirs, iters)
    same = ours() == theirs()[:, hf_ids.shape[1] :].numpy()
    tokens = DECODE_BATCH * DECODE_LEN
    return {
        "flan_jax_tokens_per_s": tokens / ours_s,
        "hf_generate_tokens_per_s": tokens / theirs_s,
        "ratio": theirs_s / ours_s,
        "same_tokens": float(same.mean()),
    }


def maxtext_status() -> dict:
    """Whether the ``maxtext`` distribution installs here (it would get its own venv)."""
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, "maxtext"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    if done.returncode == 0:
        return {"run": False, "reason": "maxtext downloads; its SFT run is not wired up yet"}
    lines = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    return {"run": False, "reason": lines[-1] if lines else done.stderr.strip()[-200:]}


def bench_model(
    name: str,
    config: DecoderConfig,
    examples,
    steps: int,
    iters: int,
    *,
    peak: float,
    jax_only: bool = False,
) -> dict:
    print(f"{name}: {parameter_count(config) / 1e6:.1f}M parameters ...", flush=True)
    params = jax.tree.map(np.asarray, decoder.init_params(config, jax.random.key(0)))
    batches = make_batches(examples, config, steps + 1)
    ours = bench_flan_jax_training(config, params, batches)
    ours["mfu"] = ours["flops_per_s"] / peak
    if jax_only:  # the accelerator check: no PyTorch peer on the accelerator
        return {"model": name, "parameters": parameter_count(config), "train": {"flan_jax": ours}}
    theirs = bench_torch_training(config, params, batches)
    return {
        "model": name,
        "parameters": parameter_count(config),
        "train": {
            "flan_jax": ours,
            "pytorch": theirs,
            "ratio": ours["real_target_tokens_per_s"] / theirs["real_target_tokens_per_s"],
        },
        "greedy_decode": bench_decoding(config, params, iters),
    }


def print_jax_only_table(runs: list[dict], peak_source: str) -> None:
    print(f"\nMFU against {peak_source}")
    header = f"{'model':<11} | {'params':>7} | {'s/step':>7} | {'train tgt tok/s':>15} | {'MFU':>6}"
    print(header + "\n" + "-" * len(header))
    for run in runs:
        ours = run["train"]["flan_jax"]
        print(
            f"{run['model']:<11} | {run['parameters'] / 1e6:>6.1f}M | "
            f"{ours['seconds_per_step']:>7.3f} | {ours['real_target_tokens_per_s']:>15,.0f} | "
            f"{ours['mfu']:>6.1%}"
        )


def print_table(runs: list[dict], maxtext: dict) -> None:
    header = (
        f"{'model':<11} | {'params':>7} | {'train tgt tok/s':>15} | {'torch tok/s':>11} | "
        f"{'ratio':>6} | {'decode tok/s':>12} | {'HF tok/s':>9} | {'ratio':>6}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for run in runs:
        train, dec = run["train"], run["greedy_decode"]
        print(
            f"{run['model']:<11} | {run['parameters'] / 1e6:>6.1f}M | "
            f"{train['flan_jax']['real_target_tokens_per_s']:>15,.0f} | "
            f"{train['pytorch']['real_target_tokens_per_s']:>11,.0f} | {train['ratio']:>5.2f}x | "
            f"{dec['flan_jax_tokens_per_s']:>12,.0f} | {dec['hf_generate_tokens_per_s']:>9,.0f} | "
            f"{dec['ratio']:>5.2f}x"
        )
    print(f"MaxText: not run ({maxtext['reason']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model, 2 timed steps")
    parser.add_argument("--models", default=None, help="comma-separated subset of the models")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps")
    parser.add_argument("--dtype", default="float32", help="activation dtype (bfloat16 on TPU/GPU)")
    parser.add_argument(
        "--jax_only", action="store_true", help="flan_jax training only: no PyTorch, no MaxText"
    )
    parser.add_argument(
        "--lengths", choices=("real", "synthetic", "auto"), default="real", help="as train_bench"
    )
    args = parser.parse_args(argv)
    configs = model_configs(args.dtype)
    names = args.models.split(",") if args.models else (["tiny"] if args.quick else list(configs))
    steps = args.steps or (2 if args.quick else 3)
    examples = sample_examples(args.lengths)
    if not examples:
        print(f"No real data under {data_testing.shared_data_dir()}; nothing to measure.")
        return 1
    peak, peak_source = device_peak()
    if args.jax_only:
        runs = [
            bench_model(name, configs[name], examples, steps, 1, peak=peak, jax_only=True)
            for name in names
        ]
        print_jax_only_table(runs, peak_source)
        report = {
            "device_kind": jax.devices()[0].device_kind,
            "device_count": jax.device_count(),
            "dtype": args.dtype,
            "rows_per_step": ROWS,
            "lengths": LENGTHS,
            "timed_steps": steps,
            "peak_flops_per_s": peak,
            "peak_source": peak_source,
            "runs": runs,
        }
        name = RESULTS.with_name("decoder_bench_accelerator.json")
        file_io.write_json_atomically(name, report)
        print(f"wrote {name}")
        return 0
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    iters = 1 if args.quick else 2
    runs = [bench_model(name, configs[name], examples, steps, iters, peak=peak) for name in names]
    maxtext = maxtext_status()
    print_table(runs, maxtext)
    report = {
        "rows_per_step": ROWS,
        "lengths": LENGTHS,
        "decode": {"batch": DECODE_BATCH, "prompt": PROMPT_LEN, "new_tokens": DECODE_LEN},
        "timed_steps": steps,
        "cpus": os.cpu_count(),
        "machine": platform.processor(),
        "jax_device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "runs": runs,
        "maxtext": maxtext,
    }
    file_io.write_json_atomically(RESULTS, report)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
