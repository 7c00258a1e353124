"""Evaluation throughput: flan_jax's Predictor vs transformers PyTorch, same weights, same run.

The two kinds of work the evaluation suite (`flan-jax eval`) gives the model, at T5 1.1 small
dimensions with random weights, float32 (the CPU default of `eval` and `score`):

- **Scoring**: rank classification of MMLU 5-shot direct prompts over the option letters
  A-D, i.e. the log-likelihood of each (prompt, option) pair, as
  `flan_jax.evaluation.metrics.rank_classify` and `flan-jax score` compute it.
- **Greedy generation** of ``--decode_len`` tokens for BBH 3-shot answer-only prompts.

The prompts are real (``../shared/data`` via `flan_jax.evaluation.flan_t5_data`), taken
evenly across the subjects / tasks present, so their lengths vary as in a suite run. They are
tokenised with a SentencePiece model trained on them here: any vocabulary times the same,
as long as both sides see the same token ids (both use `Predictor.tokenize`).

- flan_jax: `flan_jax.inference.Predictor` (batches of ``--batch_size``, lengths padded to
  a multiple of 32, the last batch padded to full size).
- PyTorch: `T5ForConditionalGeneration` on the HF export of the same parameters
  (`torch_reference.torch_t5_from_params`), a plain batched loop padding each batch to its
  longest row: ``model(...)`` for scoring, ``model.generate(do_sample=False, num_beams=1)``
  for greedy.

Both sides decode the full ``--decode_len`` tokens: the output projection's EOS column is
zeroed, so the EOS logit is 0 while the largest of 32k random logits is positive (the run
checks that no flan_jax row stopped early), and ``generate`` runs with no EOS id.

Each side makes one warm-up pass (flan_jax: the whole workload, which compiles every length
bucket; PyTorch: the first batch), then one timed pass: ``ratio`` compares the timed passes.
flan_jax's warm-up pass is reported too (``cold``, compilation included, as a suite run that
evaluates each task once pays it), with ``cold ratio`` against PyTorch's timed pass.
Tokenisation is inside the timed pass on both sides. The outputs are compared: log-likelihoods
allclose, greedy tokens equal per row. Prints a table and writes JSON to
benchmarks/results/eval_bench.json.

    python benchmarks/eval_bench.py            # 32 MMLU questions (128 pairs), 24 BBH prompts
    python benchmarks/eval_bench.py --quick    # 16 questions (64 pairs), 8 prompts, 8 tokens
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np
import t5_sizes
from torch_reference import torch_t5_from_params

from flan_jax.data import file_io, vocabularies
from flan_jax.evaluation import flan_t5_data
from flan_jax.inference import EOS_ID, DecodeConfig, Predictor
from flan_jax.models import t5
from flan_jax.models.config import T5Config
from flan_jax.testing.shared_data import shared_data_dir

RESULTS = Path(__file__).parent / "results" / "eval_bench.json"
MMLU_OPTIONS = ("A", "B", "C", "D")
MAX_INPUT_LEN = 512  # T5's usual input length; longer prompts are cut, keeping EOS
VOCAB_SIZE = 8000  # at most; a small corpus yields fewer pieces
SCORE_RTOL, SCORE_ATOL = 1e-4, 1e-3  # float32, ~500 positions summed in different orders

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Workload:
    """The texts both sides process: scored (prompt, option) pairs and prompts to decode."""

    score_inputs: list[str]
    score_targets: list[str]
    greedy_inputs: list[str]


def _spread(items: Sequence[T], count: int) -> list[T]:
    """``count`` items taken evenly across ``items`` (so across subjects), in order."""
    if count >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def load_workload(*, num_questions: int, num_prompts: int) -> Workload:
    """MMLU direct questions x their 4 option letters, and BBH answer-only prompts."""
    paths = flan_t5_data.shared_data_paths(shared_data_dir())
    mmlu = [
        example
        for subject in flan_t5_data.available_subsets("mmlu", paths=paths)
        for example in flan_t5_data.load_mmlu(subject, cot=False, paths=paths)
    ]
    bbh = [
        example
        for task in flan_t5_data.available_subsets("bbh", paths=paths)
        for example in flan_t5_data.load_bbh(task, cot=False, paths=paths)
    ]
    if not mmlu or not bbh:
        sys.exit(f"eval_bench: no MMLU or BBH test files under {shared_data_dir()}.")
    questions = _spread(mmlu, num_questions)
    return Workload(
        score_inputs=[q.inputs for q in questions for _ in MMLU_OPTIONS],
        score_targets=[option for _ in questions for option in MMLU_OPTIONS],
        greedy_inputs=[example.inputs for example in _spread(bbh, num_prompts)],
    )


def never_eos(params: Any) -> Any:
    """``params`` with the output projection's EOS column zeroed (see the module docstring)."""
    decoder = dict(params["decoder"])
    kernel = decoder["logits_dense"]["kernel"]
    decoder["logits_dense"] = {**decoder["logits_dense"], "kernel": kernel.at[:, EOS_ID].set(0.0)}
    return {**params, "decoder": decoder}


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _batches(rows: Sequence[T], size: int) -> list[Sequence[T]]:
    return [rows[start : start + size] for start in range(0, len(rows), size)]


