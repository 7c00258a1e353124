"""T0-SF: the promptsource loader and sandboxed renderer, over the whole shared archive."""

import collections
import csv
import json
import os
import re
import tarfile

import jinja2.meta
import numpy as np
import pytest
import seqio

from flan_jax.tasks import data_paths, sources, t0, templates
from flan_jax.tasks.t0 import promptsource
from flan_jax.testing.shared_data import shared_data_dir
from flan_jax.testing.tasks import forget_tasks

ARCHIVE = os.path.join(
    shared_data_dir(), "promptsource_templates", "promptsource-0.2.3-templates.tar.gz"
)
CATALOG_CSV = os.path.join(shared_data_dir(), "flan_cot_data", "flan_collection_info.csv")
needs_archive = pytest.mark.skipif(
    not os.path.exists(ARCHIVE), reason=f"shared promptsource archive not found at {ARCHIVE}"
)


@pytest.fixture(scope="module")
def template_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("promptsource")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(root, filter="data")
    return str(root)


class Synthetic(str):
    """A stand-in field value that works as text, list, mapping or number."""

    def __new__(cls, path):
        obj = str.__new__(cls, path.replace(".", " ").replace("[", " ").replace("]", ""))
        obj.path = path
        return obj

    def __getattr__(self, name):
        if name.startswith("_") or name in ("unsafe_callable", "alters_data"):
            raise AttributeError(name)
        return Synthetic(f"{self.path}.{name}")

    def __getitem__(self, key):
        return str(self)[key] if isinstance(key, slice) else Synthetic(f"{self.path}[{key}]")

    def __iter__(self):
        return iter([Synthetic(f"{self.path}[0]"), Synthetic(f"{self.path}[1]")])

    def __len__(self):
        return 2

    def __index__(self):
        return 0

    def __int__(self):
        return 1

    def __float__(self):
        return 1.0

    def __round__(self, ndigits=None):
        return 1

    def __call__(self, *args, **kwargs):
        return self

    def index(self, *args):
        return 0

    # Arithmetic and ordering against numbers treat the value as 1.
    def __add__(self, other):
        return str(self) + other if isinstance(other, str) else 1 + other

    def __radd__(self, other):
        return other + str(self) if isinstance(other, str) else other + 1

    def __sub__(self, other):
        return 1 - other

    def __rsub__(self, other):
        return other - 1

    def __truediv__(self, other):
        return 1 / other

    def __lt__(self, other):
        return str.__lt__(self, other) if isinstance(other, str) else 1 < other

    def __gt__(self, other):
        return str.__gt__(self, other) if isinstance(other, str) else 1 > other

    def __le__(self, other):
        return str.__le__(self, other) if isinstance(other, str) else 1 <= other

    def __ge__(self, other):
        return str.__ge__(self, other) if isinstance(other, str) else 1 >= other

    __hash__ = str.__hash__


def synthetic_example(prompt):
    env = promptsource._environment()
    names = set()
    for source in (prompt.jinja, prompt.answer_choices or ""):
        names |= jinja2.meta.find_undeclared_variables(env.parse(source))
    return {n: Synthetic(n) for n in names - {"answer_choices"} - set(env.globals)}


@needs_archive
def test_every_archive_prompt_loads_and_renders_on_a_synthetic_example(template_root):
    tree = promptsource.read_template_tree(template_root)
    prompts = [p for ps in tree.values() for p in ps]
    assert len(tree) == 279 and len(prompts) == 2085
    rendered, reasons = 0, collections.Counter()
    for prompt in prompts:
        promptsource._compile(prompt.jinja)  # Every prompt parses: no syntax or filter gaps.
        try:
            out = promptsource.render_prompt(
                prompt, synthetic_example(prompt), np.random.default_rng(0)
            )
        except promptsource.PromptTemplateError as e:
            reasons[str(e).split(": ", 2)[-1].split(":")[0]] += 1
            continue
        if out is None:
            reasons["no target (the prompt guards on real values)"] += 1
            continue
        assert out.inputs and out.targets and "|||" not in out.inputs
        rendered += 1
    print(f"\nrendered {rendered} of {len(prompts)}; not renderable on synthetic values:")
    for reason, count in reasons.most_common():
        print(f"  {count:4d}  {reason}")
    # Synthetic values cannot satisfy prompts that compute on real numbers or labels; the
    # count guards against regressions in the loader or the environment.
    assert rendered >= 1850


