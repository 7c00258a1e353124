"""The Flan 2021 submixture: catalog, preprocessing, every template, and the registry.

The catalog's TFDS sources and split slices are compared with a table of FLAN's, and its
slices with TFDS's own reading of them. Golden tests render every template of every family
on one hand-written example per dataset (tests/tasks/flan2021_fixtures.yaml, shaped like the
dataset's TFDS features); the fixtures' feature names are checked against the installed
TFDS builders, and the catalog's feature paths against TFDS-generated examples
(`tfds.testing.mock_data`), so none of this needs prepared data.
"""

import csv
import itertools
import os
import re
import types
from unittest import mock

import numpy as np
import pytest
import seqio
import yaml

from flan_jax.tasks import data_paths, naming, registry, templates, tfds_reading
from flan_jax.tasks.flan2021 import catalog, preprocessors, register
from flan_jax.testing.shared_data import shared_data_dir
from flan_jax.testing.tasks import forget_tasks

FIXTURES = yaml.safe_load(
    open(os.path.join(os.path.dirname(__file__), "flan2021_fixtures.yaml"), encoding="utf-8")
)
ENTRIES = catalog.load_catalog()
NAMES = [entry.name for entry in ENTRIES]
NOT_IN_FLAN = "trivia_qa_wiki_missing"


def _hold_out(size: int, test: str, base: str = "train") -> dict[str, str]:
    """FLAN's hold-out: the last `size` rows of `base` validate, the rest train."""
    return {"train": f"{base}[:-{size}]", "validation": f"{base}[-{size}:]", "test": test}


