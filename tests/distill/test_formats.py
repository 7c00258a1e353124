"""The four distillation formats, their seeded per-item mixture, and calculator stripping."""

import collections
import dataclasses

import pytest

from flan_jax.distill import formats
from flan_jax.evaluation import answers, math_datasets
from flan_jax.testing.math import make_examples
from flan_jax.testing.shared_data import shared_data_path

Q0 = "Tom has 0 apples and buys 2 more. How many apples does he have?"
Q1 = "Tom has 1 apples and buys 2 more. How many apples does he have?"


def test_zero_shot_formats_exact_text():
    example = make_examples(1)[0]
    answer_only = formats.render_example(example, formats.ZS_ANSWER_ONLY)
    assert (answer_only.inputs, answer_only.targets) == (f"Q: {Q0} A:", "The answer is 2")
    cot = formats.render_example(example, formats.ZS_COT)
    assert cot.inputs == f"Q: {Q0} A: Let's think step by step."
    assert cot.targets == "Tom starts with 0 apples. 0 + 2 = 2. The answer is 2."


def test_in_context_formats_exact_text():
    item, demo, *others = make_examples(5, start=0)
    demos = [demo, *others]
    rendered = formats.render_example(item, formats.ICL_COT, demonstrations=demos)
    blocks = rendered.inputs.split("\n\n")
    assert len(blocks) == 5
    assert blocks[0] == (
        f"Q: {Q1} A: Let's think step by step. Tom starts with 1 apples. "
        "1 + 2 = 3. The answer is 3."
    )
    assert blocks[-1] == f"Q: {Q0} A: Let's think step by step."
    assert rendered.targets == "Tom starts with 0 apples. 0 + 2 = 2. The answer is 2."
    assert rendered.demonstration_ids == ("toy/1", "toy/2", "toy/3", "toy/4")
    answer_only = formats.render_example(item, formats.ICL_ANSWER_ONLY, demonstrations=demos)
    assert answer_only.inputs.split("\n\n")[0] == f"Q: {Q1} A: The answer is 3"
    assert answer_only.inputs.split("\n\n")[-1] == f"Q: {Q0} A:"
    assert answer_only.targets == "The answer is 2"


def test_render_errors_name_the_problem():
    item = make_examples(1)[0]
    with pytest.raises(ValueError, match="takes 4 demonstrations; got 1 for example 'toy/0'"):
        formats.render_example(item, formats.ICL_COT, demonstrations=[item])
    with pytest.raises(ValueError, match="Unknown format 'zs_cot2'"):
        formats.render_example(item, "zs_cot2")
    no_rationale = make_examples(1, with_rationale=False)[0]
    with pytest.raises(ValueError, match="'toy/0' has no rationale"):
        formats.render_example(no_rationale, formats.ZS_COT)
    # Evaluation inputs need no rationale of the item itself.
    assert formats.render_inputs(no_rationale, formats.ZS_COT).endswith("step by step.")
    with pytest.raises(ValueError, match="num_demonstrations must be >= 1; got 0"):
        formats.FormatConfig(num_demonstrations=0)
    with pytest.raises(ValueError, match=r"Unknown format\(s\) \['cot'\]"):
        formats.render_mixed([item], ratios={"cot": 1}, seed=0)
    with pytest.raises(ValueError, match="positive sum"):
        formats.render_mixed([item], ratios={"zs_cot": 0}, seed=0)


RATIOS = {"icl_answer_only": 1, "icl_cot": 2, "zs_answer_only": 3, "zs_cot": 4}


def test_mixture_follows_the_ratios():
    examples = make_examples(4000)
    counts = collections.Counter(
        r.format for r in formats.render_mixed(examples, ratios=RATIOS, seed=0)
    )
    for name, weight in RATIOS.items():
        # Binomial standard deviation at n=4000 is at most 0.008; 4 sigma is 0.032.
        assert counts[name] / len(examples) == pytest.approx(weight / 10, abs=0.032)


def test_mixture_is_deterministic_per_item_and_seed():
    examples = make_examples(60)
    first = formats.render_mixed(examples, ratios=RATIOS, seed=7)
    # Another order of the items, and rendering one item alone, give the same text.
    reversed_order = formats.render_mixed(examples[::-1], pool=examples, ratios=RATIOS, seed=7)
    assert first == reversed_order[::-1]
    pool = formats.DemonstrationPool(examples)
    assert formats.render_mixed_example(examples[11], pool=pool, ratios=RATIOS, seed=7) == first[11]
    other_seed = formats.render_mixed(examples, ratios=RATIOS, seed=8)
    assert sum(a != b for a, b in zip(first, other_seed)) > 30


def test_demonstrations_are_resampled_per_item_and_exclude_the_item():
    examples = make_examples(40)
    # A copy of item 0's question under another id must not be its demonstration either.
    duplicate = dataclasses.replace(examples[0], id="toy/dup")
    pool = formats.DemonstrationPool(examples + [duplicate])
    rendered = [
        formats.render_mixed_example(e, pool=pool, ratios={"icl_cot": 1}, seed=1) for e in examples
    ]
    for example, item in zip(examples, rendered):
        assert len(item.demonstration_ids) == 4 == len(set(item.demonstration_ids))
        assert example.id not in item.demonstration_ids
        assert item.inputs.count(example.question) == 1  # only as the final question
    assert "toy/dup" not in rendered[0].demonstration_ids
    distinct_sets = {frozenset(item.demonstration_ids) for item in rendered}
    assert len(distinct_sets) > 35


def test_cot_demonstrations_come_only_from_examples_with_rationales():
    with_rationale = make_examples(5)
    without = make_examples(50, with_rationale=False, start=100)
    pool = formats.DemonstrationPool(with_rationale + without)
    item = with_rationale[0]
    for seed in range(20):
        rendered = formats.render_mixed_example(item, pool=pool, ratios={"icl_cot": 1}, seed=seed)
        assert set(rendered.demonstration_ids) == {"toy/1", "toy/2", "toy/3", "toy/4"}
    small = formats.DemonstrationPool(with_rationale[:4] + without)
    with pytest.raises(ValueError, match="3 examples with a rationale other than 'toy/0'"):
        formats.render_mixed_example(item, pool=small, ratios={"icl_cot": 1}, seed=0)


def test_gsm8k_targets_are_clean_and_keep_their_answer():
    examples = math_datasets.load_gsm8k(shared_data_path("gsm8k", "train.jsonl"))
    rendered = formats.render_mixed(examples, ratios=RATIOS, seed=0)
    failures = []
    for example, item in zip(examples, rendered):
        if "<<" in item.targets or ">>" in item.inputs or "\n" in item.targets:
            failures.append(("annotation or newline left", item.id))
        # The answer is recoverable from every target, the way predictions are scored.
        if not answers.answers_match(item.targets, example.answer):
            failures.append(("answer lost", item.id, item.targets[-60:]))
    assert not failures, failures[:5]
    assert {r.format for r in rendered} == set(formats.FORMATS)


def test_teacher_completion_round_trips_through_every_format():
    example = make_examples(1)[0]
    completion = formats.render_example(example, formats.ZS_COT).targets
    rationale = formats.rationale_from_completion(f"Let's think step by step. {completion}")
    assert rationale == "Tom starts with 0 apples. 0 + 2 = 2."
    sample = dataclasses.replace(example, rationale=rationale)
    assert formats.render_example(sample, formats.ZS_COT).targets == completion
    with pytest.raises(ValueError, match="no answer sentence 'The answer is '"):
        formats.rationale_from_completion("3 + 4 = 7, done")
