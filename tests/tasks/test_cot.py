"""CoT tasks: every template of every CoT file renders its dataset's rows, parseably."""

import os

import pytest
import seqio

from flan_jax.evaluation import answers
from flan_jax.tasks import cot, data_paths, templates
from flan_jax.testing.shared_data import shared_data_dir
from flan_jax.testing.tasks import forget_tasks

COT_DIR = os.path.join(shared_data_dir(), "flan_cot_data")
needs_data = pytest.mark.skipif(
    not os.path.isdir(COT_DIR), reason=f"shared CoT data not found at {COT_DIR}"
)
LOCAL = ("aqua", "creak", "ecqa", "gsm8k", "qasc", "sensemaking", "strategyqa")
# The Flan collection's template counts: about 10 per CoT dataset, 15 for the "stream"
# datasets aqua and qed, 18 shared inverted ones.
ZERO_SHOT_COUNTS = {d: 15 if d in ("aqua", "qed") else 10 for d in cot.DATASETS}
SHARED_COUNTS = {"cot_inverted.yaml": 18, "cot_few_shot.yaml": 10, "cot_inverted_few_shot.yaml": 8}
PLACEHOLDERS = ("{question}", "{rationale}", "{answer}", "{options_}")

# One or more rows per dataset in the dataset's own shape, written for these tests (the
# eSNLI and QED files are not in the shared data). The rationale of the aqua row has no
# final period, as AQuA's equations often do not.
FIXTURE_ROWS = {
    "gsm8k": [
        (
            "A baker makes 36 rolls and sells 3 bags of 8 rolls. How many rolls are left?",
            "12",
            "The bags hold 3 x 8 = 24 rolls. That leaves 36 - 24 = 12 rolls.",
        )
    ],
    "strategyqa": [
        (
            "Could a goldfish survive a week in a glass of milk?",
            "no",
            "Goldfish need clean, oxygenated fresh water. Milk does not supply oxygen to fish.",
        )
    ],
    "creak": [
        (
            'Is the following statement true?\n"The Pacific is the largest ocean on Earth."'
            "\nOptions:\n- yes\n- no",
            "yes",
            "The Pacific covers more area than any other ocean.",
        )
    ],
    "qasc": [
        (
            "What do plants need to make food?\nOptions:\n- (A) sand\n- (B) sunlight\n"
            "- (C) plastic\n- (D) noise\n- (E) metal\n- (F) darkness\n- (G) glass\n- (H) wind",
            "(B)",
            "Plants make food by photosynthesis. Photosynthesis needs sunlight. Plants need "
            "sunlight to make food.",
        )
    ],
    "esnli": [
        (
            'Premise: "Two children are building a sandcastle on the beach."\nHypothesis: '
            '"Kids are playing outside."\nIs the hypothesis entailed by the premise?\n'
            "Options:\n- yes\n- it is not possible to tell\n- no",
            "yes",
            "Children are kids, and building a sandcastle on a beach is playing outside.",
        ),
        (
            'Given the sentence "A man in a red jacket reads a newspaper on a bench." can we '
            'conclude that "The man is asleep in his bed."?\nOptions:\n- yes\n'
            "- it is not possible to tell\n- no",
            "no",
            "A man cannot read on a bench and sleep in his bed at the same time.",
        ),
        (
            'Test for natural language inference.\nPremise: "A woman carries a basket through '
            'a market."\nHypothesis: "The woman is shopping for vegetables."\nIs the '
            "hypothesis entailed by the premise?\nOptions:\n- yes\n- no\n"
            "- it is not possible to tell",
            "it is not possible to tell",
            "Carrying a basket through a market does not say what she is buying.",
        ),
    ],
    "ecqa": [
        (
            "Where would you keep milk so it stays cold?\nOptions:\n- oven\n- refrigerator\n"
            "- cupboard\n- mailbox\n- garden",
            "refrigerator",
            "A refrigerator keeps food cold. Milk must stay cold to stay fresh.",
        )
    ],
    "sensemaking": [
        (
            "Which of these sentences is against common sense?\nOptions:\n"
            '- Sentence A: "She dried her hair with a towel."\n'
            '- Sentence B: "She dried her hair with a bucket of water."',
            "Sentence B",
            "A bucket of water makes hair wetter, not drier.",
        )
    ],
    "aqua": [
        (
            "If 3x + 5 = 20, what is x?\nOptions:\n(A) 3\n(B) 4\n(C) 5\n(D) 6\n(E) 7",
            "(C)",
            "3x = 15\\nx = 5",
        )
    ],
    "qed": [
        (
            "Passage: The Harbor Bridge opened to traffic in 1932 after eight years of "
            "construction.\n\nQuestion: Based on this passage, when did the Harbor Bridge open?",
            "1932",
            "The relevant sentence in the passage is: The Harbor Bridge opened to traffic in "
            "1932 after eight years of construction.",
        ),
        (
            "Passage: Maple Hollow is a town in the novel The Quiet Orchard, written by Elena "
            "Marsh in 1987.\n\nQuestion: who wrote the quiet orchard?",
            "Elena Marsh",
            "To answer this, note that The Quiet Orchard was written by Elena Marsh.",
        ),
    ],
}