def test_render_is_sandboxed_and_seeded(tmp_path):
    path = tmp_path / "templates.yaml"
    path.write_text(
        "dataset: demo\ntemplates:\n"
        "  a: !Template\n    id: a\n    name: pick\n    answer_choices: No ||| Yes\n"
        "    jinja: '{{text}} Right? ||| {{answer_choices[label]}} {{ names | choice }}'\n"
        "    metadata: !TemplateMetadata {original_task: true, choices_in_prompt: false}\n"
        "  b: !Template\n    id: b\n    name: evil\n    answer_choices: null\n"
        "    jinja: '{{ text.__class__.__mro__ }} ||| x'\n"
    )
    pick, evil = promptsource.read_templates_file(str(path))
    example = {"text": "Sky is blue.", "label": 1, "names": ["u", "v", "w", "x"]}
    outs = {
        promptsource.render_prompt(pick, example, np.random.default_rng(s)).targets
        for s in range(20)
    }
    assert {o.split()[0] for o in outs} == {"Yes"} and len(outs) > 1
    again = promptsource.render_prompt(pick, example, np.random.default_rng(3))
    assert again == promptsource.render_prompt(pick, example, np.random.default_rng(3))
    assert again.answer_choices == ("No", "Yes")
    with pytest.raises(promptsource.PromptTemplateError, match=r"templates.yaml: prompt 'evil'"):
        promptsource.render_prompt(evil, example, np.random.default_rng(0))


@pytest.mark.skipif(not os.path.exists(CATALOG_CSV), reason=f"{CATALOG_CSV} not found")
def test_catalog_is_the_193_t0_rows_of_the_collection():
    with open(CATALOG_CSV) as f:
        rows = [r for r in csv.DictReader(f) if r["Source"] == "T0"]
    catalog = t0.load_t0_catalog()
    assert len(catalog) == len(rows) == 193
    assert [t.name for t in catalog] == [r["Specific Task Category"].rstrip("_") for r in rows]


@needs_archive
def test_catalog_prompts_exist_and_a_fixture_task_renders_end_to_end(template_root, tmp_path):
    paths = data_paths.DataPaths(source_dirs={"t0_templates": template_root, "t0": str(tmp_path)})
    for task in t0.load_t0_catalog():
        assert t0.find_prompt(task, paths).name == task.prompt
    rows = tmp_path / "amazon_polarity" / "train.jsonl"
    rows.parent.mkdir()
    rows.write_text(
        "".join(
            json.dumps({"title": f"T{i}", "content": f"Review {i}.", "label": i % 2}) + "\n"
            for i in range(6)
        )
    )
    name = next(
        t.name
        for t in t0.load_t0_catalog()
        if t.dataset == "amazon_polarity" and not t0.find_prompt(t, paths).choices_in_prompt
    )
    vocab = seqio.PassThroughVocabulary(10)
    # Registration is idempotent per name: drop registrations other tests made with other
    # data paths, so these tasks read this test's rows.
    forget_tasks("t0", [name])
    t0.register_t0_tasks(vocab, datasets=[name], paths=paths)
    plain = list(t0.load_t0_split(name, split="train", paths=paths, seed=0))
    assert len(plain) == 6 and plain[1][1]["answer"] in plain[1][1]["options"]
    for variant in ("zs_opt", "zs_noopt", "fs_opt", "fs_noopt"):
        task = seqio.get_mixture_or_task(f"t0__{name}__{variant}")
        examples = list(task.source.get_dataset("train").as_numpy_iterator())
        by_key = dict(plain)
        keys = [ex["_example_key"].decode() for ex in examples]
        # Few-shot drops the examples left with no same-template exemplar (0-to-10 form).
        assert set(keys) <= set(by_key) and len(keys) == len(set(keys))
        assert len(examples) == 6 if variant.startswith("zs_") else 1 <= len(examples) <= 6
        for ex, key in zip(examples, keys):
            fields = by_key[key]
            inputs, targets = ex["inputs"].decode(), ex["targets"].decode()
            assert inputs.endswith(fields["prompt"]) or fields["prompt"] in inputs
            has_block = any(header + "\n" in inputs for header in templates.OPTION_HEADERS)
            assert has_block == variant.endswith("_opt")
            assert targets == fields["answer"] or variant.endswith("_opt")