def flan_jax_side(predictor: Predictor, work: Workload) -> dict[str, Any]:
    """Scores and greedy tokens through the Predictor: cold pass, then the timed pass."""

    def score() -> np.ndarray:
        return predictor.score(work.score_inputs, work.score_targets).log_likelihoods

    def greedy() -> list[np.ndarray]:
        rows = predictor.predict_tokens(predictor.tokenize(work.greedy_inputs))
        return [np.asarray(row) for row in rows]

    out: dict[str, Any] = {}
    for name, fn in (("scoring", score), ("greedy", greedy)):
        _, cold = _timed(fn)
        out[name], seconds = _timed(fn)
        out[f"{name}_s"], out[f"{name}_cold_s"] = seconds, cold
        print(f"flan_jax {name}: cold pass {cold:.1f}s, timed pass {seconds:.1f}s", flush=True)
    return out


def torch_side(model: Any, predictor: Predictor, work: Workload, batch_size: int) -> dict[str, Any]:
    """The same work with a plain batched PyTorch loop (tokens from the same vocabulary)."""
    import torch

    device = next(model.parameters()).device
    decode_len = predictor.config.max_decode_len

    def padded(rows: Sequence[Sequence[int]], fill: int = 0) -> torch.Tensor:
        length = max(len(row) for row in rows)
        return torch.tensor([list(row) + [fill] * (length - len(row)) for row in rows]).to(device)

    def score_batch(inputs: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]):
        input_ids, labels = padded(inputs), padded(targets, fill=-100)
        logits = model(input_ids=input_ids, attention_mask=input_ids != 0, labels=labels).logits
        chosen = logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
        return (chosen * (labels != -100)).sum(-1).cpu().numpy()

    def greedy_batch(inputs: Sequence[Sequence[int]]) -> np.ndarray:
        input_ids = padded(inputs)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=input_ids != 0,
            max_new_tokens=decode_len,
            min_new_tokens=decode_len,
            do_sample=False,
            num_beams=1,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=None,
        )
        return out[:, 1:].cpu().numpy()  # without the decoder start token

    def score() -> np.ndarray:
        inputs = _batches(predictor.tokenize(work.score_inputs), batch_size)
        targets = _batches(predictor.tokenize(work.score_targets, max_len=decode_len), batch_size)
        return np.concatenate([score_batch(i, t) for i, t in zip(inputs, targets)])

    def greedy() -> list[np.ndarray]:
        inputs = _batches(predictor.tokenize(work.greedy_inputs), batch_size)
        return [row for batch in inputs for row in greedy_batch(batch)]

    out: dict[str, Any] = {}
    with torch.inference_mode():
        first = slice(0, batch_size)  # warm-up: one batch of each kind
        score_batch(
            predictor.tokenize(work.score_inputs[first]),
            predictor.tokenize(work.score_targets[first], max_len=decode_len),
        )
        greedy_batch(predictor.tokenize(work.greedy_inputs[first]))
        for name, fn in (("scoring", score), ("greedy", greedy)):
            out[name], out[f"{name}_s"] = _timed(fn)
            print(f"torch {name}: timed pass {out[f'{name}_s']:.1f}s", flush=True)
    return out


