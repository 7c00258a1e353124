"""`flan-jax tasks`: the catalog of registered tasks and mixtures.

    flan-jax tasks [--vocabulary SPM_MODEL] list [--mixture M] [--source S] [--mixtures]
                                                [--flan-names]
    flan-jax tasks show NAME
    flan-jax tasks preview NAME [-n 3] [--split train] [--seed 0] [--json]
    flan-jax tasks recount [--data_root DIR] [--table PATH]

`list` prints task names (with their rate and share inside `--mixture`), or the mixtures,
or google-research/FLAN's mixture and task names with ours (`--flan-names`);
`show` describes a task (source, splits, example counts, templates, rates in every
mixture holding it) or a mixture (tasks, share per source); `preview` renders the first
examples a task or mixture yields, with their metadata; `recount` rewrites the example-count
table the mixture rates come from (`tasks/counts.tsv`) by counting the local data under the
data root, keeping the rows whose data is absent. An unknown name is answered with the
closest registered names.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

# Only TensorFlow-free modules at the top: `flan-jax tasks --help` must not load TF (which
# logs CUDA stubs on CPU machines); the commands import seqio and the registry when run.
from flan_jax.cli import flag_types
from flan_jax.tasks import naming

if TYPE_CHECKING:
    import seqio


def add_catalog_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags `register_catalog_from_flags` reads, shared by the commands that read tasks."""
    parser.add_argument(
        "--vocabulary",
        default=None,
        help="SentencePiece model of the Flan 2022 tasks' output features (it also counts "
        "few-shot prompt tokens, so exports depend on it); without it they use the "
        "built-in demo vocabulary, with a warning",
    )
    parser.add_argument(
        "--extra_ids",
        type=flag_types.non_negative_int,
        default=100,
        help="sentinel ids on top of --vocabulary (T5: 100)",
    )


def register_catalog_from_flags(args: argparse.Namespace) -> None:
    """Registers the task catalog for a command with `add_catalog_arguments`' flags.

    Browsing and exporting without `--vocabulary` is asked for by leaving the flag out, so
    the Flan 2022 tasks then use the demo vocabulary (`registry.register_catalog` warns).
    """
    from flan_jax.tasks import registry

    registry.register_catalog(
        vocabulary_path=args.vocabulary,
        extra_ids=args.extra_ids,
        allow_demo_vocabulary=args.vocabulary is None,
    )


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="flan-jax tasks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_catalog_arguments(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="list tasks (or mixtures)")
    listing.add_argument("--mixture", help="only the tasks of this mixture, with their rates")
    listing.add_argument("--source", choices=naming.SOURCES, help="only tasks of this source")
    listing.add_argument("--mixtures", action="store_true", help="list mixtures instead")
    listing.add_argument(
        "--flan-names",
        action="store_true",
        help="list google-research/FLAN's mixture and task names (registering them) with "
        "the mixtures and tasks of ours they name",
    )
    show = commands.add_parser("show", help="describe a task or mixture")
    show.add_argument("name")
    preview = commands.add_parser("preview", help="render the first examples")
    preview.add_argument("name")
    preview.add_argument("-n", "--num_examples", type=flag_types.positive_int, default=3)
    preview.add_argument("--split", default="train")
    preview.add_argument(
        "--seed", type=flag_types.non_negative_int, default=0, help="seed of the mixture sampler"
    )
    preview.add_argument("--json", action="store_true", help="one JSON object per line")
    recount = commands.add_parser("recount", help="recount examples from local data")
    recount.add_argument(
        "--data_root", default=None, help="the data root (default: $FLAN_JAX_DATA_DIR)"
    )
    recount.add_argument(
        "--table",
        default=None,
        help="the count table to rewrite (default: the shipped tasks/counts.tsv)",
    )
    return parser.parse_args(argv)


def recount(data_root: str | None, table: str | None) -> list[str]:
    """Recounts the table from local data; one line per source: counted rows / all rows."""
    from flan_jax.tasks import mixtures, registry

    table = table or mixtures.COUNTS_PATH
    rows = registry.recompute_counts(data_root, path=table)
    totals: collections.Counter[str] = collections.Counter()
    counted: collections.Counter[str] = collections.Counter()
    for row in rows:
        totals[row.source] += 1
        counted[row.source] += row.origin == mixtures.RECOUNTED_ORIGIN
    return [
        f"{source}: {counted[source]} of {totals[source]} datasets counted from local data"
        for source in sorted(totals)
    ] + [f"wrote {table}"]


