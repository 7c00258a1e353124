"""Multi-round synthesis throughput: flan_jax's Predictor vs HF ``generate``, same prompts.

For each synthesizer (decoder_tiny's dimensions, and the Llama-style model of about 125M
parameters of ``decoder_bench.py``; random weights, float32, greedy), the real synthesis path
(:func:`flan_jax.ipt.synthesis.synthesize_texts`: multi-round prompts built from the texts,
one batched generation per round, parsing) runs twice over the same texts:

- flan_jax: generation through :class:`flan_jax.inference.Predictor` (``predict_tokens``,
  KV-cache greedy decoding under jit);
- HF: a predictor with the same interface whose ``predict_tokens`` calls transformers'
  ``generate(do_sample=False)`` on the model holding the same weights through the HF export
  (``decoder_bench.torch_model``, i.e. ``hf_state_dict_from_params``). It reads exactly the
  token rows flan_jax's model reads, ``[start] ++ prompt`` (the decoder prepends its start
  token), left-padded with an attention mask (the usual batched ``generate``), in batches of
  the Predictor's ``batch_size``.

Both sides are forced to ``max_decode_len`` new tokens per text (EOS disabled on both, so
neither stops early or bans a token), so they generate the same number of tokens. Random
weights never write a well-formed pair, so every text ends with no pairs and the rounds carry
no earlier records; the prompts are the texts themselves. That is fine for throughput.

A text is a paragraph of a few reading-style passages of the demo generators (the kind the
CPU experiment synthesizes), tokenised by the demo vocabulary; ids the random models emit
beyond it decode as unknown pieces. Each side runs once untimed (jit compilation, warm-up),
then the model's timed runs, the best kept. Reported per model: texts/s, generated tokens/s,
the ratio flan_jax / HF, whether both saw identical prompt rows, and whether the generated
tokens are identical. Prints a table and writes ``benchmarks/results/ipt_synthesis_bench.json``.

    python benchmarks/ipt_synthesis_bench.py [--quick] [--models tiny,llama_125m]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from decoder_bench import model_configs, parameter_count, torch_model

from flan_jax import inference
from flan_jax.data import file_io
from flan_jax.ipt import synthesis
from flan_jax.models import decoder
from flan_jax.models.config import DecoderConfig
from flan_jax.tasks.demo import collection as demo
from flan_jax.tasks.demo import generators

RESULTS = Path(__file__).parent / "results" / "ipt_synthesis_bench.json"
MODELS = ("tiny", "llama_125m")
NO_EOS = -1  # an id no model emits: generation always runs to max_decode_len
# (texts, rounds, new tokens per text, batch size, timed iterations) per model.
# The batch is DecodeConfig's default; the HF side generates in batches of the same size.
SETTINGS = {
    "tiny": {"texts": 128, "rounds": 2, "new_tokens": 128, "batch": 32, "iters": 3},
    "llama_125m": {"texts": 64, "rounds": 2, "new_tokens": 128, "batch": 32, "iters": 1},
}
QUICK = {"tiny": {"texts": 64, "rounds": 2, "new_tokens": 64, "batch": 32, "iters": 1}}
# One demo passage is two sentences (about 20 tokens); a text joins a few into a paragraph.
PASSAGES_PER_TEXT = 4


def demo_texts(count: int) -> list[str]:
    """``count`` paragraphs of ``PASSAGES_PER_TEXT`` reading-style demo passages each."""
    examples = generators.iterate_examples("reading", "train", count * PASSAGES_PER_TEXT, seed=13)
    passages = [str(fields["context"]) for _, fields in examples]
    return [
        " ".join(passages[i : i + PASSAGES_PER_TEXT])
        for i in range(0, len(passages), PASSAGES_PER_TEXT)
    ]


class RecordingPredictor:
    """Delegates to a token predictor and keeps every row it reads and completion it writes."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.vocabulary = inner.vocabulary
        self.config = inner.config
        self.rows: list[list[int]] = []
        self.completions: list[np.ndarray] = []

    def predict_tokens(self, token_rows: Sequence[Sequence[int]], *, rng=None) -> list:
        completions = self.inner.predict_tokens(token_rows, rng=rng)
        self.rows.extend([int(t) for t in row] for row in token_rows)
        self.completions.extend(np.asarray(c) for c in completions)
        return completions

    def detokenize(self, tokens) -> str:
        return self.inner.detokenize(tokens)


class HFGeneratePredictor:
    """``predict_tokens`` through transformers' greedy ``generate`` (the synthesis protocol).

    Each row is read as ``[start] ++ row`` like flan_jax's decoder, left-padded with 0 and
    masked; exactly ``config.max_decode_len`` tokens are generated (no EOS), and a completion
    is cut as :func:`flan_jax.inference.completion_tokens` cuts flan_jax's.
    """

    def __init__(self, model: Any, *, start_token_id: int, vocabulary, config) -> None:
        self.model = model
        self.start_token_id = start_token_id
        self.vocabulary = vocabulary
        self.config = config
        model.generation_config.eos_token_id = None  # never stop, never ban a token

    def detokenize(self, tokens) -> str:
        return self.vocabulary.decode([int(t) for t in tokens])

    def predict_tokens(self, token_rows: Sequence[Sequence[int]], *, rng=None) -> list:
        import torch

        completions: list[np.ndarray] = []
        size, new = self.config.batch_size, self.config.max_decode_len
        for start in range(0, len(token_rows), size):
            rows = [[self.start_token_id, *r] for r in token_rows[start : start + size]]
            length = max(len(r) for r in rows)
            ids = np.zeros((len(rows), length), np.int64)
            mask = np.zeros((len(rows), length), np.int64)
            for i, row in enumerate(rows):
                ids[i, length - len(row) :] = row
                mask[i, length - len(row) :] = 1
            with torch.no_grad():
                out = self.model.generate(
                    torch.from_numpy(ids),
                    attention_mask=torch.from_numpy(mask),
                    do_sample=False,
                    max_new_tokens=new,
                    pad_token_id=0,
                )
            generated = out[:, length:].numpy()
            if generated.shape[1] != new:
                raise RuntimeError(f"HF generated {generated.shape[1]} tokens, not {new}")
            completions.extend(inference.completion_tokens(r, eos_id=NO_EOS) for r in generated)
        return completions


