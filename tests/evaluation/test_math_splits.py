"""OOD dev splits: no training question leaks in, for planted near-duplicates and real data."""

import dataclasses

import pytest

from flan_jax.evaluation import math_datasets, splits
from flan_jax.testing.math import make_examples
from flan_jax.testing.shared_data import shared_data_path


@pytest.mark.parametrize(
    "a, b",
    [
        ("Tom has 1,000 apples. How many?", "tom has 1000 apples how many"),
        ("He had 32.0 pieces of candy.", "He had 32 pieces of candy"),
        ("  It costs $3.5 ,  right? ", "It costs 3.5 right"),
        ("Weng earns 12/60 = $<<12/60=0.2>>0.2", "weng earns 12 60 0.2"),
        ("Janet\u2019s ducks", "Janet's ducks"),
    ],
)
def test_normalise_question_equates_cosmetic_variants(a, b):
    assert splits.normalise_question(a) == splits.normalise_question(b)


@pytest.mark.parametrize(
    "a, b",
    [
        ("Tom has 3.5 apples", "Tom has 35 apples"),
        ("Tom has 10 apples", "Tom has 100 apples"),
        ("Tom has 5 apples", "Tim has 5 apples"),
    ],
)
def test_normalise_question_keeps_real_differences(a, b):
    assert splits.normalise_question(a) != splits.normalise_question(b)


def _planted_candidates():
    training = make_examples(30, source="train")
    candidates = make_examples(40, source="ood", start=100)
    # Plant training questions under new ids, with cosmetic changes, plus a repeated candidate.
    leaked = [
        dataclasses.replace(
            training[i],
            id=f"ood/leak-{i}",
            question=training[i].question.upper().replace(".", " . "),
        )
        for i in (3, 17)
    ]
    repeated = dataclasses.replace(candidates[5], id="ood/repeat")
    return training, candidates + leaked + [repeated]


def test_split_drops_training_questions_and_repeats():
    training, candidates = _planted_candidates()
    split = splits.make_ood_dev_split(candidates, training=training, dev_size=10, seed=3)
    assert sorted(split.removed_ids) == ["ood/leak-17", "ood/leak-3", "ood/repeat"]
    assert len(split.dev) == 10 and len(split.test) == 30
    assert not {e.id for e in split.dev} & {e.id for e in split.test}
    splits.check_no_overlap(split.dev, training)
    splits.check_no_overlap(split.test, training)
    # Brute force over every pair, independent of the index the split uses.
    train_keys = [splits.normalise_question(t.question) for t in training]
    assert all(splits.normalise_question(e.question) != k for e in split.dev for k in train_keys)


def test_check_no_overlap_reports_leaks():
    training, candidates = _planted_candidates()
    assert splits.find_overlaps(candidates, training) == [
        ("ood/leak-3", "train/3"),
        ("ood/leak-17", "train/17"),
    ]
    with pytest.raises(ValueError, match=r"shares 2 question\(s\).*ood/leak-3 = train/3"):
        splits.check_no_overlap(candidates, training)


def test_split_is_seeded_and_independent_of_order():
    training, candidates = _planted_candidates()
    first = splits.make_ood_dev_split(candidates, training=training, dev_size=10, seed=3)
    shuffled = splits.make_ood_dev_split(candidates[::-1], training=training, dev_size=10, seed=3)
    other = splits.make_ood_dev_split(candidates, training=training, dev_size=10, seed=4)
    assert {e.id for e in first.dev} == {e.id for e in shuffled.dev}
    assert {e.id for e in first.dev} != {e.id for e in other.dev}


def test_split_rejects_bad_sizes_and_ids():
    training, candidates = _planted_candidates()
    with pytest.raises(ValueError, match=r"dev_size must be in \[1, 40\].*got 41"):
        splits.make_ood_dev_split(candidates, training=training, dev_size=41)
    with pytest.raises(ValueError, match="repeated: \\['ood/100'\\]"):
        splits.make_ood_dev_split(candidates + candidates[:1], training=training, dev_size=1)


def test_real_ood_sets_do_not_overlap_gsm8k_train():
    training = math_datasets.load_gsm8k(shared_data_path("gsm8k", "train.jsonl"))
    root = shared_data_path("math_ood_samples")
    candidates = (
        math_datasets.load_multiarith(root / "MultiArith.sample.json")
        + math_datasets.load_asdiv(root / "asdiv.sample.jsonl")
        + math_datasets.load_svamp(root / "SVAMP.sample.json")
    )
    split = splits.make_ood_dev_split(candidates, training=training, dev_size=60, seed=0)
    assert len(split.dev) == 60 and len(split.dev) + len(split.test) + len(split.removed_ids) == 120
    splits.check_no_overlap(list(split.dev) + list(split.test), training)
