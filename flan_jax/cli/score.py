"""`flan-jax score`: the log-likelihood of given targets, for every line of a JSONL file.

    flan-jax score --checkpoint CKPT_DIR --input_file in.jsonl --output_file out.jsonl

Each input line is a JSON object with "inputs" and "targets" strings; the output repeats it
with "log_likelihood" (summed over the target tokens, EOS included) and "num_target_tokens".
Ranking the options of a multiple-choice question by this score is rank classification.
"""
from __future__ import annotations

import argparse

import numpy as np

from flan_jax.cli.infer import (add_checkpoint_arguments, batches, load_for_inference,
                                pad_rows, read_jsonl, run_reporting_errors, tokenize)
from flan_jax.data import file_io


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flan-jax score", description=__doc__.split("\n")[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--max_target_len", type=int, default=512,
                        help="targets are truncated to this many tokens (EOS included)")
    return parser


def run(args: argparse.Namespace) -> int:
    """Reads, scores and writes; returns the number of scored lines."""
    from flan_jax.models.decoding import score_targets

    records = read_jsonl(args.input_file, required=("inputs", "targets"))
    loaded = load_for_inference(args)
    outputs = []
    for chunk in batches(records, args.batch_size):
        inputs = pad_rows([tokenize(loaded.vocabulary, r["inputs"], args.max_input_len)
                           for r in chunk])
        target_ids = [tokenize(loaded.vocabulary, r["targets"], args.max_target_len)
                      for r in chunk]
        scores = np.asarray(score_targets(loaded.config, loaded.params, inputs,
                                          pad_rows(target_ids)))
        outputs += [{**r, "log_likelihood": float(s), "num_target_tokens": len(t)}
                    for r, s, t in zip(chunk, scores, target_ids)]
    file_io.write_jsonl(args.output_file, outputs)
    return len(outputs)


def main(argv: list[str]) -> int:
    """Entry point of `flan-jax score`."""
    return run_reporting_errors("score", run, _build_parser().parse_args(argv), "scores")
