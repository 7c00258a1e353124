"""Held-out protocols: FLAN 2021 leave-one-cluster-out, OPT-IML's three levels, the category
catalog. Mixtures are checked over their member tasks (Flan) and over rendered data (demo)."""

import csv
import math

import pytest
import seqio
import tensorflow as tf

from flan_jax.tasks import cot, demo, dialog, mixtures, naming, niv2, registry, t0
from flan_jax.tasks.flan2021 import catalog as flan2021_catalog
from flan_jax.tasks.heldout import build_categories, categories, clusters, instances
from flan_jax.testing.shared_data import shared_data_path

# The first FLAN paper's 12 clusters (Wei et al. 2022, figure 3), written out here; datasets
# the paper does not list are not checked.
PAPER_CLUSTERS = {
    "nli": {"anli_r1", "anli_r2", "anli_r3", "cb", "mnli_matched", "qnli", "rte", "snli", "wnli"},
    "commonsense": {"copa", "hellaswag", "piqa", "story_cloze"},
    "sentiment": {"imdb_reviews", "sentiment140", "sst2", "yelp_polarity_reviews"},
    "paraphrase": {"glue_mrpc", "glue_qqp", "paws_wiki", "stsb"},
    "closed_book_qa": {"arc_challenge", "arc_easy", "natural_questions", "trivia_qa"},
    "struct_to_text": {"common_gen", "dart", "e2e_nlg", "web_nlg_en"},
    "translation": {"para_crawl_enes", "wmt14_enfr", "wmt16_translate_deen"},
    "reading_comprehension": {"bool_q", "drop", "multirc", "openbookqa", "squad_v1", "squad_v2"},
    "reading_comprehension_with_commonsense": {"cosmos_qa", "record"},
    "coreference": {"definite_pronoun_resolution", "winogrande", "wsc"},
    "misc": {"coqa", "quac", "trec", "cola", "wic", "math_dataset", "fix_punct"},
    "summarization": {"aeslc", "ag_news_subset", "cnn_dailymail", "xsum", "samsum"},
}
DEMO_SAMPLE = 400  # Rendered examples read per demo task.


@pytest.fixture(scope="module")
def flan_tasks():
    return registry.register_all(seqio.PassThroughVocabulary(10)).tasks


@pytest.fixture(scope="module")
def demo_tasks():
    return demo.register_demo_tasks(demo.get_demo_vocabulary())


def rendered(task_name: str, split: str, count: int = DEMO_SAMPLE) -> list[dict]:
    source = seqio.get_mixture_or_task(task_name).source
    dataset = source.get_dataset(split, shuffle=False).take(count)
    return [
        {k: v.decode() if isinstance(v, bytes) else v for k, v in ex.items()}
        for ex in dataset.as_numpy_iterator()
    ]


def independent_is_held_out(task_name: str, key: str, fraction: float, seed: int) -> bool:
    task_id = naming.parse_task_name(task_name)
    salted = f"{seed}/{task_id.source}/{task_id.dataset}/{key}"
    return int(tf.strings.to_hash_bucket_fast(salted, 10_000)) < round(fraction * 10_000)


def test_flan2021_clusters_are_the_first_flan_papers_twelve():
    found = clusters.flan2021_clusters()
    assert set(found) == set(PAPER_CLUSTERS)
    for cluster, datasets in PAPER_CLUSTERS.items():
        assert datasets <= set(found[cluster]), cluster


@pytest.mark.parametrize("cluster", sorted(PAPER_CLUSTERS))
def test_leave_one_cluster_out_trains_on_no_held_out_task(flan_tasks, cluster):
    del flan_tasks
    mixture, eval_tasks = clusters.register_leave_one_cluster_out(cluster)
    by_cluster = {e.name: e.cluster for e in flan2021_catalog.load_catalog()}
    left_out = {cluster, *clusters.COMPANION_CLUSTERS.get(cluster, ())}
    rates = seqio.get_mixture_or_task(mixture).rate_per_task_name
    counts = mixtures.load_counts()
    trained_clusters = set()
    for name, rate in rates.items():
        task_id = naming.parse_task_name(name)
        assert task_id.source == "flan2021" and task_id.variant == "zs_opt"
        assert by_cluster[task_id.dataset] not in left_out, name
        trained_clusters.add(by_cluster[task_id.dataset])
        count = counts[("flan2021", task_id.dataset)]
        assert rate == min(3_000, count if count is not None else 3_000)
    assert trained_clusters == set(PAPER_CLUSTERS) - left_out
    assert {naming.parse_task_name(n).dataset for n in eval_tasks} == set(
        clusters.flan2021_clusters()[cluster]
    )
    assert all(naming.parse_task_name(n).variant == "zs_opt" for n in eval_tasks)


