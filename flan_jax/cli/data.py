"""`flan-jax data export`: stream a rendered task or mixture to JSONL / ArrayRecord shards.

    flan-jax data export --mixture NAME --out DIR --format jsonl|arrayrecord
        [--max_examples N] [--split train] [--seed S] [--examples_per_shard K]
        [--vocabulary SPM_MODEL]

Rerunning the same command after an interruption resumes from the last completed shard;
the finished directory is identical to an uninterrupted export (see
`flan_jax.data.export` for the layout and the manifest).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import tqdm

from flan_jax.cli import flag_types
from flan_jax.cli import tasks as tasks_cli
from flan_jax.data import export


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="flan-jax data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("export", help="export a task or mixture (resumable)")
    tasks_cli.add_catalog_arguments(run)
    run.add_argument("--mixture", required=True, help="a registered mixture or task")
    run.add_argument("--out", required=True, help="the export directory")
    run.add_argument("--format", choices=export.FORMATS, default="jsonl")
    run.add_argument(
        "--max_examples",
        type=flag_types.positive_int,
        default=None,
        help="stop after N examples (default: every stream to its end)",
    )
    run.add_argument("--split", default="train")
    run.add_argument(
        "--seed", type=flag_types.non_negative_int, default=0, help="seed of the mixture sampler"
    )
    run.add_argument("--examples_per_shard", type=flag_types.positive_int, default=10_000)
    return parser.parse_args(argv)


def run_export(args: argparse.Namespace) -> dict:
    """Builds the export configuration, shows progress and returns the final manifest."""
    config = export.ExportConfig(
        name=args.mixture,
        out_dir=args.out,
        format=args.format,
        split=args.split,
        seed=args.seed,
        max_examples=args.max_examples,
        examples_per_shard=args.examples_per_shard,
    )
    previous = export.read_manifest(config.out_dir) if os.path.isdir(config.out_dir) else None
    done_before = previous["num_examples"] if previous else 0
    with tqdm.tqdm(
        total=config.max_examples,
        initial=done_before,
        unit="ex",
        desc=f"export {config.name}",
        file=sys.stderr,
    ) as progress:
        return export.export_mixture(config, on_shard=progress.update)


def main(argv: Sequence[str]) -> int:
    args = _parse_args(argv)
    tasks_cli.register_catalog_from_flags(args)
    manifest = run_export(args)
    print(
        f"exported {manifest['num_examples']:,} examples of {manifest['name']} in "
        f"{len(manifest['shards'])} shards to {args.out} "
        f"({export.MANIFEST_NAME} lists them with the sampler state)"
    )
    return 0
