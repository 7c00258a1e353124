"""Examples-proportional mixtures of the Flan 2022 collection, with per-task caps.

Rates come from the example-count table `tasks/counts.tsv` alone (never from reading data
at registration time): a task's rate is `min(cap, count)`, with the cap of its source; a
blank or missing count falls back to the cap, and registering a mixture with such tasks
logs a warning naming them. For each source the mixtures are

    <source>_<variant>              originals of one variant, examples-proportional
    <source>_inverted_<variant>     inverted tasks of one variant (CoT, Dialog)
    <source>_submix                 the variant mixtures, 1:1 (inverted ones at 0.3)

and on top `flan2022_submix` weighs the source submixes, and `flan2021_original` is the
Flan 2021 zero-shot mixture with the first FLAN paper's 3,000-example rate cap. seqio
normalises a sub-mixture's rates by its total, so the weights here are the shares of
each part. Example: two CoT datasets of 7,473 and 150,000 examples get rates 7,473 and
100,000 in `cot_zs_opt`, and `cot_submix` draws 1/2.6 of its examples from `cot_zs_opt`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import seqio

from flan_jax.data import file_io
from flan_jax.tasks import data_paths, naming

COUNTS_PATH = os.path.join(os.path.dirname(__file__), "counts.tsv")
RECOUNTED_ORIGIN = "counted: recompute_counts on local data"
# Per-task caps for examples-proportional mixing, from the Flan 2022 collection's public
# mixture configuration (Longpre et al. 2023, "The Flan Collection"; see REFERENCE.md).
CAPS = {"flan2021": 30_000, "t0": 20_000, "niv2": 5_000, "cot": 100_000, "dialog": 200_000}
SUBMIX_WEIGHTS = {
    "flan2021": 0.40,  # The Flan Collection (Longpre et al. 2023), flan2022_submix: Flan 2021.
    "t0": 0.32,  # The Flan Collection (Longpre et al. 2023), flan2022_submix: T0-SF.
    "niv2": 0.20,  # The Flan Collection (Longpre et al. 2023), flan2022_submix: NIv2.
    "cot": 0.05,  # The Flan Collection (Longpre et al. 2023), flan2022_submix: CoT.
    "dialog": 0.03,  # The Flan Collection (Longpre et al. 2023), flan2022_submix: Dialog.
}
# Each variant mixture weighs 1 inside its source submix (zero-/few-shot x options, 1:1),
# as in the Flan 2022 collection's submix definitions.
VARIANT_WEIGHT = 1.0
# Originals : inverted = 1 : 0.3 for CoT and Dialog (Flan 2022 collection submix config).
INVERTED_WEIGHT = 0.3
# The first FLAN paper (Wei et al. 2022) capped each dataset's mixing rate at 3,000.
FLAN2021_ORIGINAL_RATE_CAP = 3_000
# How many cap-fallback task names the warning lists before "and N more".
_FALLBACK_NAMES_SHOWN = 10
_COUNT_COLUMNS = ("source", "dataset", "split", "num_examples", "origin")

Counts = Mapping[tuple[str, str], int | None]


@dataclasses.dataclass(frozen=True)
class CountRow:
    """One row of the count table: a dataset's training examples and where they come from."""

    source: str
    dataset: str
    split: str
    num_examples: int | None
    origin: str


def read_count_table(path: str = COUNTS_PATH) -> list[CountRow]:
    """Reads the count table; a malformed row names the file and line."""
    with open(path, encoding="utf-8") as f:
        lines = [
            (number, line) for number, line in enumerate(f, start=1) if not line.startswith("#")
        ]
    header = lines[0][1].rstrip("\n").split("\t")
    if tuple(header) != _COUNT_COLUMNS:
        raise ValueError(f"{path}:{lines[0][0]}: expected columns {_COUNT_COLUMNS}, got {header}.")
    rows = []
    for number, line in lines[1:]:
        values = line.rstrip("\n").split("\t")
        if len(values) != len(_COUNT_COLUMNS):
            raise ValueError(f"{path}:{number}: expected {len(_COUNT_COLUMNS)} columns.")
        source, dataset, split, count, origin = values
        if count and not count.isdigit():
            raise ValueError(f"{path}:{number}: num_examples must be an integer, got {count!r}.")
        rows.append(CountRow(source, dataset, split, int(count) if count else None, origin))
    return rows


def load_counts(path: str = COUNTS_PATH) -> dict[tuple[str, str], int | None]:
    """{(source, dataset): train examples or None} from the count table."""
    return {
        (r.source, r.dataset): r.num_examples for r in read_count_table(path) if r.split == "train"
    }


def write_count_table(rows: Sequence[CountRow], path: str = COUNTS_PATH) -> None:
    """Writes the table atomically (temp file, then rename), keeping the header comment."""
    with open(path, encoding="utf-8") as f:
        comments = [line for line in f if line.startswith("#")]

    def write_table(f) -> None:
        f.writelines(comments)
        f.write("\t".join(_COUNT_COLUMNS) + "\n")
        for r in rows:
            count = "" if r.num_examples is None else str(r.num_examples)
            f.write("\t".join([r.source, r.dataset, r.split, count, r.origin]) + "\n")

    file_io.write_atomically(path, write_table)