def test_leave_one_cluster_out_rejects_an_unknown_cluster(flan_tasks):
    del flan_tasks
    with pytest.raises(ValueError, match="closest: \\['sentiment'\\]"):
        clusters.register_leave_one_cluster_out("sentimnt")


@pytest.mark.parametrize("train", [("nli",), ("nli", "reading", "arith", "sentiment")])
def test_demo_cluster_transfer_renders_no_held_out_example(demo_tasks, train):
    del demo_tasks
    mixture, eval_tasks = clusters.register_demo_cluster_transfer("words", train_clusters=train)
    members = seqio.get_mixture_or_task(mixture).rate_per_task_name
    seen_clusters = set()
    for task_name in members:
        for example in rendered(task_name, "train", 50):
            cluster = naming.parse_task_name(example["_task_name"]).dataset
            assert cluster in train and ".unseen" not in cluster, example["_task_name"]
            seen_clusters.add(cluster)
    assert seen_clusters == set(train)
    assert [naming.parse_task_name(n).dataset for n in eval_tasks] == ["words", "words.unseen"]
    assert all(rendered(n, "validation", 5) for n in eval_tasks)


def test_level_two_rule_and_levels_partition_the_catalog():
    rows = [r for r in categories.load_category_catalog() if r.source != "demo"]
    split = categories.split_by_generalization_level(
        rows, held_out_categories=categories.NIV2_EVAL_CATEGORIES, seed=3
    )
    keys = [(r.source, r.dataset) for r in rows]
    levels = [split.category_datasets, split.task_datasets, split.seen_datasets]
    assert sorted(k for level in levels for k in level) == sorted(keys)
    category_of = {(r.source, r.dataset): r.category for r in rows}
    assert {category_of[k] for k in split.category_datasets} <= set(categories.NIV2_EVAL_CATEGORIES)
    sizes: dict[str, int] = {}
    for key in keys:
        sizes[category_of[key]] = sizes.get(category_of[key], 0) + 1
    held_per_category: dict[str, int] = {}
    for key in split.task_datasets:
        held_per_category[category_of[key]] = held_per_category.get(category_of[key], 0) + 1
    for category, size in sizes.items():
        if category not in categories.NIV2_EVAL_CATEGORIES:
            assert held_per_category.get(category, 0) == math.ceil(0.1 * (size - 1)), category
    assert {category_of[k] for k in split.seen_datasets} == set(sizes) - set(
        categories.NIV2_EVAL_CATEGORIES
    )
    with pytest.raises(ValueError, match="closest: .*'Textual Entailment'"):
        categories.split_by_generalization_level(rows, held_out_categories=["Textual Entailmnt"])


def test_optiml_flan_mixture_has_no_task_of_levels_one_and_two(flan_tasks):
    del flan_tasks
    protocol = categories.register_optiml_protocol()
    held_out = set(protocol.split.category_datasets) | set(protocol.split.task_datasets)
    members = seqio.get_mixture_or_task(protocol.train_mixture).rate_per_task_name
    assert len(members) > 1000
    for copy_name in members:
        task_name, suffix = copy_name.split(":")
        assert suffix.startswith("seen_instances")
        task_id = naming.parse_task_name(task_name)
        assert (task_id.source, task_id.dataset) not in held_out, copy_name
        assert task_id.variant in categories.DEFAULT_VARIANTS
    for level in ("held_out_categories", "held_out_tasks"):
        assert protocol.eval_tasks[level]
        for name in protocol.eval_tasks[level]:
            task_id = naming.parse_task_name(name)
            assert (task_id.source, task_id.dataset) in held_out
    # MMLU-derived NIv2 tasks are not registered, so not evaluated here either.
    assert len(protocol.eval_tasks["held_out_instances"]) == len(
        {naming.parse_task_name(m.split(":")[0]).dataset for m in members}
    )