WHOLE = {"train": "train", "validation": "validation", "test": "test"}
PARA_CRAWL_ENDA = "para_crawl/enda:1.2.0"
# FLAN's TFDS name and splits per Flan 2021 dataset, from google-research/FLAN: the
# TaskConfigs of flan/v2/task_configs_v1.py as flan/v2/utils.py
# (reset_split_maxes_on_flan_v0_configs) rewrites them for the Flan collection (train caps
# lifted; a train split whose end v1 held out as validation loses only that end), and
# flan/v2/task_configs.py for lambada and unified_qa_science_inst.
FLAN_SOURCES = {
    "anli_r1": ("anli/r1:0.1.0", WHOLE),
    "anli_r2": ("anli/r2:0.1.0", WHOLE),
    "anli_r3": ("anli/r3:0.1.0", WHOLE),
    "cb": ("super_glue/cb:1.0.2", _hold_out(50, "validation")),
    "mnli_matched": ("glue/mnli:2.0.0", _hold_out(200, "validation_matched")),
    "mnli_mismatched": ("glue/mnli:2.0.0", _hold_out(200, "validation_mismatched")),
    "qnli": ("glue/qnli:2.0.0", _hold_out(200, "validation")),
    "rte": ("super_glue/rte:1.0.2", _hold_out(200, "validation")),
    "snli": ("snli:1.1.0", WHOLE),
    "bool_q": ("bool_q:1.0.0", _hold_out(200, "validation")),
    "drop": ("drop:2.0.0", _hold_out(200, "dev")),
    "multirc": ("super_glue/multirc:1.0.2", _hold_out(200, "validation")),
    "openbookqa": ("openbookqa:0.1.0", WHOLE),
    "squad_v1": ("squad/v1.1:3.0.0", _hold_out(200, "validation")),
    "squad_v2": ("squad/v2.0:3.0.0", _hold_out(200, "validation")),
    "coqa": ("coqa:1.0.0", _hold_out(100, "test")),
    "record": ("super_glue/record:1.0.2", _hold_out(200, "validation")),
    "quac": ("quac:1.0.0", _hold_out(200, "validation")),
    "cosmos_qa": ("cosmos_qa:1.0.0", _hold_out(200, "validation")),
    "arc_challenge": ("ai2_arc/ARC-Challenge:1.0.0", _hold_out(200, "test")),
    "arc_easy": ("ai2_arc/ARC-Easy:1.0.0", _hold_out(200, "test")),
    "natural_questions": ("natural_questions_open:1.0.0", _hold_out(200, "validation")),
    "trivia_qa": ("trivia_qa/rc:1.1.0", _hold_out(200, "validation")),
    "unified_qa_science_inst": ("unified_qa/ai2_science_middle:1.0.0", {"train": "train"}),
    "copa": ("super_glue/copa:1.0.2", _hold_out(50, "validation")),
    "hellaswag": ("hellaswag:1.1.0", _hold_out(200, "validation")),
    "piqa": ("piqa:1.0.0", _hold_out(100, "validation")),
    "story_cloze": ("story_cloze/2016:1.0.0", _hold_out(200, "test", base="validation")),
    "definite_pronoun_resolution": ("definite_pronoun_resolution:1.1.0", _hold_out(200, "test")),
    "winogrande": ("winogrande:1.1.0", _hold_out(200, "validation", base="train_xl")),
    "wsc": ("super_glue/wsc.fixed:1.0.2", _hold_out(50, "validation")),
    "wnli": ("glue/wnli:2.0.0", _hold_out(30, "validation")),
    "imdb_reviews": ("imdb_reviews/plain_text:1.0.0", _hold_out(200, "test")),
    "sentiment140": ("sentiment140:1.0.0", _hold_out(200, "test")),
    "sst2": ("glue/sst2:2.0.0", _hold_out(200, "validation")),
    "yelp_polarity_reviews": ("yelp_polarity_reviews:0.2.0", _hold_out(200, "test")),
    "glue_mrpc": ("glue/mrpc:2.0.0", _hold_out(200, "validation")),
    "glue_qqp": ("glue/qqp:2.0.0", _hold_out(200, "validation")),
    "paws_wiki": ("paws_wiki:1.1.0", WHOLE),
    "stsb": ("glue/stsb:2.0.0", _hold_out(100, "validation")),
    "common_gen": ("gem/common_gen:1.1.0", _hold_out(200, "validation")),
    "dart": ("gem/dart:1.1.0", _hold_out(200, "validation")),
    "e2e_nlg": ("gem/e2e_nlg:1.1.0", _hold_out(200, "validation")),
    "web_nlg_en": ("gem/web_nlg_en:1.1.0", _hold_out(200, "validation")),
    "para_crawl_enes": (
        "para_crawl/enes:1.2.0",
        {"train": "train[:30000]", "validation": "train[-1200:-1000]", "test": "train[-1000:]"},
    ),
    "wmt14_enfr": ("wmt14_translate/fr-en:1.0.0", WHOLE),
    **{
        f"wmt16_translate_{s}en": (f"wmt16_translate/{s}-en:1.0.0", WHOLE)
        for s in "cs de fi ro ru tr".split()
    },
    "aeslc": ("aeslc:1.0.0", {"train": "train", "validation": "validation[-200:]", "test": "test"}),
    "cnn_dailymail": ("cnn_dailymail:3.4.0", WHOLE),
    "gigaword": ("gigaword:1.2.0", WHOLE),
    "multi_news": ("multi_news:1.0.0", WHOLE),
    "newsroom": ("newsroom:1.0.0", WHOLE),
    **{
        f"opinion_abstracts_{c}": (
            f"opinion_abstracts/{c}:1.0.0",
            {"train": "train[:-600]", "validation": "train[-600:-500]", "test": "train[-500:]"},
        )
        for c in ("idebate", "rotten_tomatoes")
    },
    "samsum": ("samsum:1.0.0", WHOLE),
    "wiki_lingua_english_en": ("gem/wiki_lingua_english_en:1.1.0", WHOLE),
    "xsum": ("huggingface:xsum", WHOLE),
    "ag_news_subset": ("ag_news_subset:1.0.0", _hold_out(200, "test")),
    "cola": ("glue/cola:2.0.0", _hold_out(200, "validation")),
    "trec": ("trec:1.0.0", _hold_out(200, "test")),
    "wic": ("super_glue/wic:1.0.2", _hold_out(200, "validation")),
    "lambada": ("lambada:1.0.0", {"train": "train"}),
    "math_dataset": ("math_dataset/algebra__linear_1d:1.0.0", _hold_out(200, "test")),
    "true_case": (
        PARA_CRAWL_ENDA,
        {"train": "train[:30000]", "validation": "train[30000:30200]", "test": "train[-3000:]"},
    ),
    "fix_punct": (
        PARA_CRAWL_ENDA,
        {
            "train": "train[30200:60200]",
            "validation": "train[60200:60400]",
            "test": "train[-3000:]",
        },
    ),
    "word_segment": (
        PARA_CRAWL_ENDA,
        {
            "train": "train[60400:90400]",
            "validation": "train[90400:90600]",
            "test": "train[-3000:]",
        },
    ),
}
# FLAN versions tensorflow-datasets 4.9 cannot build (or, for xsum, FLAN's Hugging Face
# wrapper): the catalog reads the closest builder and records FLAN's in `flan_tfds`.
READ_ELSEWHERE = {
    "winogrande": "winogrande:1.2.0",
    "multi_news": "multi_news:2.1.0",
    "xsum": "xsum:1.1.0",
}


