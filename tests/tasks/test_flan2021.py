"""The Flan 2021 submixture: catalog, preprocessing, every template, and the registry.

Golden tests render every template of every family on one hand-written example per dataset
(tests/tasks/flan2021_fixtures.yaml, shaped like the dataset's TFDS features); the fixtures'
feature names are checked against the installed TFDS builders, and the catalog's feature
paths against TFDS-generated examples (`tfds.testing.mock_data`), so none of this needs
prepared data.
"""

import csv
import itertools
import os
import re
from unittest import mock

import numpy as np
import pytest
import seqio
import yaml

from flan_jax.tasks import data_paths, naming, templates
from flan_jax.tasks.flan2021 import catalog, preprocessors, register
from flan_jax.testing.shared_data import shared_data_dir

FIXTURES = yaml.safe_load(
    open(os.path.join(os.path.dirname(__file__), "flan2021_fixtures.yaml"), encoding="utf-8")
)
ENTRIES = catalog.load_catalog()
NAMES = [entry.name for entry in ENTRIES]


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
    assert ours == listed


def test_catalog_schema_and_clusters():
    assert len(NAMES) == len(set(NAMES)) == 72
    assert {e.cluster for e in ENTRIES} == {
        "nli",
        "reading_comprehension",
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
    path.write_text(
        "datasets:\n  - {name: x, cluster: nli, family: nli, tfds: glue/rte,"
        " splits: {train: train}, train_examples: 3}\n"
    )
    with pytest.raises(catalog.CatalogError, match=r"dataset 0 \(x\).*versioned name") as e:
        catalog.load_catalog_file(str(path))
    assert str(path) in str(e.value)
    path.write_text(
        "datasets:\n  - {name: x, cluster: nli, family: nli, tfds: 'a:1.0.0',"
        " splits: {validation: v}, train_examples: 3, colour: red}\n"
    )
    with pytest.raises(catalog.CatalogError, match=r"unknown keys \['colour'\]"):
        catalog.load_catalog_file(str(path))
    with pytest.raises(KeyError, match="closest: \\['rte'"):
        catalog.get_entry("rtee")


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
    assert fields("true_case", text="already lower case") is None


def test_bad_feature_path_names_dataset_and_path():
    entry = catalog.get_entry("rte")
    with pytest.raises(catalog.CatalogError, match=r"'rte'.*'sentence1'"):
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

    rte = render("rte", 0)
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


def test_registers_four_variants_per_dataset_idempotently():
    vocabulary = seqio.PassThroughVocabulary(size=128)
    names = register.register_flan2021_tasks(vocabulary)
    expected = {
        naming.make_task_name(naming.TaskId("flan2021", d, v))
        for d in NAMES
        for v in naming.VARIANTS
    }
    assert len(names) == 4 * len(NAMES) and set(names) == expected
    assert set(expected) <= set(seqio.TaskRegistry.names())
    assert register.register_flan2021_tasks(vocabulary) == names
    task = seqio.get_mixture_or_task("flan2021__anli_r1__zs_noopt")
    assert task.num_input_examples("train") == 16946
    # Few-shot drops examples left with no exemplar, so it claims no count.
    fs_task = seqio.get_mixture_or_task("flan2021__anli_r1__fs_noopt")
    assert fs_task.num_input_examples("train") is None
    assert set(task.splits) == {"train", "validation", "test"}


def test_missing_dataset_fails_when_read_naming_it(tmp_path):
    tfds_paths = data_paths.DataPaths(tfds_data_dir=str(tmp_path))
    message = register.missing_data("xsum", paths=tfds_paths)
    assert "'xsum'" in message and "tfds build xsum:1.1.0" in message
    assert "by hand" in message  # manual-download datasets say so
    rows = register.load_flan2021_split("rte", split="train", paths=tfds_paths)  # nothing read
    with pytest.raises(data_paths.MissingDataError, match=r"'rte'.*glue/rte:2.0.0.*tfds build"):
        next(rows)
    with pytest.raises(ValueError, match="has splits"):
        next(register.load_flan2021_split("rte", split="test", paths=tfds_paths))


@pytest.fixture
def mock_tfds():
    """TFDS examples generated from each builder's real feature spec, no data on disk."""
    import tensorflow_datasets as tfds

    with (
        tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
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
    for variant in naming.VARIANTS:  # an earlier test registered them with another vocabulary
        seqio.TaskRegistry.remove(naming.make_task_name(naming.TaskId("flan2021", "wnli", variant)))
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