def _write_fixture_tsv(directory, dataset):
    rows = FIXTURE_ROWS[dataset]
    lines = ["\t".join(column.replace("\n", "\\n") for column in row) for row in rows]
    (directory / f"{dataset}_train.tsv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def fixture_paths(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cot")
    for dataset in cot.DATASETS:
        _write_fixture_tsv(directory, dataset)
    return data_paths.DataPaths(source_dirs={"cot": str(directory)})


def _render(template, fields, key):
    return templates.render(
        template, fields, with_options=True, rng=templates.example_rng(0, "cot", key)
    )


def _template_sets(dataset):
    """(set, is inverted) for every set `dataset`'s tasks use."""
    return [
        (cot.load_cot_templates(dataset, inverted=inverted, few_shot=few_shot), inverted)
        for inverted in (False, True)
        for few_shot in (False, True)
    ]


def _check_renders(template_set, inverted, key, fields):
    for template in template_set.templates:
        out = _render(template, fields, key)
        where = f"{template_set.path} template {template.index} on {key}"
        assert not any(p in out.inputs + out.targets for p in PLACEHOLDERS), where
        if inverted:
            assert out.targets == fields["question"], where
            assert fields["question"] not in out.inputs, where
            assert fields["answer"] in out.inputs and fields["rationale"] in out.inputs, where
        else:
            assert fields["question"] in out.inputs, where
            assert out.targets.startswith(fields["rationale"]), where
            assert cot.parse_cot_answer(out.targets) == fields["answer"], where
            # The evaluation's own answer extraction reads the same answer back.
            span = answers.extract_answer_span(out.targets)
            assert answers.answer_equals(span, fields["answer"]), where


@pytest.mark.parametrize("dataset", cot.DATASETS)
def test_every_template_renders_the_fixture_rows(dataset, fixture_paths):
    rows = list(cot.load_cot_split(dataset, split="train", paths=fixture_paths))
    assert len(rows) == len(FIXTURE_ROWS[dataset])
    for template_set, inverted in _template_sets(dataset):
        for key, fields in rows:
            _check_renders(template_set, inverted, key, fields)


@needs_data
@pytest.mark.parametrize("dataset", LOCAL)
def test_every_template_renders_real_rows(dataset):
    """The first rows of each real file, through every template its tasks use."""
    paths = data_paths.DataPaths(source_dirs={"cot": COT_DIR})
    rows = list(cot.load_cot_split(dataset, split="train", paths=paths))[:3]
    for template_set, inverted in _template_sets(dataset):
        for key, fields in rows:
            _check_renders(template_set, inverted, key, fields)


