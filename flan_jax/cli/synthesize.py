"""`flan-jax synthesize`: instruction-response pairs for raw texts, by multi-round synthesis.

    flan-jax synthesize --synthesizer CKPT --input texts.jsonl --out DIR --rounds N \\
        --pairs_per_text K [--shard_size 1000] [--batch_size 8] [--max_decode_len 512] \\
        [--context_budget 4096] [--decode greedy|sample|beam] [--temperature 1.0] ...

Each input line is `{"text": "..."}`; the output shards hold one
`{"text": ..., "pairs": [{"instruction": ..., "response": ...}, ...]}` per input text, in
input order, and `manifest.json` the settings and per-shard counts (texts, pairs, drops by
reason). Rerunning the same command after an interruption resumes from the last completed
shard; other settings in the same directory are refused. See `flan_jax.ipt.synthesis`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import tqdm

from flan_jax.cli import flag_types, infer
from flan_jax.errors import ConfigError


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flan-jax synthesize",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--synthesizer", required=True, help="decoder-only checkpoint directory")
    parser.add_argument(
        "--step", type=flag_types.non_negative_int, default=None, help="default latest"
    )
    parser.add_argument("--input", required=True, help='JSONL file, one {"text": ...} a line')
    parser.add_argument("--out", required=True, help="output directory (resumed if it exists)")
    parser.add_argument("--rounds", type=flag_types.positive_int, required=True)
    parser.add_argument("--pairs_per_text", type=flag_types.positive_int, required=True)
    parser.add_argument(
        "--shard_size",
        type=flag_types.positive_int,
        default=1000,
        help="texts per output shard, a multiple of --rounds",
    )
    parser.add_argument("--batch_size", type=flag_types.positive_int, default=8)
    parser.add_argument(
        "--context_budget",
        type=flag_types.positive_int,
        default=4096,
        help="most prompt tokens (earlier rounds' records and the new text, BOS included)",
    )
    infer.add_dtype_argument(parser)
    infer.add_decode_arguments(parser, max_decode_len=512)
    return parser


def _check_synthesizer(args: argparse.Namespace) -> None:
    """Refuses what cannot synthesize, before any weight is read."""
    from flan_jax.checkpoints import read_model_metadata
    from flan_jax.models.config import DecoderConfig

    config = read_model_metadata(args.synthesizer).config
    if not isinstance(config, DecoderConfig):
        raise ConfigError(
            f"--synthesizer {args.synthesizer} holds a {type(config).__name__} "
            "(encoder-decoder) model; synthesis reads records as one decoder-only sequence "
            "(flan_jax.ipt.format), so train or convert a decoder-only synthesizer."
        )
    if config.positions == "learned" and args.context_budget + args.max_decode_len > (
        config.max_length
    ):
        raise ConfigError(
            f"--context_budget {args.context_budget} + --max_decode_len {args.max_decode_len} "
            f"exceeds the synthesizer's {config.max_length} learned positions; lower them."
        )


def run(args: argparse.Namespace) -> dict:
    """Checks the inputs, loads the synthesizer and synthesizes; returns the manifest."""
    from flan_jax.data import file_io
    from flan_jax.inference import Predictor
    from flan_jax.ipt import synthesis

    config = synthesis.SynthesisConfig(
        rounds=args.rounds,
        pairs_per_text=args.pairs_per_text,
        context_budget=args.context_budget,
        shard_size=args.shard_size,
    )
    args.max_input_len = args.context_budget  # prompts are token rows, used as given
    decode = infer.decode_config_from_args(args)
    summary = synthesis.check_input(args.input)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ConfigError(f"--out {args.out} is a file; give a directory.")
    _check_synthesizer(args)
    file_io.check_writable(os.path.join(args.out, "manifest.json"))
    loaded = infer.load_for_inference(args.synthesizer, step=args.step, dtype=args.dtype)
    predictor = Predictor(loaded.model, loaded.params, loaded.vocabulary, decode)
    identity = {
        "checkpoint": os.path.abspath(args.synthesizer),
        "step": loaded.step,
        "dtype": loaded.config.dtype,
    }
    with tqdm.tqdm(total=summary.num_texts, unit="text", desc="synthesize", file=sys.stderr) as bar:
        return synthesis.synthesize_corpus(
            input_path=args.input,
            out_dir=args.out,
            predictor=predictor,
            bos_id=loaded.config.start_token_id,
            config=config,
            synthesizer=identity,
            on_shard=bar.update,
        )


def main(argv: Sequence[str]) -> int:
    """Entry point of `flan-jax synthesize`."""
    args = _build_parser().parse_args(argv)
    manifest = run(args)
    totals = manifest["totals"]
    dropped = ", ".join(f"{k} {v}" for k, v in totals["dropped"].items()) or "none"
    print(
        f"synthesized {totals['pairs']:,} pairs for {totals['texts']:,} texts in "
        f"{len(manifest['shards'])} shards to {args.out} (dropped: {dropped}; empty texts "
        f"{totals['empty_texts']}, texts cut to the budget {totals['cut_texts']})"
    )
    return 0
