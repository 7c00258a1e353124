"""`flan-jax infer`: decode a prediction for every line of a JSONL file.

    flan-jax infer --checkpoint CKPT_DIR --input_file in.jsonl --output_file out.jsonl \\
        [--decode greedy|sample|beam] [--num_beams 4] [--temperature 1.0] [--max_decode_len 128]
    flan-jax infer --gin_file=runs/infer.gin --gin.CHECKPOINT_PATH=CKPT_DIR \\
        --gin.INPUT_FILE=in.jsonl --gin.OUTPUT_FILE=out.jsonl

The gin macros of `runs/infer.gin` stand for the flags (`GIN_MACRO_FLAGS`); flags given
next to gin files override them.

Each input line is a JSON object with an "inputs" string; the output repeats it with a
"prediction" string added. Tokenising, batching and decoding are `flan_jax.inference`'s
`Predictor`; the input reading and checkpoint flags here are shared with `flan-jax score`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flan_jax.cli import flag_types
from flan_jax.data import file_io
from flan_jax.errors import UserError

if TYPE_CHECKING:  # imported when running: jax loads slowly and --help should not wait
    from flan_jax.inference import DecodeConfig


class InputError(UserError, ValueError):
    """A bad input file or a bad line in it; the message names the file and line."""


def read_jsonl(path: str | os.PathLike, required: Sequence[str]) -> list[dict[str, Any]]:
    """Reads a JSONL file of objects that each have the `required` string fields.

    Raises:
      InputError: naming the file and line of the first bad line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    records = []
    for number, record in file_io.read_jsonl_objects(path, error_type=InputError):
        for field in required:
            if not isinstance(record.get(field), str):
                raise InputError(
                    f"{path}:{number}: field {field!r} must be a string, got {record.get(field)!r}."
                )
        records.append(record)
    return records


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by `infer` and `score`."""
    parser.add_argument("--checkpoint", required=True, help="flan_jax checkpoint directory")
    parser.add_argument(
        "--step",
        type=flag_types.non_negative_int,
        default=None,
        help="checkpoint step (default latest)",
    )
    parser.add_argument("--input_file", required=True)
    parser.add_argument("--output_file", required=True)
    parser.add_argument("--batch_size", type=flag_types.positive_int, default=8)
    parser.add_argument(
        "--max_input_len",
        type=flag_types.positive_int,
        default=512,
        help="inputs are truncated to this many tokens (EOS included)",
    )
    add_dtype_argument(parser)


def add_dtype_argument(parser: argparse.ArgumentParser) -> None:
    """`--dtype auto|float32|bfloat16`, shared by `infer`, `score` and `eval`."""
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16"),  # inference.DTYPE_CHOICES (no JAX import here)
        default="auto",
        help="activation dtype; auto (default): float32 on CPU, the checkpoint's dtype on "
        "accelerators",
    )


def load_for_inference(checkpoint: str, *, step: int | None, dtype: str) -> Any:
    """Loads a checkpoint with its activation dtype chosen by `--dtype` (auto: see
    `inference.choose_activation_dtype`); the returned config's dtype is the one used."""
    from flan_jax.checkpoints import load_model_checkpoint
    from flan_jax.inference import choose_activation_dtype

    loaded = load_model_checkpoint(checkpoint, step=step)
    chosen = choose_activation_dtype(dtype, checkpoint_dtype=loaded.config.dtype)
    if chosen != loaded.config.dtype:
        loaded = dataclasses.replace(loaded, config=loaded.config.replace(dtype=chosen))
    return loaded


# gin macro (t5x style, see gin_configs/runs/infer.gin) -> the flag it stands for.
GIN_MACRO_FLAGS = {
    "CHECKPOINT_PATH": "--checkpoint",
    "INPUT_FILE": "--input_file",
    "OUTPUT_FILE": "--output_file",
    "DECODE": "--decode",
    "MAX_DECODE_LEN": "--max_decode_len",
    "NUM_BEAMS": "--num_beams",
    "TEMPERATURE": "--temperature",
    "BATCH_SIZE": "--batch_size",
}


def flags_from_gin(argv: list[str]) -> list[str]:
    """Turns `--gin_file` / `--gin.MACRO=VALUE` arguments into the equivalent flags.

    Flags given explicitly come after those from gin, so argparse lets them win.
    """
    import gin

    from flan_jax.cli import gin_flags

    args = gin_flags.split_gin_args(argv)
    if not args.files and not args.bindings:
        return argv
    gin_flags.parse_and_check_gin(args.files, args.bindings, used_macros=GIN_MACRO_FLAGS)
    flags = []
    for macro, flag in GIN_MACRO_FLAGS.items():
        try:
            value = gin.query_parameter(f"%{macro}")
        except ValueError:  # The macro is not bound by these gin files.
            continue
        if value is not None:
            flags += [flag, str(value)]
    return flags + args.rest


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flan-jax infer", description=__doc__.split("\n")[0])
    add_checkpoint_arguments(parser)
    add_decode_arguments(parser, max_decode_len=128)
    return parser


def add_decode_arguments(parser: argparse.ArgumentParser, *, max_decode_len: int) -> None:
    """The decoding flags `decode_config_from_args` reads (shared with `synthesize`)."""
    parser.add_argument("--decode", choices=("greedy", "sample", "beam"), default="greedy")
    parser.add_argument("--num_beams", type=flag_types.positive_int, default=4)
    parser.add_argument(
        "--alpha", type=flag_types.non_negative_float, default=0.6, help="beam length penalty"
    )
    parser.add_argument("--temperature", type=flag_types.non_negative_float, default=1.0)
    parser.add_argument("--top_k", type=flag_types.non_negative_int, default=0)
    parser.add_argument("--top_p", type=flag_types.probability, default=1.0)
    parser.add_argument("--seed", type=flag_types.non_negative_int, default=0)
    parser.add_argument("--max_decode_len", type=flag_types.positive_int, default=max_decode_len)


def decode_config_from_args(args: argparse.Namespace) -> DecodeConfig:
    """The decoding options the flags describe."""
    from flan_jax.inference import DecodeConfig

    return DecodeConfig(
        method=args.decode,
        max_decode_len=args.max_decode_len,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_beams=args.num_beams,
        alpha=args.alpha,
        seed=args.seed,
        batch_size=args.batch_size,
        max_input_len=args.max_input_len,
    )


def run(args: argparse.Namespace) -> int:
    """Reads, decodes and writes; returns the number of predictions."""
    from flan_jax.inference import Predictor

    records = read_jsonl(args.input_file, required=("inputs",))
    decode = decode_config_from_args(args)
    file_io.check_writable(args.output_file)
    loaded = load_for_inference(args.checkpoint, step=args.step, dtype=args.dtype)
    predictor = Predictor(loaded.model, loaded.params, loaded.vocabulary, decode)
    predictions = predictor.predict([r["inputs"] for r in records])
    file_io.write_jsonl(
        args.output_file, ({**r, "prediction": p} for r, p in zip(records, predictions))
    )
    print(
        f"wrote {len(predictions)} predictions to {args.output_file} (dtype {loaded.config.dtype})"
    )
    return len(predictions)


def main(argv: list[str]) -> int:
    """Entry point of `flan-jax infer`."""
    run(_build_parser().parse_args(flags_from_gin(argv)))
    return 0