def as_tfds_numpy(value):
    """A fixture value as `tfds.as_numpy` yields it: bytes, numpy arrays and scalars."""
    if isinstance(value, dict):
        return {k: as_tfds_numpy(v) for k, v in value.items()}
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, list):
        items = [as_tfds_numpy(v) for v in value]
        return np.array(items, dtype=object if not items or isinstance(items[0], bytes) else None)
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, int):
        return np.int64(value)
    if isinstance(value, float):
        return np.float32(value)
    return value


def fixture_fields(name: str) -> dict:
    fields = preprocessors.make_fields(
        catalog.get_entry(name), as_tfds_numpy(FIXTURES[name]["raw"])
    )
    assert fields is not None, f"{name}: the fixture was skipped by preprocessing"
    return fields


def option_header_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line in templates.OPTION_HEADERS]


# ---- Catalog ----------------------------------------------------------------------------


def test_catalog_matches_the_collection_task_list():
    path = os.path.join(shared_data_dir(), "flan_cot_data", "flan_collection_info.csv")
    if not os.path.exists(path):
        pytest.skip(f"shared data not found: {path}")
    with open(path, encoding="utf-8") as f:
        listed = {
            row["Dataset"] for row in csv.DictReader(f) if row["Source"] in ("FLAN", "FLAN/T0")
        }
    ours = set(NAMES) - {"mnli_matched", "mnli_mismatched"} | {"mnli"}
    assert ours == listed  # The collection's table names trivia_qa_wiki_missing too.


def test_the_default_datasets_are_the_71_flan_registers():
    flan = register.list_flan2021_datasets()
    assert set(flan) == set(FLAN_SOURCES) and len(flan) == 71
    assert registry.get_family("flan2021").list_datasets() == flan
    assert [e.name for e in ENTRIES if not e.in_flan] == [NOT_IN_FLAN]
    assert "never" in catalog.get_entry(NOT_IN_FLAN).note


def test_sources_and_splits_are_flans():
    for name, (flan_tfds, flan_splits) in FLAN_SOURCES.items():
        entry = catalog.get_entry(name)
        assert (entry.flan_tfds or entry.tfds, dict(entry.splits)) == (flan_tfds, flan_splits), name
    departures = {e.name: e.tfds for e in ENTRIES if e.flan_tfds is not None}
    assert departures == READ_ELSEWHERE


def test_flan_versions_we_do_not_read_are_not_buildable(tmp_path):
    import tensorflow_datasets as tfds

    for name in READ_ELSEWHERE:
        entry = catalog.get_entry(name)
        assert entry.note, name
        if entry.flan_tfds.startswith("huggingface:"):
            continue  # TFDS's Hugging Face wrapper needs the network to open at all.
        with pytest.raises(AssertionError, match="cannot be loaded at version"):
            tfds.builder(entry.flan_tfds, data_dir=str(tmp_path))


