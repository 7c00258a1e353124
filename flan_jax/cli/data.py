"""`flan-jax data`: export a rendered mixture, or cache tasks offline with Apache Beam.

    flan-jax data export --mixture NAME --out DIR --format jsonl|arrayrecord
        [--max_examples N] [--split train] [--seed S] [--examples_per_shard K]
        [--vocabulary SPM_MODEL]
    flan-jax data cache --tasks NAME[,NAME...] --output_dir DIR [--array_record]
        [--split train [--split validation]] [--num_shards N] [--overwrite]
        [--vocabulary SPM_MODEL] [-- BEAM_PIPELINE_OPTIONS...]

`export` streams a mixture's sampled examples on this machine; rerunning the same command
after an interruption resumes from the last completed shard, and the finished directory is
identical to an uninterrupted export (see `flan_jax.data.export`).

`cache` writes seqio's offline cache of every task of the names (a mixture stands for its
tasks), read by training with USE_CACHED_TASKS=True, and with --array_record also ArrayRecord
shards with an index for the Grain pipeline (see `flan_jax.data.beam_cache`). The options
after `--` go to Beam: the DirectRunner by default, e.g. `-- --runner=DataflowRunner
--project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py` for Dataflow.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import tqdm

from flan_jax import errors
from flan_jax.cli import flag_types
from flan_jax.cli import tasks as tasks_cli
from flan_jax.data import beam_cache, export

# Separates the command's flags from the Beam pipeline options of `cache`.
PIPELINE_OPTIONS_SEPARATOR = "--"


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
    _add_cache_parser(commands)
    return parser.parse_args(argv)


def _add_cache_parser(commands: argparse._SubParsersAction) -> None:
    cache = commands.add_parser(
        "cache",
        help="cache tasks offline with Apache Beam (seqio's format, optionally ArrayRecord); "
        "Beam pipeline options follow `--`",
        epilog="Beam pipeline options follow `--`, e.g. `-- --runner=DataflowRunner "
        "--project=P --region=R --temp_location=gs://B/tmp` (default: the DirectRunner).",
    )
    tasks_cli.add_catalog_arguments(cache)
    cache.add_argument(
        "--tasks",
        required=True,
        type=lambda text: [name for name in text.split(",") if name],
        help="comma-separated registered tasks or mixtures (a mixture caches its tasks)",
    )
    cache.add_argument("--output_dir", required=True, help="the cache directory")
    cache.add_argument(
        "--split",
        action="append",
        dest="splits",
        default=None,
        help="a split to cache; repeat for several (default: train)",
    )
    cache.add_argument(
        "--array_record",
        action="store_true",
        help="also write ArrayRecord shards and their index (the Grain pipeline reads them)",
    )
    cache.add_argument(
        "--num_shards",
        type=flag_types.positive_int,
        default=None,
        help="output shards per task split (default: "
        f"{beam_cache.DEFAULT_NUM_SHARDS}, or the source's shard count when larger)",
    )
    cache.add_argument(
        "--overwrite", action="store_true", help="rebuild task caches that already exist"
    )


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


def run_cache(args: argparse.Namespace, pipeline_args: Sequence[str]) -> str:
    """Caches the tasks with Beam; returns the summary line."""
    cached = beam_cache.cache_tasks(
        args.tasks,
        output_dir=args.output_dir,
        splits=tuple(args.splits or ("train",)),
        array_record=args.array_record,
        num_shards=args.num_shards,
        pipeline_args=pipeline_args,
        setup_fn=beam_cache.CatalogRegistration.from_environment(
            vocabulary_path=args.vocabulary, extra_ids=args.extra_ids
        ),
        overwrite=args.overwrite,
    )
    examples = sum(sum(task.num_examples.values()) for task in cached.values())
    formats = "seqio TFRecord and ArrayRecord" if args.array_record else "seqio TFRecord"
    return (
        f"cached {examples:,} examples of {len(cached)} task(s) to {args.output_dir} "
        f"({formats}); training reads them with USE_CACHED_TASKS=True and this directory "
        "among seqio's cache dirs"
    )


def main(argv: Sequence[str]) -> int:
    argv = list(argv)
    pipeline_args: list[str] = []
    if PIPELINE_OPTIONS_SEPARATOR in argv:
        at = argv.index(PIPELINE_OPTIONS_SEPARATOR)
        argv, pipeline_args = argv[:at], argv[at + 1 :]
    args = _parse_args(argv)
    if pipeline_args and args.command != "cache":
        raise errors.ConfigError(
            f"`flan-jax data {args.command}` takes no Beam pipeline options; got "
            f"{pipeline_args} after `--` (only `flan-jax data cache` does)."
        )
    tasks_cli.register_catalog_from_flags(args)
    if args.command == "cache":
        print(run_cache(args, pipeline_args))
        return 0
    manifest = run_export(args)
    print(
        f"exported {manifest['num_examples']:,} examples of {manifest['name']} in "
        f"{len(manifest['shards'])} shards to {args.out} "
        f"({export.MANIFEST_NAME} lists them with the sampler state)"
    )
    return 0
