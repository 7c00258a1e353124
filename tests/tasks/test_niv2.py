"""NIv2: catalog against the shared metadata, task JSON loading (NaN, errors), templates."""

import csv
import json
import os
import re

import pytest
import seqio

from flan_jax.tasks import data_paths, few_shot, naming, niv2, sources, templates
from flan_jax.testing.shared_data import shared_data_dir

NIV2_DIR = os.path.join(shared_data_dir(), "super_natural_instructions")
needs_data = pytest.mark.skipif(
    not os.path.isdir(NIV2_DIR), reason=f"shared NIv2 data not found at {NIV2_DIR}"
)


@needs_data
def test_catalog_matches_shared_metadata():
    with open(os.path.join(NIV2_DIR, "niv2_task_metadata_from_flan.tsv")) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    by_name = {
        niv2.registration.make_safe_name(r["task_name_ni"] or r["task_name_flan"]): r for r in rows
    }
    assert len(by_name) == len(rows) == 1613
    catalog = niv2.load_niv2_catalog()
    assert len(catalog) == len({t.name for t in catalog}) == 1556
    assert not {t.number for t in catalog} & niv2.MMLU_TASK_NUMBERS
    left_out = {int(re.match(r"task(\d+)", n)[1]) for n in set(by_name) - {t.name for t in catalog}}
    assert left_out == set(niv2.MMLU_TASK_NUMBERS)
    for task in catalog:
        row = by_name[task.name]
        assert task.number == int(re.match(r"task(\d+)", task.name)[1])
        assert (task.category, task.source_dataset, task.languages, task.split) == (
            row["category"],
            row["source_dataset"],
            row["languages"],
            row["default_split"],
        )
        assert task.ni_name == row["task_name_ni"]


@needs_data
def test_real_task_files_load_including_bare_nan():
    paths = data_paths.DataPaths(source_dirs={"niv2": NIV2_DIR})
    for name, count in [
        ("task1149_item_check_edible", 119),
        ("task062_bigbench_repeat_copy_logic", 29),
    ]:
        examples = list(niv2.load_niv2_split(name, split="train", paths=paths))
        assert len(examples) == count
        for template in niv2.load_niv2_templates(False).templates:
            for key, fields in examples:
                out = templates.render(
                    template, fields, with_options=True, rng=templates.example_rng(0, name, key)
                )
                assert fields["input"] in out.inputs and out.targets == fields["answer"]


def _write(tmp_path, data):
    path = tmp_path / "tasks" / "task001_quoref_question_generation.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


GOOD = {
    "Definition": ["Write a question."],
    "Positive Examples": [
        {"input": "P1", "output": "Q1", "explanation": "E1"},
        {"input": "P2", "output": "Q2", "explanation": "E2"},
        {"input": "P3", "output": "Q3"},
    ],
    "Instances": [{"id": "i0", "input": "Passage", "output": ["Question?", "Other?"]}],
}


@pytest.mark.parametrize(
    "data, message",
    [
        ('{"Definition": [1,', r"line 1 column"),
        (dict(GOOD, Definition="text"), r"field 'Definition' must be a list"),
        ({k: v for k, v in GOOD.items() if k != "Instances"}, r"missing field 'Instances'"),
        (
            dict(GOOD, Instances=[{"id": "x", "input": "a"}]),
            r"Instances\[0\]: missing field 'output'",
        ),
    ],
)
def test_malformed_task_files_name_file_and_field(tmp_path, data, message):
    path = _write(tmp_path, data)
    with pytest.raises(niv2.Niv2FormatError, match=message) as info:
        niv2.read_task_file(path)
    assert path in str(info.value)


def _niv2_spec(forms, budget=10_000):
    builder = niv2.registration.Niv2FewShot(
        count_tokens=lambda text: len(text.split()), max_input_tokens=budget, forms=forms
    )
    task_id = naming.TaskId("niv2", "task001_quoref_question_generation", "fs_opt")
    return sources.RenderSpec(task_id, niv2.load_niv2_templates(True).templates, few_shot=builder)