@needs_data
@pytest.mark.parametrize("dataset", LOCAL)
def test_whole_real_tsv_answers_parse_back(dataset):
    """Every real row, through its dataset's zero-shot templates (one per row, in turn)."""
    paths = data_paths.DataPaths(source_dirs={"cot": COT_DIR})
    examples = list(cot.load_cot_split(dataset, split="train", paths=paths))
    assert len(examples) > 1000
    originals = cot.load_cot_templates(dataset).templates
    inverted = cot.load_cot_templates(dataset, inverted=True).templates
    for i, (key, fields) in enumerate(examples):
        assert "\\n" not in fields["question"]
        out = _render(originals[i % len(originals)], fields, key)
        assert cot.parse_cot_answer(out.targets) == fields["answer"], key
        back = _render(inverted[i % len(inverted)], fields, key)
        assert back.targets == fields["question"] and fields["question"] not in back.inputs


def test_golden_renders(fixture_paths):
    ((key, fields),) = cot.load_cot_split("gsm8k", split="train", paths=fixture_paths)
    question = FIXTURE_ROWS["gsm8k"][0][0]
    rationale = "The bags hold 3 x 8 = 24 rolls. That leaves 36 - 24 = 12 rolls."
    zero_shot = _render(cot.load_cot_templates("gsm8k").templates[0], fields, key)
    assert zero_shot.inputs == (
        f"{question}\nWork out the arithmetic one step at a time before giving the number."
    )
    assert zero_shot.targets == f"{rationale} So the answer is 12."
    few_shot = _render(cot.load_cot_templates("gsm8k", few_shot=True).templates[0], fields, key)
    assert (few_shot.inputs, few_shot.targets) == (
        f"Q: {question}\nA:",
        f"{rationale} So the answer is 12.",
    )
    inverted = _render(cot.load_cot_templates("gsm8k", inverted=True).templates[6], fields, key)
    assert (inverted.inputs, inverted.targets) == (
        f"Answer: 12\nWhy: {rationale}\n\nQuestion:",
        question,
    )
    ((_, aqua),) = cot.load_cot_split("aqua", split="train", paths=fixture_paths)
    assert aqua["rationale"] == "3x = 15\nx = 5."  # The loader ends the sentence.


def _cot_files():
    directory = os.path.dirname(cot.cot_template_file("gsm8k", inverted=False, few_shot=False))
    names = [f"{d}.yaml" for d in cot.DATASETS] + list(SHARED_COUNTS)
    return [os.path.join(directory, name) for name in names]


def test_template_counts_and_file_choice():
    for dataset, count in ZERO_SHOT_COUNTS.items():
        template_set = cot.load_cot_templates(dataset)
        assert os.path.basename(template_set.path) == f"{dataset}.yaml"
        assert len(template_set.templates) == count, dataset
        assert {t.type for t in template_set.templates} == {"cot"}
        for (inverted, few_shot), name in {
            (True, False): "cot_inverted.yaml",
            (False, True): "cot_few_shot.yaml",
            (True, True): "cot_inverted_few_shot.yaml",
        }.items():
            shared = cot.load_cot_templates(dataset, inverted=inverted, few_shot=few_shot)
            assert os.path.basename(shared.path) == name
            assert len(shared.templates) == SHARED_COUNTS[name]
            assert {t.type for t in shared.templates} == {"cot_inverted" if inverted else "cot"}
    with pytest.raises(ValueError, match=r"Unknown CoT dataset 'gsm8x'"):
        cot.cot_template_file("gsm8x", inverted=False, few_shot=False)


@pytest.mark.parametrize("path", _cot_files(), ids=os.path.basename)
def test_no_two_templates_of_a_file_alike(path):
    template_set = templates.load_template_set(path)
    assert template_set.fields == ("question", "rationale", "answer")
    inputs = [t.inputs for t in template_set.templates]
    assert len(set(inputs)) == len(inputs), path
    pairs = [(t.inputs, t.targets) for t in template_set.templates]
    assert len(set(pairs)) == len(pairs), path