def agreement(ours: dict[str, Any], theirs: dict[str, Any], decode_len: int) -> dict[str, Any]:
    """How closely the two sides' outputs match."""
    ours_scores, their_scores = ours["scoring"], theirs["scoring"]
    same_rows = [
        len(a) == len(b) and bool(np.array_equal(a, b))
        for a, b in zip(ours["greedy"], theirs["greedy"])
    ]
    return {
        "scores_allclose": bool(
            np.allclose(ours_scores, their_scores, rtol=SCORE_RTOL, atol=SCORE_ATOL)
        ),
        "scores_max_abs_diff": float(np.max(np.abs(ours_scores - their_scores))),
        "greedy_rows_equal": int(sum(same_rows)),
        "greedy_rows": len(same_rows),
        # Rows of ours shorter than decode_len stopped at EOS: unequal work.
        "flan_jax_rows_stopped_early": int(sum(len(row) < decode_len for row in ours["greedy"])),
    }


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 questions, 8 prompts, 8 tokens")
    parser.add_argument("--num_questions", type=int, default=None, help="MMLU (x4 pairs)")
    parser.add_argument("--num_prompts", type=int, default=None, help="BBH prompts to decode")
    parser.add_argument("--decode_len", type=int, default=None, help="greedy tokens per prompt")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--size", default="small", choices=sorted(t5_sizes.T5_1_1_DIMS))
    # On a CPU other processes also load, PyTorch's OpenMP threads wait on each other at every
    # small op (a greedy step is hundreds), and 1 thread can beat all: try both.
    parser.add_argument("--torch_threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    quick = dict(num_questions=16, num_prompts=8, decode_len=8, batch_size=8)
    full = dict(num_questions=32, num_prompts=24, decode_len=32, batch_size=16)
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def _print_table(rows: list[dict[str, Any]], agree: dict[str, Any], header: str) -> None:
    print(header)
    print(
        f"{'work':<8} {'examples':>8} {'flan_jax ex/s':>14} {'torch ex/s':>11} {'ratio':>7} "
        f"{'flan_jax cold ex/s':>19} {'cold ratio':>10}"
    )
    for row in rows:
        print(
            f"{row['work']:<8} {row['examples']:>8} {row['flan_jax_examples_per_s']:>14.2f} "
            f"{row['torch_examples_per_s']:>11.2f} {row['ratio']:>6.2f}x "
            f"{row['flan_jax_cold_examples_per_s']:>19.2f} {row['cold_ratio']:>9.2f}x"
        )
    print(
        f"agreement: scores allclose={agree['scores_allclose']} (max |diff| "
        f"{agree['scores_max_abs_diff']:.2e}); greedy rows equal {agree['greedy_rows_equal']}/"
        f"{agree['greedy_rows']}; flan_jax rows stopped early "
        f"{agree['flan_jax_rows_stopped_early']}"
    )


def main() -> None:
    args = _parse_args()
    try:
        import torch
    except ImportError:
        print("eval_bench: skipped, PyTorch is not installed (pip install -e '.[test]').")
        return
    torch.set_num_threads(args.torch_threads)
    work = load_workload(num_questions=args.num_questions, num_prompts=args.num_prompts)
    with tempfile.TemporaryDirectory() as tmp:
        texts = sorted(set(work.score_inputs) | set(work.greedy_inputs))
        spm_path = vocabularies.build_sentencepiece_model(
            texts, os.path.join(tmp, "eval_bench"), VOCAB_SIZE, hard_vocab_limit=False
        )
        vocabulary = vocabularies.get_vocabulary(spm_path)
        config = T5Config(**t5_sizes.T5_1_1_DIMS[args.size], dtype="float32")
        params = never_eos(t5.init_params(config, jax.random.key(0)))
        decode = DecodeConfig(
            method="greedy",
            max_decode_len=args.decode_len,
            batch_size=args.batch_size,
            max_input_len=MAX_INPUT_LEN,
        )
        predictor = Predictor(t5.T5Model(config), params, vocabulary, decode)
        ours = flan_jax_side(predictor, work)
        model = torch_t5_from_params(config, params).eval()
        theirs = torch_side(model, predictor, work, args.batch_size)
    agree = agreement(ours, theirs, args.decode_len)
    counts = {"scoring": len(work.score_inputs), "greedy": len(work.greedy_inputs)}
    rows = [
        {
            "work": name,
            "examples": counts[name],
            "flan_jax_s": ours[f"{name}_s"],
            "flan_jax_cold_s": ours[f"{name}_cold_s"],
            "torch_s": theirs[f"{name}_s"],
            "flan_jax_examples_per_s": counts[name] / ours[f"{name}_s"],
            "torch_examples_per_s": counts[name] / theirs[f"{name}_s"],
            "ratio": theirs[f"{name}_s"] / ours[f"{name}_s"],
            # The first pass, compilation of every length bucket included.
            "flan_jax_cold_examples_per_s": counts[name] / ours[f"{name}_cold_s"],
            "cold_ratio": theirs[f"{name}_s"] / ours[f"{name}_cold_s"],
        }
        for name in ("scoring", "greedy")
    ]
    lengths = [len(row) for row in predictor.tokenize(texts)]
    header = (
        f"T5 1.1 {args.size} (random weights, float32), batch {args.batch_size}, inputs "
        f"{min(lengths)}-{max(lengths)} tokens (cut at {MAX_INPUT_LEN}), greedy "
        f"{args.decode_len} tokens; {os.cpu_count()} CPU(s) (load average "
        f"{os.getloadavg()[0]:.1f}), JAX {jax.devices()[0].device_kind}, "
        f"{args.torch_threads} PyTorch thread(s)"
    )
    _print_table(rows, agree, header)
    report = {
        "size": args.size,
        "dtype": "float32",
        "batch_size": args.batch_size,
        "max_input_len": MAX_INPUT_LEN,
        "decode_len": args.decode_len,
        "input_tokens": {"min": min(lengths), "max": max(lengths), "mean": float(np.mean(lengths))},
        "vocab_pieces": vocabulary.vocab_size,
        "cpus": os.cpu_count(),
        # Other processes share the CPU; the 1-minute load average at the end of the run.
        "load_average": os.getloadavg()[0],
        "machine": platform.processor(),
        "jax_device": jax.devices()[0].device_kind,
        "torch_device": str(next(model.parameters()).device),
        "torch_threads": args.torch_threads,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "rows": rows,
        "agreement": agree,
    }
    file_io.write_json_atomically(RESULTS, report)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