def test_catalog_schema_and_clusters():
    assert len(NAMES) == len(set(NAMES)) == 72
    assert {e.cluster for e in ENTRIES} == {
        "nli",
        "reading_comprehension",
        "reading_comprehension_with_commonsense",
        "closed_book_qa",
        "commonsense",
        "coreference",
        "sentiment",
        "paraphrase",
        "struct_to_text",
        "translation",
        "summarization",
        "misc",
    }
    for entry in ENTRIES:
        assert os.path.exists(entry.template_path), entry.name
        assert entry.preprocessor is None or entry.preprocessor in preprocessors.PREPROCESSORS


def test_catalog_errors_name_file_entry_and_field(tmp_path):
    path = tmp_path / "bad.yaml"

    def load(entry: str):
        path.write_text(
            "datasets:\n  - {name: x, cluster: nli, family: nli, metrics: [accuracy], "
            + entry
            + "}\n"
        )
        return catalog.load_catalog_file(str(path))

    with pytest.raises(catalog.CatalogError, match=r"dataset 0 \(x\).*versioned name") as e:
        load("tfds: glue/rte, splits: {train: train}")
    assert str(path) in str(e.value)
    with pytest.raises(catalog.CatalogError, match=r"unknown keys \['colour'\]"):
        load("tfds: 'a:1.0.0', splits: {validation: v}, colour: red")
    with pytest.raises(catalog.CatalogError, match=r"unknown keys \['train_examples'\]"):
        load("tfds: 'a:1.0.0', splits: {train: train}, train_examples: 3")
    with pytest.raises(
        catalog.CatalogError,
        match=r"bad.yaml: dataset 0 \(x\): field 'splits.validation': 'train\[-200\]' is not "
        r"a TFDS split.*'train\[:-200\]'",
    ):
        load("tfds: 'a:1.0.0', splits: {train: 'train[:-200]', validation: 'train[-200]'}")
    for bad in ("'train[:10%]'", "'train+test'", "'train[a:b]'"):
        with pytest.raises(catalog.CatalogError, match="splits.train"):
            load(f"tfds: 'a:1.0.0', splits: {{train: {bad}}}")
    with pytest.raises(catalog.CatalogError, match="needs a 'note'"):
        load("tfds: 'a:1.0.0', splits: {train: train}, in_flan: false")
    with pytest.raises(catalog.CatalogError, match="needs a 'note'"):
        load("tfds: 'a:1.0.0', splits: {train: train}, flan_tfds: 'a:0.1.0'")
    with pytest.raises(KeyError, match="closest: \\['rte'"):
        catalog.get_entry("rtee")
    path.write_text(
        "datasets:\n  - {name: x, cluster: nli, family: nli, tfds: 'a:1.0.0', "
        "splits: {train: train}, metrics: [acuracy]}\n"
    )
    with pytest.raises(
        catalog.CatalogError,
        match=r"dataset 0 \(x\): field 'metrics': unknown metrics \['acuracy'\]; closest "
        r"known: \['accuracy', 'cot_accuracy'\]",
    ):
        catalog.load_catalog_file(str(path))
    path.write_text(
        "datasets:\n  - {name: x, cluster: nli, family: nli, tfds: 'a:1.0.0', "
        "splits: {train: train}}\n"
    )
    with pytest.raises(catalog.CatalogError, match=r"missing keys \['metrics'\]"):
        catalog.load_catalog_file(str(path))


