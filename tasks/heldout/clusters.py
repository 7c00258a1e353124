"""FLAN 2021's leave-one-cluster-out protocol, on Flan 2021 and on the demo collection.

The first FLAN paper (Wei et al. 2022) evaluates zero-shot on a task cluster held out of
instruction tuning, one cluster at a time, and finds held-out accuracy rising with the
number of clusters trained on. Flan 2021 datasets carry their cluster in
`tasks/flan2021/datasets.yaml`; the demo's clusters are its datasets.

    mixture, eval_tasks = register_leave_one_cluster_out("nli")
    # "flan2021_without_nli": every other cluster's zs_opt tasks (less paraphrase, see
    # below), examples-proportional with the first FLAN paper's 3,000-example rate cap;
    # eval_tasks: ("flan2021__anli_r1__zs_opt", ..., "flan2021__wnli__zs_opt")

    mixture, eval_tasks = register_demo_cluster_transfer("words", train_clusters=["nli"])
    # "demo_heldout_words_train_nli"; eval_tasks: the seen- and unseen-template zero-shot
    # tasks of "words" (both new to the model), validation split

Clusters so close that training on one leaks the other are held out together, as FLAN's
inter-cluster splits do (google-research/FLAN flan/task_splits.py): reading comprehension
and commonsense with reading comprehension with commonsense (both ways), and NLI with
paraphrase (both ways).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import seqio

from flan_jax.tasks import family, mixtures, naming
from flan_jax.tasks.demo import collection as demo_collection
from flan_jax.tasks.flan2021 import catalog as flan2021_catalog

# Held-out cluster -> clusters also left out of training (google-research/FLAN
# flan/task_splits.py generate_inter_cluster_splits, in our cluster names).
COMPANION_CLUSTERS = {
    "reading_comprehension": ("reading_comprehension_with_commonsense",),
    "commonsense": ("reading_comprehension_with_commonsense",),
    "reading_comprehension_with_commonsense": ("reading_comprehension", "commonsense"),
    "paraphrase": ("nli",),
    "nli": ("paraphrase",),
}


def flan2021_clusters() -> dict[str, tuple[str, ...]]:
    """{cluster: datasets} of FLAN's Flan 2021 datasets (catalog entries `in_flan`)."""
    clusters: dict[str, list[str]] = {}
    for entry in flan2021_catalog.load_catalog():
        if entry.in_flan:
            clusters.setdefault(entry.cluster, []).append(entry.name)
    return {cluster: tuple(names) for cluster, names in clusters.items()}


def _require_registered(task_names: Sequence[str], how: str) -> None:
    missing = [n for n in task_names if n not in seqio.TaskRegistry.names()]
    if missing:
        raise ValueError(
            f"{len(missing)} tasks are not registered, e.g. {missing[:5]}; register them "
            f"first ({how})."
        )


def register_leave_one_cluster_out(
    cluster: str,
    *,
    variants: Sequence[str] = ("zs_opt",),
    rate_cap: int | None = mixtures.FLAN2021_ORIGINAL_RATE_CAP,
    exclude_companions: bool = True,
    counts: mixtures.Counts | None = None,
) -> tuple[str, tuple[str, ...]]:
    """Registers `flan2021_without_<cluster>`; returns it and the held-out eval tasks.

    Args:
      cluster: the held-out Flan 2021 cluster (`flan2021_clusters()`).
      variants: the variants trained on (default: zero-shot with options, as
        `flan2021_original`).
      rate_cap: a dataset's rate is min(rate_cap, its count) (default: the first FLAN
        paper's 3,000); None caps at the Flan 2022 per-dataset cap (30,000).
      exclude_companions: also leave out `COMPANION_CLUSTERS[cluster]`, as FLAN does.
      counts: example counts (None: `mixtures.load_counts()`).

    Returns:
      (train mixture name, the held-out cluster's zero-shot `zs_opt` tasks).
    """
    clusters = flan2021_clusters()
    if cluster not in clusters:
        closest = difflib.get_close_matches(cluster, list(clusters), n=3)
        raise ValueError(
            f"Unknown Flan 2021 cluster {cluster!r}; closest: {closest} (all: {sorted(clusters)}; "
            "the `cluster` field of tasks/flan2021/datasets.yaml)."
        )
    for variant in variants:
        if variant not in naming.VARIANTS:
            raise ValueError(f"variants must be among {naming.VARIANTS}, got {variant!r}.")
    left_out = {cluster, *(COMPANION_CLUSTERS.get(cluster, ()) if exclude_companions else ())}
    counts = mixtures.load_counts() if counts is None else counts
    train_ids = [
        naming.TaskId("flan2021", dataset, variant)
        for name, datasets in clusters.items()
        if name not in left_out
        for dataset in datasets
        for variant in variants
    ]
    eval_tasks = tuple(
        naming.make_task_name(naming.TaskId("flan2021", d, "zs_opt")) for d in clusters[cluster]
    )
    how = "flan2021.FAMILY.register(vocabulary) or registry.register_all"
    _require_registered([naming.make_task_name(t) for t in train_ids] + list(eval_tasks), how)
    members = [
        (naming.make_task_name(t), mixtures.task_rate(t, counts, cap=rate_cap)) for t in train_ids
    ]
    return mixtures.add_mixture(f"flan2021_without_{cluster}", members), eval_tasks


def register_demo_cluster_transfer(
    held_out: str,
    *,
    train_clusters: Sequence[str] | None = None,
    variants: Sequence[str] = ("zs_opt", "zs_noopt"),
) -> tuple[str, tuple[str, ...]]:
    """Registers a demo mixture over `train_clusters`; returns it and `held_out`'s eval tasks.

    Trains on the seen-template tasks of `train_clusters` (inverted ones at
    `demo_collection.INVERTED_RATE`, as `demo_mixture`); `held_out` is never trained on.
    The demo tasks must be registered (`demo.register_demo_tasks(vocabulary)`).

    Args:
      held_out: the cluster evaluated zero-shot.
      train_clusters: the clusters trained on (None: every other one). Training on 1, 2,
        3 and 4 of them reproduces FLAN's "more clusters" experiment in miniature.
      variants: the variants trained on.

    Returns:
      (mixture name, (the held-out cluster's seen-template task, its unseen-template task)),
      both evaluated on their "validation" split.
    """
    clusters = demo_collection.CLUSTERS
    family.select_datasets("demo", [held_out], clusters)
    train = [c for c in clusters if c != held_out] if train_clusters is None else train_clusters
    family.select_datasets("demo", list(train), clusters)
    if held_out in train or not train:
        raise ValueError(
            f"train_clusters must be a non-empty list without the held-out cluster "
            f"{held_out!r}, got {list(train)}."
        )
    members = []
    for task in demo_collection.list_demo_tasks(clusters=train):
        task_id = task.spec.task_id
        if not task.held_out_templates and task_id.variant in variants:
            rate = demo_collection.INVERTED_RATE if task_id.inverted else 1.0
            members.append((task.name, rate))
    eval_names = demo_collection.demo_eval_tasks()[held_out]
    eval_tasks = (eval_names["seen"], eval_names["unseen"])
    how = "demo.register_demo_tasks(demo.get_demo_vocabulary())"
    _require_registered([name for name, _ in members] + list(eval_tasks), how)
    name = f"demo_heldout_{held_out}_train_{'_'.join(train)}"
    return mixtures.add_mixture(name, members), eval_tasks