def _source_of(task_name: str) -> str | None:
    try:
        return naming.parse_task_name(task_name).source
    except ValueError:
        return None


def list_tasks(mixture: str | None, source: str | None) -> list[str]:
    """Task names (with rate and share inside `mixture`), filtered by mixture and source."""
    import seqio

    from flan_jax.data import export

    rows: list[tuple[str, tuple[float, float] | None]]
    if mixture is None:
        rows = [(name, None) for name in sorted(seqio.TaskRegistry.names())]
    else:
        provider = export.get_mixture_or_task(mixture)
        tasks = [provider] if isinstance(provider, seqio.Task) else provider.tasks
        rates = {t.name: 1.0 if t is provider else float(provider.get_rate(t)) for t in tasks}
        total = sum(rates.values()) or 1.0
        rows = [(name, (rate, rate / total)) for name, rate in sorted(rates.items())]
    return [
        name if rate is None else f"{name}\t{rate[0]:.6g}\t{100 * rate[1]:.3f}%"
        for name, rate in rows
        if source is None or _source_of(name) == source
    ]


def list_flan_names(source: str | None) -> list[str]:
    """FLAN's mixture names, then FLAN's task names (of `source`'s tasks), with ours."""
    import seqio

    from flan_jax.tasks import flan_names

    ours = [n for n in seqio.TaskRegistry.names() if _source_of(n) not in (None, "demo")]
    task_names = flan_names.register_flan_task_names(
        [n for n in ours if source is None or _source_of(n) == source]
    )
    aliases = flan_names.register_flan_mixture_aliases()
    if source is not None:
        prefix = flan_names.FLAN_SUBMIX_NAMES[source] + "_"
        aliases = {alias: mix for alias, mix in aliases.items() if alias.startswith(prefix)}
    return [f"{flan}\t{mine}" for flan, mine in sorted(aliases.items())] + [
        f"{flan}\t{mine}{_flan_copy_detail(flan, mine)}"
        for flan, mine in sorted(task_names.items())
    ]


def _flan_copy_detail(flan_name: str, ours: str) -> str:
    """How FLAN's task differs from ours: ", template 3", ", template_mix form" or ""."""
    import seqio

    spec = seqio.TaskRegistry.get(flan_name).source.render_spec
    if len(spec.templates) < len(seqio.TaskRegistry.get(ours).source.render_spec.templates):
        return f", template {spec.templates[0].index}"
    forms: tuple[str, ...] = getattr(spec.few_shot, "forms", ())
    return f", {forms[0]} form" if len(forms) == 1 else ""


def list_mixtures() -> list[str]:
    """Each registered mixture with its number of tasks."""
    import seqio

    return [
        f"{name}\t{len(seqio.get_mixture_or_task(name).tasks)} tasks"
        for name in sorted(seqio.MixtureRegistry.names())
    ]


def _format_count(task: seqio.Task, split: str) -> str:
    try:
        count = task.num_input_examples(split)
    except Exception as e:  # A source that must open its data to count (e.g. TFDS).
        return f"unknown ({type(e).__name__}: {e})"
    return "unknown" if count is None else f"{count:,}"


def _describe_templates(task: seqio.Task) -> list[str]:
    from flan_jax.tasks import sources

    spec = getattr(task.source, "render_spec", None)
    if not isinstance(spec, sources.RenderSpec):
        return ["templates: not exposed by this source"]
    types = collections.Counter(t.type for t in spec.templates)
    lines = [
        f"templates: {len(spec.templates)} ("
        + ", ".join(f"{n} {kind}" for kind, n in sorted(types.items()))
        + f"), rendering seed {spec.seed}"
    ]
    if spec.few_shot is not None:
        lines.append(
            f"few-shot: {spec.few_shot.num_shots} shots from a pool of "
            f"{len(spec.few_shot.pool)}, input budget {spec.few_shot.max_input_tokens}"
            " tokens"
        )
    for template in spec.templates:
        lines.append(
            f"  [{template.index}] {template.type}: {json.dumps(template.inputs)}"
            f" -> {json.dumps(template.targets)}"
        )
    return lines


