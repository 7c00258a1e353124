"""`flan-jax score`: the log-likelihood of given targets, for every line of a JSONL file.

    flan-jax score --checkpoint CKPT_DIR --input_file in.jsonl --output_file out.jsonl

Each input line is a JSON object with "inputs" and "targets" strings; the output repeats it
with "log_likelihood" (summed over the target tokens, EOS included) and "num_target_tokens".
Ranking the options of a multiple-choice question by this score is rank classification.
"""

from __future__ import annotations

import argparse

from flan_jax.cli import flag_types
from flan_jax.cli.infer import add_checkpoint_arguments, load_for_inference, read_jsonl
from flan_jax.data import file_io


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flan-jax score", description=__doc__.split("\n")[0])
    add_checkpoint_arguments(parser)
    parser.add_argument(
        "--max_target_len",
        type=flag_types.positive_int,
        default=512,
        help="targets are truncated to this many tokens (EOS included)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    """Reads, scores and writes; returns the number of scored lines."""
    from flan_jax.inference import DecodeConfig, Predictor

    records = read_jsonl(args.input_file, required=("inputs", "targets"))
    decode = DecodeConfig(
        max_decode_len=args.max_target_len,
        max_input_len=args.max_input_len,
        batch_size=args.batch_size,
    )
    file_io.check_writable(args.output_file)
    loaded = load_for_inference(args.checkpoint, step=args.step, dtype=args.dtype)
    predictor = Predictor(loaded.model, loaded.params, loaded.vocabulary, decode)
    scores = predictor.score([r["inputs"] for r in records], [r["targets"] for r in records])
    file_io.write_jsonl(
        args.output_file,
        (
            {**r, "log_likelihood": float(s), "num_target_tokens": int(n)}
            for r, s, n in zip(records, scores.log_likelihoods, scores.num_tokens)
        ),
    )
    print(f"wrote {len(records)} scores to {args.output_file} (dtype {loaded.config.dtype})")
    return len(records)


def main(argv: list[str]) -> int:
    """Entry point of `flan-jax score`."""
    run(_build_parser().parse_args(argv))
    return 0
