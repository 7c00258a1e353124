"""`flan-jax eval`: score checkpoints on evaluation suites; JSON, Markdown and PNG reports.

    flan-jax eval --checkpoint CKPT [--checkpoint CKPT2 ...] --suite flan_t5 --out DIR \\
        [--suite math:gsm8k,svamp] [--suite tasks:NAME,...] [--data_root DIR] \\
        [--data_dir SOURCE=DIR] [--steps all|latest|N,M] [--max_examples N] \\
        [--batch_size 8] [--max_input_len 512] [--max_decode_len 256] \\
        [--dtype auto|float32|bfloat16]

Suites (`flan_jax.evaluation.suites`): `flan_t5[:SETTING[/SUBSET],...]` (MMLU, BBH, TyDiQA,
MGSM and the normalized average), `math[:gsm8k,svamp,multiarith,asdiv]` (8-shot CoT),
`tasks:NAME,...` (registered seqio tasks or mixtures with their own metrics),
`heldout_clusters[:CLUSTER,...]` (FLAN 2021 leave-one-cluster-out; `demo/CLUSTER` on the demo
collection) and `optiml[:demo][,LEVEL,...]` (OPT-IML's three generalization levels).
The data root holds one folder per source (`mmlu/`, `bbh/`, `tydiqa_goldp/`, `mgsm/`,
`cot_exemplars/`, `gsm8k/`, `svamp/`, `multiarith/`, `asdiv/`); `--data_dir SOURCE=DIR`
points one source elsewhere. A missing file is reported by name, with where to get it,
before any checkpoint is loaded.

Every step of each checkpoint directory is evaluated (`--steps` picks), greedily, with
`flan_jax.inference.Predictor`. `--dtype auto` runs float32 on CPU and the checkpoint's
dtype on accelerators; the report records the dtype used. DIR receives `results.json`,
`results.md`, PNG plots (scores per benchmark and checkpoint; curves over steps; scaling
over parameter counts when the checkpoints differ in size) and `units/`, the finished
units: a rerun with the same settings skips them, so an interrupted evaluation resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

from flan_jax.cli import flag_types
from flan_jax.cli.infer import add_dtype_argument
from flan_jax.errors import ConfigError

UNITS_DIR = "units"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flan-jax eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--checkpoint", action="append", required=True, help="checkpoint directory (repeatable)")
    add("--suite", action="append", required=True, help="suite spec (repeatable), see above")
    add("--out", required=True, help="report directory (created; reused to resume)")
    add("--data_root", default=None, help="data root (default: $FLAN_JAX_DATA_DIR)")
    add("--data_dir", action="append", default=[], metavar="SOURCE=DIR", help="one source's folder")
    add("--steps", default="all", help="all (default), latest, or comma-separated steps")
    add("--max_examples", type=flag_types.positive_int, default=None, help="per subset/task")
    add("--batch_size", type=flag_types.positive_int, default=8)
    add("--max_input_len", type=flag_types.positive_int, default=512)
    add("--max_decode_len", type=flag_types.positive_int, default=256)
    add("--split", default="validation", help="split of tasks: suites")
    add_dtype_argument(parser)
    return parser


def _parse_data_dirs(specs: Sequence[str]) -> dict[str, str]:
    dirs = {}
    for spec in specs:
        source, sep, directory = spec.partition("=")
        if not sep or not source or not directory:
            raise ConfigError(
                f"--data_dir expects SOURCE=DIR (e.g. mmlu=/data/mmlu); got {spec!r}."
            )
        dirs[source] = directory
    return dirs


def _select_steps(checkpoint: str, available: list[int], wanted: str) -> list[int]:
    from flan_jax.checkpoints import MissingCheckpointError

    if not available:
        raise MissingCheckpointError(f"{checkpoint} holds no checkpoint step directories.")
    if wanted == "all":
        return available
    if wanted == "latest":
        return available[-1:]
    try:
        steps = [int(s) for s in wanted.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--steps must be all, latest or N,M,...; got {wanted!r}.") from None
    missing = [s for s in steps if s not in available]
    if missing:
        raise MissingCheckpointError(
            f"{checkpoint} has no step(s) {missing}; available: {', '.join(map(str, available))}."
        )
    return steps


@dataclasses.dataclass(frozen=True)
class _Target:
    """One checkpoint directory to evaluate, checked before any model is built."""

    path: str
    label: str
    steps: list[int]
    dtype: str  # the activation dtype the evaluation runs in


def _resolve_targets(args: argparse.Namespace) -> list[_Target]:
    from flan_jax import checkpoints
    from flan_jax.inference import choose_activation_dtype

    targets: list[_Target] = []
    labels: set[str] = set()
    for path in args.checkpoint:
        path = os.path.abspath(path)
        metadata = checkpoints.read_model_metadata(path)
        steps = _select_steps(path, checkpoints.list_steps(path), args.steps)
        label = base = os.path.basename(path.rstrip(os.sep)) or "checkpoint"
        for n in range(2, len(args.checkpoint) + 2):
            if label not in labels:
                break
            label = f"{base}-{n}"
        labels.add(label)
        dtype = choose_activation_dtype(args.dtype, checkpoint_dtype=metadata.config.dtype)
        targets.append(_Target(path, label, steps, dtype))
    return targets


def _build_suites(args: argparse.Namespace) -> list[Any]:
    """The suites, their data checked (a missing file is named before any checkpoint is
    read, except that a `tasks:` suite first registers the catalog with the first
    checkpoint's vocabulary)."""
    from flan_jax.evaluation import suites
    from flan_jax.tasks import data_paths

    paths = data_paths.get_data_paths(
        root=args.data_root, source_dirs=_parse_data_dirs(args.data_dir)
    )
    names = [suites.parse_suite_spec(spec)[0] for spec in args.suite]  # unknown names first
    task_options = {
        "split": args.split,
        "task_feature_lengths": {"inputs": args.max_input_len, "targets": args.max_decode_len},
    }
    built = []
    for spec, name in zip(args.suite, names):
        if name in suites.TASK_SUITES:
            _register_tasks(args.checkpoint[0])
        suite = suites.make_suite(
            spec, paths=paths, max_examples=args.max_examples, task_options=task_options
        )
        suite.check_data()
        built.append(suite)
    return built


def _register_tasks(checkpoint: str) -> None:
    """Registers the task catalog; the Flan tasks' features use the checkpoint's vocabulary."""
    from flan_jax import checkpoints
    from flan_jax.tasks import registry

    metadata = checkpoints.read_model_metadata(checkpoint)
    registry.register_catalog(
        vocabulary_path=str(metadata.vocab_path), extra_ids=metadata.extra_ids
    )


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _unit_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What a stored unit result depends on besides the checkpoint, step, unit and dtype."""
    return {
        "max_examples": args.max_examples,
        "max_input_len": args.max_input_len,
        "max_decode_len": args.max_decode_len,
        "split": args.split,
        "decode": "greedy",
    }


def _count_params(checkpoint: str) -> int:
    """The parameter count, from the stored config's parameter shapes (no weights read)."""
    import math

    import jax

    from flan_jax import checkpoints
    from flan_jax.models import registry

    config = checkpoints.read_model_metadata(checkpoint).config
    shapes = registry.build_model(config).abstract_params()
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(shapes))