def time_synthesis(
    predictor: Any, texts: list[str], *, bos_id: int, rounds: int, iters: int
) -> tuple[float, RecordingPredictor, dict]:
    """Best wall time of ``iters`` synthesis runs after an untimed one, the recording of the
    last run and its counts."""
    config = synthesis.SynthesisConfig(rounds=rounds, pairs_per_text=5, shard_size=len(texts))

    def run() -> tuple[RecordingPredictor, dict]:
        recorder = RecordingPredictor(predictor)
        _, counts = synthesis.synthesize_texts(
            texts, predictor=recorder, bos_id=bos_id, config=config, rng=jax.random.key(0)
        )
        return recorder, counts

    run()  # compilation and warm-up
    best = float("inf")
    for _ in range(iters):
        start = time.perf_counter()
        recorder, counts = run()
        best = min(best, time.perf_counter() - start)
    return best, recorder, counts


def throughput(seconds: float, texts: int, new_tokens: int) -> dict:
    return {
        "seconds": seconds,
        "texts_per_s": texts / seconds,
        "generated_tokens_per_s": texts * new_tokens / seconds,
    }


def bench_model(name: str, config: DecoderConfig, vocabulary, settings: dict) -> dict:
    print(f"{name}: {parameter_count(config) / 1e6:.1f}M parameters ...", flush=True)
    texts = demo_texts(settings["texts"])
    params = jax.tree.map(np.asarray, decoder.init_params(config, jax.random.key(0)))
    decode = inference.DecodeConfig(
        method="greedy", max_decode_len=settings["new_tokens"], batch_size=settings["batch"]
    )
    ours = inference.Predictor(decoder.DecoderModel(config), params, vocabulary, decode)
    ours.eos_id = NO_EOS  # forced length: the random model's EOS would stop rows early
    theirs = HFGeneratePredictor(
        torch_model(config, params).eval(),
        start_token_id=config.start_token_id,
        vocabulary=vocabulary,
        config=decode,
    )

    def timed(predictor: Any) -> tuple[float, RecordingPredictor, dict]:
        return time_synthesis(
            predictor,
            texts,
            bos_id=config.start_token_id,
            rounds=settings["rounds"],
            iters=settings["iters"],
        )

    ours_s, ours_rec, counts = timed(ours)
    print(f"  flan_jax {ours_s:.2f}s", flush=True)
    theirs_s, theirs_rec, _ = timed(theirs)
    print(f"  HF generate {theirs_s:.2f}s", flush=True)
    same = [np.array_equal(a, b) for a, b in zip(ours_rec.completions, theirs_rec.completions)]
    prompt_lengths = [len(r) + 1 for r in ours_rec.rows]  # + the start token
    return {
        "model": name,
        "parameters": parameter_count(config),
        "settings": settings,
        "prompt_tokens": {"min": min(prompt_lengths), "max": max(prompt_lengths)},
        "flan_jax": throughput(ours_s, len(texts), settings["new_tokens"]),
        "hf_generate": throughput(theirs_s, len(texts), settings["new_tokens"]),
        "ratio": theirs_s / ours_s,
        "same_prompt_rows": ours_rec.rows == theirs_rec.rows,
        "same_tokens": all(same) and len(same) == len(texts),
        "same_token_texts_fraction": float(np.mean(same)),
        "synthesis_counts": counts,
    }


def print_table(runs: list[dict]) -> None:
    header = (
        f"{'model':<11} | {'params':>7} | {'texts':>5} | {'new':>4} | {'texts/s':>8} | "
        f"{'tok/s':>8} | {'HF texts/s':>10} | {'HF tok/s':>8} | {'ratio':>6} | same tokens"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for run in runs:
        ours, theirs = run["flan_jax"], run["hf_generate"]
        print(
            f"{run['model']:<11} | {run['parameters'] / 1e6:>6.1f}M | "
            f"{run['settings']['texts']:>5} | {run['settings']['new_tokens']:>4} | "
            f"{ours['texts_per_s']:>8.2f} | {ours['generated_tokens_per_s']:>8,.0f} | "
            f"{theirs['texts_per_s']:>10.2f} | {theirs['generated_tokens_per_s']:>8,.0f} | "
            f"{run['ratio']:>5.2f}x | {run['same_tokens']} "
            f"({run['same_token_texts_fraction']:.0%} of texts)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model, fewer texts")
    parser.add_argument("--models", default=None, help=f"comma-separated subset of {MODELS}")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    table = QUICK if args.quick else SETTINGS
    names = args.models.split(",") if args.models else list(table)
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {MODELS}")
    configs = model_configs()
    vocabulary = demo.get_demo_vocabulary()
    runs = [
        bench_model(name, configs[name], vocabulary, table.get(name, SETTINGS[name]))
        for name in names
    ]
    print_table(runs)
    report = {
        "quick": args.quick,
        "texts": f"{PASSAGES_PER_TEXT} demo reading passages each (iterate_examples seed 13)",
        "decoding": "greedy, float32, EOS disabled on both sides (fixed new tokens)",
        "cpus": os.cpu_count(),
        "machine": platform.processor(),
        "jax_device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "runs": runs,
    }
    file_io.write_json_atomically(RESULTS, report)
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