def test_catalog_metrics_follow_the_task_kind():
    # Independent of the catalog's own choice: what each kind of target calls for.
    for entry in ENTRIES:
        # Options first: ag_news_subset sits in FLAN's summarization cluster but is a
        # classification (its target is a topic label).
        if entry.label is not None or entry.answer_index is not None:
            expected = ("accuracy",)  # the answer is one of the options
        elif entry.cluster == "translation":
            expected = ("bleu",)
        elif entry.cluster in ("summarization", "struct_to_text"):
            expected = ("rouge",)
        elif entry.family in ("reading_qa", "closed_book_qa", "coqa", "record"):
            expected = ("squad",)  # a free-text answer span
        else:
            continue
        assert entry.metrics == expected, entry.name


def tfds_rows(split: str, size: int) -> range:
    """The rows TFDS's own split parser reads for `split` when every split has `size` rows."""
    import tensorflow_datasets as tfds

    sizes = {re.match(r"\w+", split)[0]: types.SimpleNamespace(num_examples=size)}
    (read,) = tfds.core.ReadInstruction.from_spec(split).to_absolute(sizes)
    return range(size)[read.from_ : read.to]


def test_split_slices_read_what_tfds_reads():
    splits = {split for entry in ENTRIES for split in entry.splits.values()}
    assert any("[" in split for split in splits)
    for split in sorted(splits):
        split_slice = tfds_reading.parse_split(split, where="test")
        assert str(split_slice) == split
        for size in (100_000, 3_000, 250, 40):
            try:
                expected = tfds_rows(split, size)
            except ValueError:  # TFDS refuses a slice beyond the split; so do we.
                with pytest.raises(ValueError, match=re.escape(split)):
                    split_slice.indices(size)
                continue
            assert split_slice.indices(size) == expected, (split, size)


def _rows_by_split(entry: catalog.DatasetEntry, size: int) -> dict[str, tuple[str, set[int]]]:
    """our split -> (TFDS split it reads, the rows TFDS reads) when every split has `size`."""
    return {
        ours: (re.sub(r"\[.*", "", split), set(tfds_rows(split, size)))
        for ours, split in entry.splits.items()
    }


# Datasets FLAN samples from a large corpus rather than splitting all of it.
SAMPLED = {"para_crawl_enes", "true_case", "fix_punct", "word_segment"}


def test_hold_out_splits_never_overlap_and_cover_the_split_they_divide():
    size = 100_000
    hold_outs = {}
    for name in register.list_flan2021_datasets():
        by_split = _rows_by_split(catalog.get_entry(name), size)
        for a, b in itertools.combinations(by_split, 2):
            (base_a, rows_a), (base_b, rows_b) = by_split[a], by_split[b]
            assert base_a != base_b or not rows_a & rows_b, (name, a, b)
        train_base = by_split["train"][0]
        divided = [rows for base, rows in by_split.values() if base == train_base]
        if len(divided) > 1 and name not in SAMPLED:
            assert set().union(*divided) == set(range(size)), name
            hold_outs[name] = len(by_split["validation"][1])
    assert set(hold_outs.values()) == {200, 100, 50, 30}
    assert {n for n, held in hold_outs.items() if held != 200} == {
        "coqa",
        "piqa",
        "stsb",
        "opinion_abstracts_idebate",
        "opinion_abstracts_rotten_tomatoes",
        "cb",
        "copa",
        "wsc",
        "wnli",
    }


def test_text_repair_tasks_read_consecutive_para_crawl_slices():
    size = 1_000_000
    tasks = ("true_case", "fix_punct", "word_segment")
    rows = {name: _rows_by_split(catalog.get_entry(name), size) for name in tasks}
    assert {catalog.get_entry(name).tfds for name in tasks} == {PARA_CRAWL_ENDA}
    start = 0
    for name in tasks:  # train, then validation, each slice following the previous one
        for split, length in (("train", 30_000), ("validation", 200)):
            base, read = rows[name][split]
            assert base == "train" and read == set(range(start, start + length)), (name, split)
            start += length
        assert rows[name]["test"] == ("train", set(range(size - 3_000, size)))
    for fields in (FIXTURES[name]["raw"] for name in tasks):
        assert set(fields) == {"en", "da"}  # the English side is the one read