def test_fixture_task_zero_and_few_shot(tmp_path):
    _write(tmp_path, GOOD)
    paths = data_paths.DataPaths(source_dirs={"niv2": str(tmp_path)})
    [(key, zs)] = niv2.load_niv2_split(
        "task001_quoref_question_generation", split="train", paths=paths
    )
    assert key == "train:i0" and zs["answer"] == "Question?" and "positive_examples" not in zs
    path = niv2.find_task_file("task001_quoref_question_generation", paths)
    [(_, fs)] = niv2.read_niv2_examples(path, with_positive_examples=True)
    assert [p["explanation"] for p in fs["positive_examples"]] == ["E1", "E2", ""]
    fs_templates = niv2.load_niv2_templates(True).templates
    inline = [t for t in fs_templates if "ex_input" in t.placeholders]
    assert len(inline) == 6 and len(fs_templates) == 12
    # Template mix: the first positive example and its explanation, inline, every template.
    outs = [
        sources.render_example(_niv2_spec(("template_mix",)), f"train:{i}", fs) for i in range(40)
    ]
    assert {o["_template_idx"] for o in outs} == {t.index for t in inline}
    for out in outs:
        text = out["inputs"]
        assert text.index("Write a question.") < text.index("P1") < text.index("Q1")
        assert text.index("Q1") < text.index("E1") < text.index("Passage")
        assert "P2" not in text and out["targets"] == "Question?"
    # 0 to 10: the definition, then two positive examples (no explanation), each through
    # the instance's own pair template and its delimiters, then the instance.
    for i in range(40):
        out = sources.render_example(_niv2_spec(("zero_to_ten",)), f"train:{i}", fs)
        template = fs_templates[out["_template_idx"]]
        assert template not in inline
        delimiter, separator = few_shot.TEMPLATE_DELIMITERS[template.index % 6]
        rng = templates.example_rng(0, "t", "k")
        query = templates.render(template, fs, with_options=True, rng=rng).inputs
        shown = re.findall(r"P(\d)", out["inputs"])
        shots = []
        for number in shown:
            pair = {"input": f"P{number}", "answer": f"Q{number}"}
            alone = templates.render(template, pair, with_options=True, rng=rng)
            shots.append(alone.inputs + delimiter + alone.targets)
        assert out["inputs"] == separator.join(["Write a question.", *shots, query])
        assert len(set(shown)) == 2 and "E1" not in out["inputs"]
    # A budget with room for the definition and the instance only: nothing left, dropped.
    tight = len("Write a question.".split()) + 4
    for form in few_shot.FEW_SHOT_FORMS:
        assert sources.render_example(_niv2_spec((form,), budget=tight), "train:0", fs) is None
    # A task without positive examples drops its few-shot instances.
    bare = dict(fs, positive_examples=())
    for form in few_shot.FEW_SHOT_FORMS:
        assert sources.render_example(_niv2_spec((form,)), "train:0", bare) is None


def test_missing_task_file_and_registration_counts(tmp_path):
    paths = data_paths.DataPaths(source_dirs={"niv2": str(tmp_path)})
    with pytest.raises(data_paths.MissingDataError, match="task002_quoref_answer_generation"):
        list(niv2.load_niv2_split("task002_quoref_answer_generation", split="train", paths=paths))
    names = niv2.register_niv2_tasks(seqio.PassThroughVocabulary(10), paths=paths)
    assert len(names) == 2 * 1556
    assert {n.rsplit("__", 1)[1] for n in names} == {"zs_opt", "fs_opt"}


@needs_data
def test_real_task_few_shot_shows_its_positive_examples_and_explanation():
    paths = data_paths.DataPaths(source_dirs={"niv2": NIV2_DIR})
    path = niv2.find_task_file("task062_bigbench_repeat_copy_logic", paths)
    data = niv2.read_task_file(path)
    first = data["Positive Examples"][0]
    examples = list(niv2.read_niv2_examples(path, with_positive_examples=True))
    mix = [sources.render_example(_niv2_spec(("template_mix",)), k, f) for k, f in examples]
    for out in mix:
        for part in (first["input"], first["output"], first["explanation"]):
            assert part in out["inputs"]
    inputs = {p["input"] for p in data["Positive Examples"]}
    for key, fields in examples:
        out = sources.render_example(_niv2_spec(("zero_to_ten",)), key, fields)
        assert sum(text in out["inputs"] for text in inputs) >= 2
        assert out["inputs"].startswith(fields["definition"])