def test_optiml_demo_level_three_instances_stay_out_of_training(demo_tasks):
    del demo_tasks
    fraction, seed = 0.1, 0
    protocol = categories.register_optiml_protocol(demo=True, instance_fraction=fraction)
    split = protocol.split
    assert split.category_datasets == (("demo", "words"),)
    assert len(split.task_datasets) == 2 and len(split.seen_datasets) == 2
    seen = {d for _, d in split.seen_datasets}
    members = seqio.get_mixture_or_task(protocol.train_mixture).rate_per_task_name
    train_keys: dict[str, set[str]] = {}
    for copy_name in members:
        for example in rendered(copy_name, "train"):
            name = example["_task_name"]
            assert naming.parse_task_name(name).dataset in seen, name
            assert not independent_is_held_out(name, example["_example_key"], fraction, seed)
            train_keys.setdefault(naming.parse_task_name(name).dataset, set()).add(
                example["_example_key"]
            )
    assert set(train_keys) == seen
    eval_keys: dict[str, set[str]] = {}
    for copy_name in protocol.eval_tasks["held_out_instances"]:
        examples = rendered(copy_name, instances.HELD_OUT_SPLIT, 40)
        assert len(examples) == 40
        for example in examples:
            assert independent_is_held_out(example["_task_name"], example["_example_key"], 0.1, 0)
            dataset = naming.parse_task_name(example["_task_name"]).dataset
            eval_keys.setdefault(dataset, set()).add(example["_example_key"])
    assert set(eval_keys) == seen
    for dataset in seen:
        assert not train_keys[dataset] & eval_keys[dataset]
        # The training stream skips exactly the held-out keys among the first ones.
        last = max(int(k.split(":")[1]) for k in train_keys[dataset])
        expected = {f"train:{i}" for i in range(last + 1)} - {
            f"train:{i}"
            for i in range(last + 1)
            if independent_is_held_out(f"demo__{dataset}__zs_noopt", f"train:{i}", 0.1, 0)
        }
        assert train_keys[dataset] == expected
    for level in ("held_out_categories", "held_out_tasks"):
        datasets = {naming.parse_task_name(n).dataset for n in protocol.eval_tasks[level]}
        assert not datasets & seen


def test_category_catalog_covers_every_registered_dataset():
    rows = categories.load_category_catalog()
    in_catalog = {(r.source, r.dataset) for r in rows}
    assert len(in_catalog) == len(rows)
    families = {
        "flan2021": [e.name for e in flan2021_catalog.load_catalog()],
        "t0": t0.FAMILY.list_datasets(),
        "niv2": niv2.FAMILY.list_datasets(),
        "cot": cot.FAMILY.list_datasets(),
        "dialog": dialog.FAMILY.list_datasets(),
        "demo": demo.CLUSTERS,
    }
    expected = {(source, d) for source, datasets in families.items() for d in datasets}
    assert in_catalog == expected
    assert len([r for r in rows if r.source == "niv2"]) == 1556


def test_category_catalog_matches_its_sources():
    table = shared_data_path("flan_cot_data", "flan_collection_info.csv")
    shared_data_path("super_natural_instructions", "niv2_task_metadata_from_flan.tsv")
    assert build_categories.main(["--data-dir", str(table.parent.parent), "--check"]) == 0
    with open(table, encoding="utf-8") as f:
        first = {}
        for row in csv.DictReader(f):
            first.setdefault((row["Source"], row["Dataset"]), row["Generic Task Category"])
    by_key = {(r.source, r.dataset): r for r in categories.load_category_catalog()}
    rte = first.get(("FLAN", "rte")) or first[("FLAN/T0", "rte")]
    assert by_key[("flan2021", "rte")].collection_category == rte
    assert by_key[("cot", "gsm8k")].collection_category == first[("CoT", "cot_gsm8k")]
    assert by_key[("dialog", "qrecc")].collection_category == "Conversational Question Answering"
    assert by_key[("flan2021", "anli_r1")].category == "Textual Entailment"