def test_reading_checks_the_slice_against_the_prepared_split(mock_tfds):
    def read(split: str):
        return next(
            tfds_reading.read_tfds_split(
                "super_glue/rte:1.0.2", split, None, dataset="rte", how_to_get=""
            )
        )

    assert read("train[:-200]")
    with pytest.raises(ValueError, match=r"dataset 'rte'.*'train\[:-200'.*not a TFDS split"):
        read("train[:-200")
    with pytest.raises(ValueError, match=r"dataset 'rte'.*no split 'unseen'"):
        read("unseen")
    with pytest.raises(ValueError, match=r"dataset 'rte'.*train\[:-200000\].*100000 examples"):
        read("train[:-200000]")
    with pytest.raises(ValueError, match=r"dataset 'rte'.*train\[5:5\] selects none"):
        read("train[5:5]")


def test_every_dataset_has_a_fixture_with_tfds_feature_names(tmp_path):
    import tensorflow_datasets as tfds

    assert set(FIXTURES) == set(NAMES)
    for entry in ENTRIES:
        features = tfds.builder(entry.tfds, data_dir=str(tmp_path)).info.features
        for key, value in FIXTURES[entry.name]["raw"].items():
            assert key in features, f"{entry.name}: {key} is not a feature of {entry.tfds}"
            if isinstance(value, dict):
                nested = getattr(features[key], "feature", features[key])
                assert set(value) <= set(nested.keys()), f"{entry.name}: {key}"


# ---- Preprocessing ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_preprocessing_gives_the_expected_fields(name):
    fields = fixture_fields(name)
    template_set = register.load_family_templates(catalog.get_entry(name).family)
    assert set(template_set.fields) <= set(fields), name
    for key, value in FIXTURES[name].get("expected", {}).items():
        assert fields[key] == value, f"{name}: field {key}"


def test_unrenderable_rows_are_skipped():
    def fields(name, **overrides):
        raw = dict(FIXTURES[name]["raw"], **overrides)
        return preprocessors.make_fields(catalog.get_entry(name), as_tfds_numpy(raw))

    assert fields("snli", label=-1) is None  # no gold label
    assert fields("story_cloze", label=-1) is None
    assert fields("winogrande", label=-1) is None  # test split
    assert fields("sentiment140", polarity=2) is None  # neutral, not a class here
    assert fields("squad_v1", answers={"text": [], "answer_start": []}) is None
    assert fields("quac", orig_answer={"text": "CANNOTANSWER", "answer_start": 0}) is None
    assert fields("arc_easy", answerKey=4) is None  # key names no listed choice
    assert fields("true_case", en="already lower case") is None
    assert fields("fix_punct", en="no punctuation here") is None
    assert fields("word_segment", en="one") is None
    assert fields("bool_q", answer=True)["answer"] == "yes"


def test_bad_feature_path_names_dataset_and_path():
    entry = catalog.get_entry("rte")
    with pytest.raises(catalog.CatalogError, match=r"'rte'.*'hypothesis'"):
        preprocessors.make_fields(entry, {"premise": b"x", "label": 0})


# ---- Templates: golden renders ----------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_template_renders_with_and_without_options(name):
    fields = fixture_fields(name)
    template_set = register.load_family_templates(catalog.get_entry(name).family)
    types = [t.type for t in template_set.templates]
    assert len(types) >= 10 and types.count("inverted") >= 2, name
    has_options = bool(fields.get("options"))
    for template in template_set.templates:
        for with_options in (False, True):
            for seed in range(4):
                rng = templates.example_rng(seed, f"flan2021__{name}", "train:0")
                out = templates.render(template, fields, with_options=with_options, rng=rng)
                for placeholder in template.placeholders:
                    assert "{" + placeholder + "}" not in out.inputs + out.targets
                assert out.targets.strip(), (name, template.index)
                shows_options = with_options and has_options and template.uses_options
                assert bool(option_header_lines(out.inputs)) == shows_options, (
                    name,
                    template.index,
                    with_options,
                )
                if shows_options:
                    block = out.inputs.split(option_header_lines(out.inputs)[-1], 1)[1]
                    assert all(str(o) in block for o in fields["options"])
                    answer_line = next(
                        line for line in block.splitlines() if line.endswith(" " + fields["answer"])
                    )
                    assert out.targets == fields["answer"] or answer_line.startswith(out.targets)