def _describe_rates(task_name: str) -> list[str]:
    import seqio

    lines = []
    for name in sorted(seqio.MixtureRegistry.names()):
        mixture = seqio.get_mixture_or_task(name)
        task = next((t for t in mixture.tasks if t.name == task_name), None)
        if task is not None:
            rate = float(mixture.get_rate(task))
            lines.append(
                f"  {name}: rate {rate:.6g} ({100 * rate / mixture.total_rate:.3f}% of the mixture)"
            )
    return ["rates:"] + lines if lines else ["rates: in no registered mixture"]


def show_task(task: seqio.Task) -> list[str]:
    """Lines describing a task: identity, source, counts, templates and rates."""
    lines = [f"task: {task.name}"]
    try:
        task_id = naming.parse_task_name(task.name)
        lines.append(
            f"source: {task_id.source}, dataset {task_id.dataset}, variant "
            f"{task_id.variant}{', inverted' if task_id.inverted else ''}"
        )
    except ValueError:
        lines.append("source: (name not of the SOURCE__DATASET__VARIANT form)")
    lines.append(f"data source: {type(task.source).__name__}, splits {', '.join(task.splits)}")
    lines.append("examples: " + ", ".join(f"{s} {_format_count(task, s)}" for s in task.splits))
    lines += _describe_cap(_source_of(task.name))
    return lines + _describe_templates(task) + _describe_rates(task.name)


def _describe_cap(source: str | None) -> list[str]:
    from flan_jax.tasks import mixtures

    caps = mixtures.CAPS
    if source not in caps:
        return []
    return [f"cap: {caps[source]:,} examples (examples-proportional rate = min(cap, examples))"]


def show_mixture(mixture: seqio.Mixture) -> list[str]:
    """Lines describing a mixture: size, share of each source, largest tasks."""
    rates = {task.name: float(mixture.get_rate(task)) for task in mixture.tasks}
    total = sum(rates.values()) or 1.0
    by_source: collections.defaultdict[str, float] = collections.defaultdict(float)
    for name, rate in rates.items():
        by_source[_source_of(name) or "(other)"] += rate
    by_share = sorted(by_source.items(), key=lambda item: item[1], reverse=True)
    lines = [
        f"mixture: {mixture.name}",
        f"tasks: {len(rates)}, total rate {total:.6g}",
        "share per source:",
    ]
    lines += [f"  {source}: {100 * rate / total:.2f}%" for source, rate in by_share]
    lines.append("largest rates:")
    top = sorted(rates.items(), key=lambda item: (-item[1], item[0]))[:10]
    lines += [f"  {name}: {rate:.6g} ({100 * rate / total:.3f}%)" for name, rate in top]
    return lines


def preview(name: str, num_examples: int, split: str, seed: int, as_json: bool) -> list[str]:
    """The first rendered examples of a task or mixture, with their metadata."""
    from flan_jax.data import export

    sampler = export.MixtureSampler(export.get_task_rates(name, split), split=split, seed=seed)
    lines = []
    for count in range(1, num_examples + 1):
        example = sampler.next_example()
        if example is None:
            break
        record = export.to_json_example(example)
        if as_json:
            lines.append(json.dumps(record, ensure_ascii=False))
            continue
        metadata = ", ".join(f"{k}={v}" for k, v in record.items() if k.startswith("_"))
        lines.append(f"=== example {count}: {metadata}")
        lines += [f"--- {key}\n{record.get(key, '')}" for key in ("inputs", "targets")]
    return lines


def _run_command(args: argparse.Namespace) -> list[str]:
    import seqio

    from flan_jax.data import export

    if args.command == "list":
        if args.flan_names:
            return list_flan_names(args.source)
        return list_mixtures() if args.mixtures else list_tasks(args.mixture, args.source)
    if args.command == "preview":
        return preview(args.name, args.num_examples, args.split, args.seed, args.json)
    provider = export.get_mixture_or_task(args.name)
    return show_task(provider) if isinstance(provider, seqio.Task) else show_mixture(provider)


def main(argv: Sequence[str]) -> int:
    args = _parse_args(argv)
    if args.command == "recount":
        print("\n".join(recount(args.data_root, args.table)))
        return 0
    register_catalog_from_flags(args)
    lines = _run_command(args)
    if lines:
        print("\n".join(lines))
    if args.command == "list":
        kind = "FLAN names" if args.flan_names else "mixtures" if args.mixtures else "tasks"
        print(f"({len(lines)} {kind})", file=sys.stderr)
    return 0