def test_missing_rows_name_the_task(tmp_path):
    paths = data_paths.DataPaths(source_dirs={"t0_templates": str(tmp_path), "t0": str(tmp_path)})
    message = t0.missing_data("adversarial_qa_dbert_based_on", paths=paths)
    assert "adversarial_qa_dbert_based_on" in message and "promptsource" in message


# ---- Instruction wrappers per FLAN task type --------------------------------------------

# One fixture prompt per FLAN type, as a promptsource prompt renders it (`render_rows`).
WRAPPER_FIXTURES = {
    "question_answer": {
        "prompt": "Context: Ada wrote the first program.\nWho wrote the first program?",
        "answer": "Ada",
    },
    "multiple_choice": {
        "prompt": "Is a whale a fish?\nChoices: yes, no",
        "answer": "no",
    },
    "multiple_choice_separated_options": {
        "prompt": "Review: Loved every minute. Is this review positive or negative?",
        "answer": "positive",
        "options": ["negative", "positive"],
    },
}
# The types FLAN gives our 193 tasks (google-research/FLAN flan/v2/constants_t0.py,
# T0_TRAIN_TASK_METADATA "task_type" of the tasks with in_flan False, less _score_eval).
FLAN_TYPE_COUNTS = {
    "question_answer": 104,
    "multiple_choice": 70,
    "multiple_choice_separated_options": 19,
}
# Tasks whose FLAN type is not the one promptsource's metadata implies (FLAN types them as
# free text although the prompt has answer choices): the 188 others agree.
FLAN_TYPE_EXCEPTIONS = {
    "app_reviews_convert_to_star_rating": "multiple_choice",
    "wiqa_does_the_supposed_perturbation_have_an_effect": "question_answer",
    "wiqa_effect_with_label_answer": "question_answer",
    "wiqa_effect_with_string_answer": "question_answer",
    "wiqa_which_of_the_following_is_the_supposed_perturbation": "question_answer",
}
PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


def option_header_lines(text):
    return [line for line in text.splitlines() if line in templates.OPTION_HEADERS]


def test_every_task_has_a_flan_type_with_at_least_five_distinct_wrappers():
    catalog = t0.load_t0_catalog()
    assert collections.Counter(task.flan_type for task in catalog) == FLAN_TYPE_COUNTS
    assert set(t0.FLAN_TYPES) == set(FLAN_TYPE_COUNTS) == set(WRAPPER_FIXTURES)
    all_inputs = []
    for flan_type in t0.FLAN_TYPES:
        wrappers = t0.load_t0_wrapper_templates(flan_type).templates
        assert len(wrappers) >= 5, flan_type
        inputs = [w.inputs for w in wrappers]
        assert len(set(inputs)) == len(inputs), flan_type
        all_inputs += inputs
        for wrapper in wrappers:
            # Every wrapper shows the prompt once and can show the options block, so "opt"
            # variants add it whenever the prompt has choices it does not list.
            assert wrapper.inputs.count("{prompt}") == 1 and wrapper.uses_options, flan_type
            assert wrapper.targets == "{answer}" and wrapper.type == "zs"
    # Beyond the bare "{prompt}{options_}" each type starts from, the wordings differ.
    assert collections.Counter(all_inputs)["{prompt}{options_}"] == 3
    assert len(set(all_inputs)) == len(all_inputs) - 2
    with pytest.raises(ValueError, match="flan_type must be one of"):
        t0.load_t0_wrapper_templates("summarization")