def _evaluate_step(args: argparse.Namespace, target: _Target, step: int, suites: list) -> Any:
    """The suites' results of one checkpoint step; the weights are loaded only when a unit
    is not stored yet."""
    from flan_jax.cli.infer import load_for_inference
    from flan_jax.evaluation import report, runner
    from flan_jax.inference import DecodeConfig, Predictor

    settings = {**_unit_settings(args), "dtype": target.dtype}
    stores = {
        suite.spec: runner.UnitStore(
            os.path.join(
                args.out, UNITS_DIR, target.label, f"step_{step}", runner.safe_file_name(suite.spec)
            ),
            settings,
        )
        for suite in suites
    }
    predictors: list[Predictor] = []

    def predict(prompts: list[str]) -> list[str]:
        if not predictors:  # the first unit that is not stored
            loaded = load_for_inference(target.path, step=step, dtype=target.dtype)
            decode = DecodeConfig(
                max_decode_len=args.max_decode_len,
                batch_size=args.batch_size,
                max_input_len=args.max_input_len,
            )
            predictors.append(Predictor(loaded.model, loaded.params, loaded.vocabulary, decode))
        return [str(text) for text in predictors[0].predict(prompts)]

    _log(f"{target.label} step {step} (dtype {target.dtype})")
    results = {
        suite.spec: runner.run_suite(suite, predict, store=stores[suite.spec], log=_log)
        for suite in suites
    }
    return report.CheckpointResult(
        target.path, target.label, step, _count_params(target.path), target.dtype, results
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Checks everything, evaluates every step of every checkpoint, writes the reports."""
    from flan_jax.data import file_io
    from flan_jax.evaluation import report

    suites = _build_suites(args)
    targets = _resolve_targets(args)
    file_io.check_writable(os.path.join(args.out, report.RESULTS_JSON))
    results = [
        _evaluate_step(args, target, step, suites) for target in targets for step in target.steps
    ]
    settings = {**_unit_settings(args), "suites": list(args.suite), "batch_size": args.batch_size}
    data = report.write_report(args.out, results, settings, log=_log)
    print(report.to_markdown(results))
    print(f"wrote {os.path.join(args.out, report.RESULTS_JSON)} and {report.RESULTS_MARKDOWN}")
    return data


def main(argv: list[str]) -> int:
    """Entry point of `flan-jax eval`."""
    run(_build_parser().parse_args(argv))
    return 0
