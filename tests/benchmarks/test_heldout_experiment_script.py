"""The held-out generalization experiment script runs end to end in its --quick mode, and
its tables agree with the per-task scores it stores."""

import importlib.util
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "heldout_experiment.py")
_NAME = "heldout_experiment"


@pytest.mark.slow
def test_experiment_quick(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot needs the 'bench' or 'test' extra")
    out_dir = tmp_path / "results"
    result = subprocess.run(
        [
            sys.executable,
            _SCRIPT,
            "--quick",
            "--out_dir",
            str(out_dir),
            "--work_dir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "| training clusters | held-out accuracy (generation) |" in result.stdout
    expected = [f"{_NAME}.json", f"{_NAME}.md", f"{_NAME}_clusters.png", f"{_NAME}_optiml.png"]
    assert sorted(os.listdir(out_dir)) == expected
    for name in expected[2:]:
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out_dir / f"{_NAME}.json").read_text())

    records = results["cluster_transfer"]
    assert [r["num_train_clusters"] for r in records] == [1, 2, 3, 4]
    others = {"arith", "nli", "words", "reading"}
    for r in records:
        assert r["held_out"] == "sentiment"
        assert (
            set(r["train_clusters"]) <= others
            and len(set(r["train_clusters"])) == r["num_train_clusters"]
        )
        # Nested: each run adds one cluster to the previous run's.
        assert r["train_clusters"] == records[-1]["train_clusters"][: r["num_train_clusters"]]
        seen, unseen = r["held_out_tasks"]["seen"], r["held_out_tasks"]["unseen"]
        assert seen["num_examples"] == unseen["num_examples"] == 16
        assert r["held_out_accuracy"] == pytest.approx((seen["accuracy"] + unseen["accuracy"]) / 2)
        # Sentiment has two options: chance is 50%.
        assert seen["chance"] == unseen["chance"] == pytest.approx(50.0)
        train_accuracies = [row["accuracy"] for row in r["train_tasks"].values()]
        assert len(train_accuracies) == r["num_train_clusters"]
        assert r["train_accuracy"] == pytest.approx(np.mean(train_accuracies))

    optiml = results["optiml"]
    assert list(optiml["models"]) == ["OPT-IML split"]  # --quick trains no reference
    assert optiml["split"] == {  # tasks/heldout/demo_categories.tsv, the default split
        "held_out_categories": ["words"],
        "held_out_tasks": ["reading", "sentiment"],
        "seen_datasets": ["arith", "nli"],
    }
    levels = optiml["models"]["OPT-IML split"]["levels"]
    tasks = optiml["models"]["OPT-IML split"]["tasks"]
    for level, names in optiml["eval_tasks"].items():
        assert levels[level]["accuracy"] == pytest.approx(
            np.mean([tasks[name]["accuracy"] for name in names])
        )
    table = (out_dir / f"{_NAME}.md").read_text()
    assert f"| 1 | {records[0]['held_out_accuracy']:.1f} |" in table


def _load_script():
    pytest.importorskip("matplotlib", reason="the script needs the 'bench' or 'test' extra")
    benchmarks_dir = os.path.dirname(os.path.abspath(_SCRIPT))
    if benchmarks_dir not in sys.path:  # the script imports its sibling t5_sizes.py
        sys.path.insert(0, benchmarks_dir)
    spec = importlib.util.spec_from_file_location("heldout_experiment", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


class _FakeScorer:
    """`Predictor.score` stand-in: the log-likelihood of a target is minus its distance
    from the number the input ends with, so the option nearest that number wins."""

    def score(self, inputs, targets):
        values = [-abs(int(i.split()[-1]) - int(t)) for i, t in zip(inputs, targets)]
        return types.SimpleNamespace(log_likelihoods=np.asarray(values, np.float32))


def test_rank_classification_scores_pick_the_most_likely_option():
    script = _load_script()
    sep = "\x1f"
    examples = [  # (prompt, gold, options): the scorer picks 2, 7, 4
        {"inputs_pretokenized": "x 2", "targets_pretokenized": "2", "_answer_options": f"1{sep}2"},
        {"inputs_pretokenized": "x 8", "targets_pretokenized": "3", "_answer_options": f"3{sep}7"},
        {
            "inputs_pretokenized": "x 4",
            "targets_pretokenized": "4",
            "_answer_options": f"0{sep}4{sep}9",
        },
    ]
    scores = script.rank_classification_scores(_FakeScorer(), examples)
    assert scores == {
        "rank_accuracy": pytest.approx(100 * 2 / 3),
        "chance": pytest.approx(100 * (1 / 2 + 1 / 2 + 1 / 3) / 3),
    }
    no_options = [{**examples[0], "_answer_options": ""}]
    assert script.rank_classification_scores(_FakeScorer(), no_options) == {
        "rank_accuracy": None,
        "chance": None,
    }


def test_cluster_order_is_seeded_and_leaves_the_held_out_cluster_out():
    script = _load_script()
    for held_out in ("sentiment", "nli", "reading"):
        order = script.cluster_order(held_out, 0)
        assert sorted(order) == sorted(set(script.demo.CLUSTERS) - {held_out})
        assert order == script.cluster_order(held_out, 0)
    assert len({tuple(script.cluster_order("nli", seed)) for seed in range(6)}) > 1