def recompute_counts(
    paths: data_paths.DataPaths,
    *,
    count_examples: Callable[[str, str, data_paths.DataPaths], int | None],
    path: str = COUNTS_PATH,
) -> list[CountRow]:
    """Recounts every table row whose data is available locally and rewrites the table.

    Rows whose data is absent keep their previous count and origin.

    Args:
      paths: where the local data is.
      count_examples: (source, dataset, paths) -> number of training examples, or None
        when the data is absent (`registry.count_local_examples` reads each family).
      path: the table to rewrite.

    Returns:
      The rows written.
    """
    rows = []
    for row in read_count_table(path):
        count = count_examples(row.source, row.dataset, paths)
        if count is not None:
            row = dataclasses.replace(row, num_examples=count, origin=RECOUNTED_ORIGIN)
        rows.append(row)
    write_count_table(rows, path)
    return rows


def task_rate(task_id: naming.TaskId, counts: Counts, *, cap: int | None = None) -> float:
    """min(cap, count) for `task_id`; the source's cap when the count is unknown."""
    cap = CAPS[task_id.source] if cap is None else cap
    count = counts.get((task_id.source, task_id.dataset))
    return float(cap if count is None else min(cap, count))


def _add_rated_mixture(
    name: str, task_ids: Sequence[naming.TaskId], counts: Counts, *, cap: int | None = None
) -> str:
    """Registers `name` over `task_ids` at examples-proportional rates (see `task_rate`).

    Warns once, naming the tasks, when some rates fall back to the cap for want of a count.
    """
    members = [(naming.make_task_name(t), task_rate(t, counts, cap=cap)) for t in task_ids]
    uncounted = [
        naming.make_task_name(t) for t in task_ids if counts.get((t.source, t.dataset)) is None
    ]
    if uncounted:
        shown = ", ".join(uncounted[:_FALLBACK_NAMES_SHOWN])
        more = len(uncounted) - _FALLBACK_NAMES_SHOWN
        logging.warning(
            "Mixture %s: %d of %d tasks have no example count and are mixed at their cap: "
            "%s%s. Fill their rows of the count table (tasks/counts.tsv), or run "
            "`flan-jax tasks recount` on local data.",
            name,
            len(uncounted),
            len(task_ids),
            shown,
            f", and {more} more" if more > 0 else "",
        )
    return add_mixture(name, members)


def add_mixture(name: str, members: Sequence[tuple[str, float]]) -> str:
    """Registers mixture `name` of (task or mixture, rate) members, replacing an old one."""
    # Re-registering replaces the mixture, so a second call with more tasks is not stale.
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, list(members))
    return name


def _group_by_variant(
    task_names: Iterable[str],
) -> dict[tuple[str, bool, str], list[naming.TaskId]]:
    groups: dict[tuple[str, bool, str], list[naming.TaskId]] = {}
    for name in task_names:
        task_id = naming.parse_task_name(name)
        groups.setdefault((task_id.source, task_id.inverted, task_id.variant), []).append(task_id)
    return groups


def variant_mixture_name(source: str, variant: str, inverted: bool = False) -> str:
    return f"{source}_inverted_{variant}" if inverted else f"{source}_{variant}"


def register_source_mixtures(task_names: Iterable[str], counts: Counts) -> dict[str, str]:
    """Registers the variant mixtures and the submix of each source; returns {source: submix}.

    Args:
      task_names: registered task names (parsed with `naming.parse_task_name`).
      counts: {(source, dataset): train examples or None}.
    """
    groups = _group_by_variant(task_names)
    submix_members: dict[str, list[tuple[str, float]]] = {}
    for (source, inverted, variant), task_ids in sorted(groups.items()):
        mixture = _add_rated_mixture(
            variant_mixture_name(source, variant, inverted), task_ids, counts
        )
        weight = INVERTED_WEIGHT if inverted else VARIANT_WEIGHT
        submix_members.setdefault(source, []).append((mixture, weight))
    return {
        source: add_mixture(f"{source}_submix", members)
        for source, members in submix_members.items()
    }


def register_flan2022_mixtures(task_names: Sequence[str], counts: Counts) -> list[str]:
    """Registers all mixtures over `task_names`; returns the mixture names.

    `flan2022_submix` includes the sources that have registered tasks (a skipped source's
    share is redistributed by seqio's normalisation; the registry reports it).
    """
    submixes = register_source_mixtures(task_names, counts)
    names = []
    for submix in submixes.values():
        names.extend(seqio.get_mixture_or_task(submix).rate_per_task_name)
        names.append(submix)
    present = [(submixes[s], w) for s, w in SUBMIX_WEIGHTS.items() if s in submixes]
    if present:
        names.append(add_mixture("flan2022_submix", present))
    original = [naming.parse_task_name(n) for n in task_names]
    original = [
        t for t in original if t.source == "flan2021" and not t.inverted and t.variant == "zs_opt"
    ]
    if original:
        names.append(
            _add_rated_mixture(
                "flan2021_original", original, counts, cap=FLAN2021_ORIGINAL_RATE_CAP
            )
        )
    logging.info("Registered %d mixtures over %d tasks.", len(names), len(task_names))
    return names


def iter_mixture_rates(mixture: str) -> Iterator[tuple[str, float]]:
    """(task name, overall share) of every task of `mixture`, shares summing to 1."""
    mix = seqio.get_mixture_or_task(mixture)
    for task in mix.tasks:
        yield task.name, mix.get_rate(task) / mix.total_rate