@pytest.mark.parametrize("flan_type", sorted(WRAPPER_FIXTURES))
def test_every_wrapper_renders_on_a_fixture_prompt(flan_type):
    fields = WRAPPER_FIXTURES[flan_type]
    for wrapper in t0.load_t0_wrapper_templates(flan_type).templates:
        for with_options in (False, True):
            for seed in range(4):
                rng = templates.example_rng(seed, f"t0__{flan_type}", "train:0")
                out = templates.render(wrapper, fields, with_options=with_options, rng=rng)
                assert not PLACEHOLDER.search(out.inputs + out.targets), (flan_type, wrapper.index)
                # Independently: the wrapper text with the prompt put in and the block cut.
                expected = wrapper.inputs.replace("{prompt}", fields["prompt"])
                headers = option_header_lines(out.inputs)
                if not (with_options and "options" in fields):
                    assert not headers and out.inputs == expected.replace("{options_}", "")
                    assert out.targets == fields["answer"]
                    continue
                assert len(headers) == 1, (flan_type, wrapper.index)
                before, after = expected.split("{options_}")
                assert out.inputs.startswith(before) and out.inputs.endswith(after)
                block = out.inputs[len(before) : len(out.inputs) - len(after)]
                assert block.lstrip("\n").startswith(headers[0])
                items = block.split(headers[0] + "\n", 1)[1].splitlines()
                assert len(items) == len(fields["options"])
                assert all(item.endswith(o) for item, o in zip(items, fields["options"]))
                answer_item = items[fields["options"].index(fields["answer"])]
                assert out.targets == fields["answer"] or answer_item.startswith(out.targets)


def test_the_wrapper_is_drawn_per_example_from_the_task_types_wrappers(tmp_path):
    paths = data_paths.DataPaths(source_dirs={"t0_templates": str(tmp_path), "t0": str(tmp_path)})
    vocab = seqio.PassThroughVocabulary(10)
    fields = WRAPPER_FIXTURES["question_answer"]
    for flan_type in t0.FLAN_TYPES:
        task = next(t for t in t0.load_t0_catalog() if t.flan_type == flan_type)
        (name,) = [
            n
            for n in t0.register_t0_tasks(vocab, datasets=[task.name], paths=paths)
            if n.endswith("__zs_noopt")
        ]
        spec = seqio.get_mixture_or_task(name).source.render_spec
        assert spec.templates == t0.load_t0_wrapper_templates(flan_type).templates
        drawn = []
        for i in range(60):
            key = f"train:{i}"
            example = sources.render_example(spec, key, fields)
            assert example == sources.render_example(spec, key, fields)  # same example, same text
            # Independently: the first draw of the example's own generator picks the wrapper.
            rng = templates.example_rng(spec.seed, name, key)
            assert example["_template_idx"] == int(rng.integers(len(spec.templates)))
            drawn.append(example["_template_idx"])
        assert len(set(drawn)) >= 5, (flan_type, drawn)


@needs_archive
def test_flan_types_agree_with_the_promptsource_metadata(template_root):
    paths = data_paths.DataPaths(source_dirs={"t0_templates": template_root})
    for task in t0.load_t0_catalog():
        prompt = t0.find_prompt(task, paths)
        if not prompt.answer_choices:
            implied = "question_answer"
        elif prompt.choices_in_prompt:
            implied = "multiple_choice"
        else:
            implied = "multiple_choice_separated_options"
        if task.name in FLAN_TYPE_EXCEPTIONS:
            assert implied != task.flan_type == FLAN_TYPE_EXCEPTIONS[task.name], task.name
        else:
            assert implied == task.flan_type, task.name