@pytest.mark.parametrize("name", NAMES)
def test_classification_templates_offer_options_and_inverted_ones_do_not(name):
    fields = fixture_fields(name)
    template_set = register.load_family_templates(catalog.get_entry(name).family)
    for template in template_set.templates:
        if template.type == "inverted":
            assert not template.uses_options, (name, template.index)
        elif fields.get("options"):
            assert template.uses_options, (name, template.index)


@pytest.mark.parametrize("name", NAMES)
def test_inverted_templates_turn_the_task_around(name):
    fields = fixture_fields(name)
    template_set = register.load_family_templates(catalog.get_entry(name).family)
    originals = template_set.of_types(["zs"])
    rng = templates.example_rng(0, "t", "k")
    original_targets = {
        templates.render(t, fields, with_options=False, rng=rng).targets for t in originals
    }
    assert len(original_targets) == 1, name  # all originals predict the same field
    original_target = original_targets.pop()
    input_fields = set().union(*(re.findall(r"\{(\w+)\}", t.inputs) for t in originals))
    input_values = {str(fields[f]) for f in input_fields if f != "options_"}
    for template in template_set.of_types(["inverted"]):
        out = templates.render(template, fields, with_options=False, rng=rng)
        assert original_target in out.inputs, (name, template.index)
        assert out.targets in input_values, (name, template.index)
        assert out.targets != original_target, (name, template.index)


def test_golden_renders():
    def render(name, index, with_options=False, seed=0):
        template = register.load_family_templates(catalog.get_entry(name).family).templates[index]
        return templates.render(
            template,
            fixture_fields(name),
            with_options=with_options,
            rng=templates.example_rng(seed, "golden", "train:0"),
        )

    rte = render("rte", 0)  # super_glue/rte: premise and hypothesis features
    assert rte.inputs == (
        "A dog is running through a field.\n\nBased on the passage above, "
        'is it true that "An animal is moving."?'
    )
    assert rte.targets == "yes"
    back = render("wmt16_translate_deen", 8)
    assert (back.inputs, back.targets) == (
        "Translate to German:\n\nI like reading books.",
        "Ich lese gern Bücher.",
    )
    coqa = render("coqa", 8)
    assert coqa.targets == "1. What did Tom have?\n2. When did he sail?\n3. Who did he visit?"
    opt = render("rte", 0, with_options=True)
    assert opt.inputs.startswith(rte.inputs) and len(opt.inputs) > len(rte.inputs)


# ---- Registry ---------------------------------------------------------------------------


def test_registers_four_variants_per_flan_dataset_idempotently():
    vocabulary = seqio.PassThroughVocabulary(size=128)

    def task_names(datasets):
        return {
            naming.make_task_name(naming.TaskId("flan2021", d, v))
            for d in datasets
            for v in naming.VARIANTS
        }

    names = register.register_flan2021_tasks(vocabulary)
    assert len(names) == 4 * 71 and set(names) == task_names(FLAN_SOURCES)
    assert set(names) <= set(seqio.TaskRegistry.names())
    assert not task_names([NOT_IN_FLAN]) & set(seqio.TaskRegistry.names())
    assert register.register_flan2021_tasks(vocabulary) == names
    named = register.register_flan2021_tasks(vocabulary, datasets=[NOT_IN_FLAN, "rte"])
    assert set(named) == task_names([NOT_IN_FLAN, "rte"])
    for name, splits in (("anli_r1", WHOLE), ("lambada", {"train": "train"})):
        task = seqio.get_mixture_or_task(f"flan2021__{name}__fs_noopt")
        assert set(task.splits) == set(splits)


