"""CoT tasks: the real Flan CoT TSVs render through every template, parseably."""

import os

import pytest
import seqio

from flan_jax.tasks import cot, data_paths, templates
from flan_jax.testing.shared_data import shared_data_dir

COT_DIR = os.path.join(shared_data_dir(), "flan_cot_data")
needs_data = pytest.mark.skipif(
    not os.path.isdir(COT_DIR), reason=f"shared CoT data not found at {COT_DIR}"
)
LOCAL = ("aqua", "creak", "ecqa", "gsm8k", "qasc", "sensemaking", "strategyqa")


def _render(template, fields, key):
    return templates.render(
        template, fields, with_options=True, rng=templates.example_rng(0, "cot", key)
    )


@needs_data
@pytest.mark.parametrize("dataset", LOCAL)
def test_real_tsv_renders_through_every_template(dataset):
    paths = data_paths.DataPaths(source_dirs={"cot": COT_DIR})
    examples = list(cot.load_cot_split(dataset, split="train", paths=paths))
    assert len(examples) > 1000
    originals = cot.load_cot_templates(False).templates
    inverted = cot.load_cot_templates(True).templates
    for key, fields in examples:
        assert "\\n" not in fields["question"]
        for template in originals:
            out = _render(template, fields, key)
            assert cot.parse_cot_answer(out.targets) == fields["answer"]
            assert fields["question"] in out.inputs and "{" + "question}" not in out.inputs
        for template in inverted:
            out = _render(template, fields, key)
            assert out.targets == fields["question"]
            assert fields["question"] not in out.inputs
            assert fields["answer"] in out.inputs


def test_fixture_examples_render_and_invert(tmp_path):
    (tmp_path / "gsm8k_train.tsv").write_text(
        "What is 2 + 3?\\nShow work.\t5\tTwo plus three is five\n"
        "Is ice cold?\tyes\tIce is frozen water.\n"
    )
    paths = data_paths.DataPaths(source_dirs={"cot": str(tmp_path)})
    examples = list(cot.load_cot_split("gsm8k", split="train", paths=paths))
    assert examples[0] == (
        "train:0",
        {
            "question": "What is 2 + 3?\nShow work.",
            "answer": "5",
            "rationale": "Two plus three is five.",
        },
    )
    for template in cot.load_cot_templates(False).templates:
        out = _render(template, examples[0][1], "k")
        assert out.targets.endswith("So the answer is 5.")
    for template in cot.load_cot_templates(True).templates:
        assert _render(template, examples[1][1], "k").targets == "Is ice cold?"


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "qasc_train.tsv"
    path.write_text("q\ta\tr\nonly two\tcolumns\n")
    with pytest.raises(cot.registration.CotFormatError, match=r"qasc_train.tsv:2: expected 3"):
        list(cot.read_cot_tsv(str(path)))


def test_missing_dataset_names_it_and_how_to_get_it(tmp_path):
    paths = data_paths.DataPaths(source_dirs={"cot": str(tmp_path)})
    with pytest.raises(data_paths.MissingDataError, match=r"'esnli'.*esnli_train.tsv.*cot_data"):
        list(cot.load_cot_split("esnli", split="train", paths=paths))


def test_parse_cot_answer():
    assert cot.parse_cot_answer("Because. So the answer is (B).") == "(B)"
    assert cot.parse_cot_answer("x\nSo the answer is 3.5.") == "3.5"
    assert cot.parse_cot_answer("no answer here") is None


@needs_data
def test_registered_tasks_and_few_shot_budget():
    vocab = seqio.PassThroughVocabulary(100)  # encode() keeps characters: 1 "token" each.
    paths = data_paths.DataPaths(source_dirs={"cot": COT_DIR})
    names = cot.register_cot_tasks(vocab, paths=paths)
    assert len(names) == 9 * 2 * 2 and len(set(names)) == len(names)
    assert cot.register_cot_tasks(vocab, paths=paths) == names  # idempotent
    task = seqio.get_mixture_or_task("cot__creak__fs_opt")
    for ex in task.source.get_dataset("train").take(5).as_numpy_iterator():
        assert len(ex["inputs"].decode()) <= 1920
        assert ex["_template_type"] == b"cot"
        assert cot.parse_cot_answer(ex["targets"].decode()) in ("yes", "no")
