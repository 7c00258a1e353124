"""`flan-jax convert`: Hugging Face directories to and from flan_jax checkpoints.

    flan-jax convert --from-hf HF_DIR --out CKPT_DIR [--dtype bfloat16] [--scan_layers]
    flan-jax convert --to-hf CKPT_DIR --out HF_DIR [--step N] [--max_shard_gb 5]
    flan-jax convert --merge-lora RUN_DIR --out CKPT_DIR [--step N]

The Hugging Face directory holds config.json, the weights (safetensors, sharded or not, or
pytorch_model.bin) and the tokenizer. Its `model_type` picks the model: "t5" (T5, Flan-T5;
spiece.model) or "opt", "llama", "mistral" (decoder-only; tokenizer.json, else a
SentencePiece tokenizer.model). The tokenizer is copied into the checkpoint. The exported
directory loads with transformers' `from_pretrained` (T5ForConditionalGeneration,
OPTForCausalLM, LlamaForCausalLM or MistralForCausalLM).

`--merge-lora` folds a LoRA run's adapters into the base weights and writes a normal
checkpoint of the base model (for `infer`, `score`, `eval` and `--to-hf`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from flan_jax.cli import flag_types
from flan_jax.errors import PathError, UserError


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flan-jax convert", description=__doc__.split("\n")[0])
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--from-hf", dest="from_hf", metavar="HF_DIR", help="import a Hugging Face directory"
    )
    direction.add_argument(
        "--to-hf", dest="to_hf", metavar="CKPT_DIR", help="export a flan_jax checkpoint directory"
    )
    direction.add_argument(
        "--merge-lora",
        dest="merge_lora",
        metavar="RUN_DIR",
        help="merge a LoRA run's adapters into its base weights",
    )
    parser.add_argument("--out", required=True, help="output directory (must be new or empty)")
    parser.add_argument(
        "--vocab",
        default=None,
        help="vocabulary file when HF_DIR has none (T5: a SentencePiece model; decoders: "
        "tokenizer.json or a SentencePiece model)",
    )
    parser.add_argument(
        "--extra_ids",
        type=flag_types.non_negative_int,
        default=None,
        help="sentinel ids on top of a SentencePiece vocabulary (default: 100 for T5, 0 for "
        "decoder-only models)",
    )
    parser.add_argument(
        "--dtype",
        choices=("bfloat16", "float32"),
        default="bfloat16",
        help="activation dtype recorded in the imported config (training and accelerator "
        "inference use it; infer/score/eval --dtype auto run float32 on CPU)",
    )
    parser.add_argument(
        "--scan_layers", action="store_true", help="store the imported layers stacked for nn.scan"
    )
    parser.add_argument(
        "--max_shard_gb",
        type=flag_types.positive_float,
        default=5.0,
        help="--to-hf: split the weights into safetensors shards of at most this size "
        "(with model.safetensors.index.json)",
    )
    parser.add_argument(
        "--step",
        type=flag_types.non_negative_int,
        default=None,
        help="--to-hf / --merge-lora: step to export (default latest)",
    )
    return parser


def _check_new_directory(path: Path) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise PathError(
            f"--out {path} already exists and is not empty; choose a new or empty directory."
        )


def import_from_hf(args: argparse.Namespace) -> Path:
    """`--from-hf`: reads the Hugging Face directory and writes a flan_jax checkpoint."""
    from flan_jax.checkpoints import save_model_checkpoint
    from flan_jax.models.config import T5Config
    from flan_jax.models.hf_convert import load_hf_directory

    out = Path(args.out)
    _check_new_directory(out)
    params, config, vocab_path = load_hf_directory(
        args.from_hf, dtype=args.dtype, scan_layers=args.scan_layers
    )
    vocab_path = Path(args.vocab) if args.vocab else vocab_path
    is_t5 = isinstance(config, T5Config)
    if vocab_path is None:
        expected = "spiece.model" if is_t5 else "tokenizer.json or tokenizer.model"
        raise UserError(f"{args.from_hf} has no {expected}; pass --vocab PATH.")
    extra_ids = args.extra_ids if args.extra_ids is not None else (100 if is_t5 else 0)
    return save_model_checkpoint(
        out, params=params, config=config, vocab_path=vocab_path, extra_ids=extra_ids
    )


def export_to_hf(args: argparse.Namespace) -> Path:
    """`--to-hf`: reads a flan_jax checkpoint and writes a Hugging Face directory."""
    from flan_jax.checkpoints import load_model_checkpoint, read_model_metadata
    from flan_jax.models.hf_convert import save_hf_directory

    loaded = load_model_checkpoint(args.to_hf, step=args.step)
    vocab_path = read_model_metadata(args.to_hf).vocab_path
    return save_hf_directory(
        args.out,
        params=loaded.params,
        config=loaded.config,
        vocab_path=vocab_path,
        max_shard_bytes=int(args.max_shard_gb * 2**30),
    )


def main(argv: list[str]) -> int:
    """Entry point of `flan-jax convert`."""
    args = _build_parser().parse_args(argv)
    if args.merge_lora:
        from flan_jax.models.lora import export_merged_checkpoint

        _check_new_directory(Path(args.out))
        out = export_merged_checkpoint(args.merge_lora, args.out, step=args.step)
    else:
        out = import_from_hf(args) if args.from_hf else export_to_hf(args)
    print(f"wrote {out}")
    return 0