def test_a_broken_template_file_is_named(tmp_path, monkeypatch):
    (tmp_path / "gsm8k.yaml").write_text(
        "family: cot_gsm8k\nfields: [question, rationale, answer]\n"
        "templates:\n  - type: cot\n    inputs: '{question} {rationail}'\n    targets: x\n"
    )
    monkeypatch.setattr(cot.registration, "_TEMPLATE_DIR", str(tmp_path))
    cot.registration._load_template_file.cache_clear()
    try:
        with pytest.raises(
            templates.TemplateError, match=r"gsm8k.yaml: template 0: placeholders \['rationail'\]"
        ):
            cot.load_cot_templates("gsm8k")
    finally:
        cot.registration._load_template_file.cache_clear()


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "qasc_train.tsv"
    path.write_text("q\ta\tr\nonly two\tcolumns\n")
    with pytest.raises(cot.registration.CotFormatError, match=r"qasc_train.tsv:2: expected 3"):
        list(cot.read_cot_tsv(str(path)))


def test_missing_dataset_names_it_and_how_to_get_it(tmp_path):
    paths = data_paths.DataPaths(source_dirs={"cot": str(tmp_path)})
    with pytest.raises(data_paths.MissingDataError, match=r"'esnli'.*esnli_train.tsv.*cot_data"):
        list(cot.load_cot_split("esnli", split="train", paths=paths))


@pytest.mark.parametrize(
    "target, answer",
    [
        ("Because. So the answer is (B).", "(B)"),
        ("x\nSo the answer is 3.5.", "3.5"),
        (
            "Two steps.\nThe final answer is it is not possible to tell.",
            "it is not possible to tell",
        ),
        ("It is in the capital. Hence the answer is Washington D.C..", "Washington D.C."),
        # A rationale that says "the answer is" early: the last phrase counts.
        ("I think the answer is 4 at first. 2 + 3 = 5. Thus the final answer is 5.", "5"),
        ("no answer here", None),
        ("So the answer is 5. Then something else", None),
    ],
)
def test_parse_cot_answer(target, answer):
    assert cot.parse_cot_answer(target) == answer


def test_registration_picks_each_variants_templates(fixture_paths):
    vocab = seqio.PassThroughVocabulary(100)
    names = cot.register_cot_tasks(vocab, datasets=["qed"], paths=fixture_paths)
    assert names == [
        "cot__qed__zs_opt",
        "cot__qed__fs_opt",
        "cot__qed__inverted__zs_opt",
        "cot__qed__inverted__fs_opt",
    ]
    expected = [
        cot.load_cot_templates("qed"),
        cot.load_cot_templates("qed", few_shot=True),
        cot.load_cot_templates("qed", inverted=True),
        cot.load_cot_templates("qed", inverted=True, few_shot=True),
    ]
    for name, template_set in zip(names, expected, strict=True):
        spec = seqio.get_mixture_or_task(name).source.render_spec
        assert spec.templates == template_set.templates, name


@needs_data
def test_registered_tasks_and_few_shot_budget():
    vocab = seqio.PassThroughVocabulary(100)  # encode() keeps characters: 1 "token" each.
    paths = data_paths.DataPaths(source_dirs={"cot": COT_DIR})
    forget_tasks("cot")  # Registered earlier in this process without these paths.
    names = cot.register_cot_tasks(vocab, paths=paths)
    assert len(names) == 9 * 2 * 2 and len(set(names)) == len(names)
    assert cot.register_cot_tasks(vocab, paths=paths) == names  # idempotent
    task = seqio.get_mixture_or_task("cot__creak__fs_opt")
    few_shot_templates = cot.load_cot_templates("creak", few_shot=True).templates
    for ex in task.source.get_dataset("train").take(5).as_numpy_iterator():
        assert len(ex["inputs"].decode()) <= 1920
        assert ex["_template_type"] == b"cot"
        # The prompt ends as the drawn few-shot template's input does ("...\nA:").
        template = few_shot_templates[ex["_template_idx"]]
        assert ex["inputs"].decode().endswith(template.inputs.rsplit("}", 1)[1])
        assert cot.parse_cot_answer(ex["targets"].decode()) in ("yes", "no")
