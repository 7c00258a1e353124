"""The demo collection: templates, held-out splits, lengths, registration and metrics."""

import collections
import json

import pytest
import seqio

from flan_jax.data import vocabularies
from flan_jax.tasks import demo, sources
from flan_jax.tasks.demo import collection, generators


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory):
    return demo.get_demo_vocabulary(str(tmp_path_factory.mktemp("demo_vocab")))


@pytest.mark.parametrize("cluster", demo.CLUSTERS)
def test_every_template_renders_and_the_template_rules_hold(cluster):
    template_set = collection.load_demo_templates(cluster)
    parts = collection.split_templates(template_set)
    assert len(parts["seen"]) >= 5 and len(parts["unseen"]) == 2 and parts["inverted"]
    for key, fields in generators.iterate_examples(cluster, "train", 5):
        for template in template_set.templates:
            for with_options in (True, False):
                rendered = collection.templates.render(
                    template,
                    fields,
                    with_options=with_options,
                    rng=collection.templates.example_rng(0, cluster, key),
                )
                assert rendered.inputs.strip() and rendered.targets.strip()


@pytest.mark.parametrize("cluster", demo.CLUSTERS)
def test_validation_instances_never_appear_in_training(cluster):
    def contents(split, count):
        return {
            json.dumps(f, sort_keys=True)
            for _, f in generators.iterate_examples(cluster, split, count)
        }

    assert not contents("train", 2000) & contents("validation", 200)


def test_examples_fit_the_demo_lengths_and_tasks_use_their_templates(vocabulary):
    lengths = demo.DEMO_TASK_FEATURE_LENGTHS
    for task in demo.list_demo_tasks():
        allowed = {t.index for t in task.spec.templates}
        used = collections.Counter()
        for split in task.splits:
            for key, fields in generators.iterate_examples(task.cluster, split, 60):
                out = sources.render_example(task.spec, key, fields)
                used[out["_template_idx"]] += 1
                # +1 for the EOS the task appends.
                assert len(vocabulary.encode(out["inputs"])) + 1 <= lengths["inputs"], out
                assert len(vocabulary.encode(out["targets"])) + 1 <= lengths["targets"], out
        assert set(used) <= allowed and len(used) == len(allowed), task.name


def test_registration_is_idempotent_and_rejects_another_vocabulary(vocabulary, tmp_path):
    names = demo.register_demo_tasks(vocabulary)
    assert demo.register_demo_tasks(vocabulary) == names
    assert "demo__arith__zs_noopt" in names and "demo__nli__inverted__zs_noopt" in names
    mixture = seqio.get_mixture_or_task(demo.DEMO_MIXTURE)
    assert {t.name for t in mixture.tasks} == {n for n in names if ".unseen" not in n}
    for pair in demo.demo_eval_tasks().values():
        assert set(pair) == {"seen", "unseen"} and all(n in names for n in pair.values())
    other = vocabularies.get_vocabulary(
        vocabularies.build_sentencepiece_model(
            ["a b c d e f g"] * 20, str(tmp_path / "other"), 30, hard_vocab_limit=False
        )
    )
    with pytest.raises(ValueError, match="another vocabulary"):
        demo.register_demo_tasks(other)


def test_demo_vocabulary_is_reproducible(vocabulary, tmp_path):
    rebuilt = demo.get_demo_vocabulary(str(tmp_path))
    text = "Q: Ana has 5 apples. Ana buys 3 more. How many apples does Ana have now?"
    assert rebuilt.encode(text) == vocabulary.encode(text)
    with (
        open(rebuilt.sentencepiece_model_file, "rb") as a,
        open(vocabulary.sentencepiece_model_file, "rb") as b,
    ):
        assert a.read() == b.read()


def test_postprocess_and_exact_match():
    assert demo.extract_cot_answer("5 + 3 = 8. 8 - 2 = 6. So the answer is 6.") == "6"
    assert demo.extract_cot_answer("so the answer is 12") == "12"
    assert demo.extract_cot_answer("no final answer") == ""
    assert collection.postprocess_answer(b" it is  not possible\nto tell ") == (
        "it is not possible to tell"
    )
    assert demo.exact_match(["6", "(A)", "yes"], ["6", "(B)", "yes"]) == {
        "accuracy": pytest.approx(200 / 3)
    }
