"""Per-checkpoint accuracy tables, self-consistency voting and dev-split selection."""

import json

import pytest

from flan_jax.evaluation import selection
from flan_jax.testing.math import make_examples


def test_majority_vote_counts_equal_values_together():
    vote = selection.majority_vote(["so 1/2", "The answer is 0.5.", "3", "no idea", "$3.00"])
    assert vote == selection.Vote(answer="0.5", count=2, num_answered=4, num_samples=5)


@pytest.mark.parametrize(
    "samples, expected",
    [
        (["The answer is 4", "The answer is 3", "The answer is 3", "The answer is 4"], "4"),
        (["The answer is 3", "The answer is 4", "The answer is 4", "The answer is 3"], "3"),
        (["nothing", "The answer is 7"], "7"),
        (["nothing", "still nothing"], None),
    ],
)
def test_majority_vote_breaks_ties_by_first_occurrence(samples, expected):
    assert selection.majority_vote(samples).answer == expected


def test_majority_vote_on_text_answers():
    samples = ["So the answer is (B).", "So the answer is B.", "So the answer is (C)."]
    assert selection.majority_vote(samples, numeric=False).count == 2
    assert selection.is_correct(samples, "(B)")
    assert not selection.is_correct(samples, "(C)")


def _fake_model(accuracy_by_step):
    """Answers example i correctly iff i % 10 < 10 * accuracy (deterministic)."""

    def predict(step, examples):
        rate = accuracy_by_step[step]
        return [
            f"... The answer is {e.answer}."
            if i % 10 < 10 * rate
            else f"... The answer is {int(e.answer) + 1}."
            for i, e in enumerate(examples)
        ]

    return predict


def test_evaluate_checkpoints_matches_a_direct_count():
    sets = {"gsm8k": make_examples(20, source="g"), "dev": make_examples(30, source="d")}
    rates = {100: 0.5, 200: 0.8, 300: 0.3}
    table = selection.evaluate_checkpoints([300, 100, 200], sets, _fake_model(rates))
    assert table.steps == (100, 200, 300)
    for step, rate in rates.items():
        for name, examples in sets.items():
            predictions = _fake_model(rates)(step, examples)
            direct = sum(p.endswith(f" {e.answer}.") for p, e in zip(predictions, examples))
            assert table.correct[step][name] == direct
            assert table.accuracy(step, name) == pytest.approx(rate)
    assert table.mean_accuracy(200) == pytest.approx(0.8)
    assert selection.select_best_checkpoint(table, dev_sets=["dev"]) == selection.Selection(
        200, pytest.approx(0.8), ("dev",)
    )


def test_selection_uses_only_the_dev_sets_and_prefers_the_earliest_tie():
    sets = {
        "in_dist": make_examples(10, source="i"),
        "ood_a": make_examples(10, source="a"),
        "ood_b": make_examples(10, source="b"),
    }

    def predict(step, examples):
        # in-distribution accuracy rises with steps, OOD accuracy peaks at step 2 and 3.
        rate = {
            "i": step / 4,
            "a": [0, 0.3, 0.6, 0.6, 0.2][step],
            "b": [0, 0.2, 0.4, 0.4, 0.1][step],
        }[examples[0].source]
        return [
            f"The answer is {e.answer if i < 10 * rate else -1}" for i, e in enumerate(examples)
        ]

    table = selection.evaluate_checkpoints(range(5), sets, predict)
    chosen = selection.select_best_checkpoint(table, dev_sets=["ood_a", "ood_b"])
    assert (chosen.step, chosen.dev_accuracy) == (2, pytest.approx(0.5))
    assert selection.select_best_checkpoint(table, dev_sets=["in_dist"]).step == 4
    with pytest.raises(ValueError, match="Unknown evaluation set"):
        selection.select_best_checkpoint(table, dev_sets=["gsm8k"])


def test_self_consistency_predictions_are_voted():
    examples = make_examples(3)
    samples = [
        [f"The answer is {e.answer}"] * 2 + ["The answer is 0"] * 3
        if i == 0
        else [f"The answer is {e.answer}"] * 3 + ["The answer is 0"] * 2
        for i, e in enumerate(examples)
    ]
    table = selection.evaluate_checkpoints([1], {"s": examples}, lambda step, ex: samples)
    assert table.correct[1]["s"] == 2


def test_table_json_round_trip_and_markdown(tmp_path):
    sets = {"a": make_examples(4), "b": make_examples(5)}
    table = selection.evaluate_checkpoints([10, 20], sets, _fake_model({10: 0.5, 20: 1.0}))
    path = tmp_path / "out" / "accuracy.json"
    table.write_json(path)
    assert selection.AccuracyTable.from_json_dict(json.loads(path.read_text())) == table
    assert [p.name for p in path.parent.iterdir()] == ["accuracy.json"]  # no temp file left
    lines = table.to_markdown().splitlines()
    assert lines[0] == "| step | a | b | mean |"
    assert lines[3] == "| 20 | 1.000 | 1.000 | 1.000 |"


def test_prediction_count_must_match():
    with pytest.raises(ValueError, match="Got 1 predictions for 2 examples"):
        selection.evaluate_checkpoints([0], {"a": make_examples(2)}, lambda s, e: ["x"])


def test_list_checkpoint_steps(tmp_path):
    for name in ["1000", "20", "tmp", "checkpoint_5"]:
        (tmp_path / name).mkdir()
    (tmp_path / "30").write_text("a file, not a step")
    assert selection.list_checkpoint_steps(tmp_path) == [20, 1000]
    with pytest.raises(FileNotFoundError, match="No checkpoint directory"):
        selection.list_checkpoint_steps(tmp_path / "missing")