def test_missing_dataset_fails_when_read_naming_it(tmp_path):
    tfds_paths = data_paths.DataPaths(tfds_data_dir=str(tmp_path))
    message = register.missing_data("xsum", paths=tfds_paths)
    assert "'xsum'" in message and "tfds build xsum:1.1.0" in message
    assert "by hand" in message  # manual-download datasets say so
    rows = register.load_flan2021_split("rte", split="train", paths=tfds_paths)  # nothing read
    with pytest.raises(
        data_paths.MissingDataError, match=r"'rte'.*super_glue/rte:1.0.2.*tfds build"
    ):
        next(rows)
    with pytest.raises(ValueError, match="has splits"):
        next(register.load_flan2021_split("lambada", split="validation", paths=tfds_paths))


@pytest.fixture
def mock_tfds():
    """TFDS examples generated from each builder's real feature spec, no data on disk.

    Every split the catalog reads claims 100,000 rows, so that slices pass the size check;
    the generated data itself has 5 rows per read.
    """
    import tensorflow_datasets as tfds

    names = {re.sub(r"\[.*", "", s) for e in ENTRIES for s in e.splits.values()}
    splits = {n: types.SimpleNamespace(num_examples=100_000, num_bytes=0) for n in names}
    with (
        tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
        mock.patch.object(
            tfds.core.DatasetInfo, "splits", new_callable=mock.PropertyMock, return_value=splits
        ),
    ):
        yield


def test_catalog_feature_paths_fit_generated_tfds_examples(mock_tfds):
    rendered = 0
    for entry in ENTRIES:
        template_set = register.load_family_templates(entry.family)
        for key, fields in itertools.islice(
            register.load_flan2021_split(entry.name, split="train"), 3
        ):
            assert re.fullmatch(r"train:\d+", key)
            for template in template_set.templates:
                templates.render(
                    template,
                    fields,
                    with_options=True,
                    rng=templates.example_rng(0, entry.name, key),
                )
            rendered += 1
    # Random data cannot satisfy every dataset (e.g. CoQA needs as many answers as
    # questions), but almost all must render.
    assert rendered >= 3 * (len(ENTRIES) - 6)


def test_seqio_tasks_render_with_metadata_and_few_shot(mock_tfds):
    vocab_path = os.path.join(shared_data_dir(), "sentencepiece_test_vocab", "sentencepiece.model")
    if not os.path.exists(vocab_path):
        pytest.skip(f"shared data not found: {vocab_path}")
    vocabulary = seqio.SentencePieceVocabulary(vocab_path)
    forget_tasks("flan2021", ["wnli"])  # An earlier test registered them with another vocabulary.
    names = register.register_flan2021_tasks(vocabulary, datasets=["wnli"], seed=3)
    outputs = {}
    for name in names:
        task = seqio.get_mixture_or_task(name)
        dataset = task.get_dataset(
            {"inputs": 4096, "targets": 512}, split="train", shuffle=False, use_cached=False
        )
        examples = list(dataset.as_numpy_iterator())
        assert examples and all(ex["_task_name"].decode() == name for ex in examples)
        assert all(ex["_task_source"] == b"flan2021" for ex in examples)
        assert all(ex["_template_type"] in (b"zs", b"inverted") for ex in examples)
        outputs[naming.parse_task_name(name).variant] = examples
    zero, few = outputs["zs_noopt"], outputs["fs_noopt"]
    # Few-shot drops the examples left with no exemplar (tests/tasks/test_few_shot.py).
    few_keys = [ex["_example_key"] for ex in few]
    assert few_keys == [ex["_example_key"] for ex in zero if ex["_example_key"] in few_keys]
    assert sum(len(ex["inputs_pretokenized"]) for ex in few) > sum(
        len(ex["inputs_pretokenized"]) for ex in zero if ex["_example_key"] in few_keys
    )
