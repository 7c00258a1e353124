"""The Instruction Pre-Training experiment script runs end to end in its --quick mode, its
corpus is disjoint from the synthesizer's training texts, and its table agrees with the
per-task scores it stores."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flan_jax.ipt import corpora

_SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "ipt_experiment.py")
_NAME = "ipt_experiment"
_MODELS = ["initialisation", "vanilla", "instruction-augmented"]


def _load_script():
    pytest.importorskip("matplotlib", reason="the script needs the 'bench' or 'test' extra")
    spec = importlib.util.spec_from_file_location(_NAME, _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_experiment_quick(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot needs the 'bench' or 'test' extra")
    out_dir = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, _SCRIPT, "--quick", "--out_dir", str(out_dir)]
        + ["--work_dir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "| cluster (held-out templates) | chance |" in result.stdout
    assert sorted(os.listdir(out_dir)) == [f"{_NAME}.json", f"{_NAME}.md", f"{_NAME}.png"]
    assert (out_dir / f"{_NAME}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out_dir / f"{_NAME}.json").read_text())
    cfg = results["config"]

    corpus = results["corpus"]
    assert corpus["overlap_with_synthesizer_texts"] == 0
    assert corpus["num_texts"] == sum(corpus["per_dataset"].values())
    corpus_texts = [
        json.loads(line)["text"] for line in (tmp_path / "work" / "corpus.jsonl").open()
    ]
    assert len(corpus_texts) == len(set(corpus_texts)) == corpus["num_texts"]

    # The synthesis directory holds the corpus's augmented part, and the report its counts.
    manifest = json.loads((tmp_path / "work" / "synthesis" / "manifest.json").read_text())
    synth = results["synthesis"]
    assert manifest["rounds"] == cfg["rounds"] and manifest["complete"]
    assert manifest["totals"]["texts"] == synth["texts"] > 0
    assert manifest["totals"]["pairs"] == synth["pairs"]
    part = [t for t in corpus_texts if corpora.is_augmented_text(t, fraction=0.2)]
    assert cfg["augmented_fraction"] == 0.2 and synth["texts"] == len(part)

    # Equal budgets: both runs logged the same steps, up to the configured step count.
    curves = results["loss_curves"]
    steps = [step for step, _ in curves["vanilla"]]
    assert steps == [step for step, _ in curves["instruction-augmented"]]
    assert steps[-1] == cfg["pretrain_steps"]
    assert curves["synthesizer"][-1][0] == cfg["synthesizer_steps"]

    evaluations = results["evaluations"]
    assert list(evaluations) == _MODELS
    table = (out_dir / f"{_NAME}.md").read_text()
    for model in _MODELS:
        rows = evaluations[model]
        assert sorted(rows) == ["arith", "nli", "reading", "sentiment", "words"]
        assert rows["arith"]["rank_accuracy"] is None  # chains of thought have no options
        assert rows["sentiment"]["chance"] == pytest.approx(50.0)
        for row in rows.values():
            assert 0 <= row["accuracy"] <= 100 and row["target_loss"] > 0
    mean_loss = np.mean([r["target_loss"] for r in evaluations["vanilla"].values()])
    assert f"{mean_loss:.3f}" in table.split("| mean |")[1].splitlines()[0]


def test_corpus_is_disjoint_from_an_independent_list_of_the_synthesizers_texts(tmp_path):
    script = _load_script()
    # The synthesizer's texts, read from the demo generators directly (seed 0, train split):
    # the passage field of each context dataset (tasks/ipt/context_tasks.yaml's demo rows).
    from flan_jax.tasks.demo import collection

    fields = {"reading": "context", "nli": "premise", "sentiment": "text"}
    trained = {
        example[field]
        for cluster, field in fields.items()
        for _, example in collection.load_demo_split(cluster, split="train", seed=0)
    }
    assert script.synthesizer_texts() == trained
    config = script.ExperimentConfig(corpus_texts_per_dataset=40)
    path = tmp_path / "corpus.jsonl"
    counts = script.build_corpus(config, str(path))
    texts = [json.loads(line)["text"] for line in path.open()]
    assert len(texts) == len(set(texts)) == counts["num_texts"]
    assert not trained.intersection(texts)
    # Passages of every dataset, at most the configured number each (nli's generator
    # repeats its premises, so few are new).
    assert counts["per_dataset"]["reading"] == counts["per_dataset"]["sentiment"] == 40
    assert 0 < counts["per_dataset"]["nli"] <= 40
    seed1 = [
        ex["context"] for _, ex in collection.load_demo_split("reading", split="train", seed=1)
    ]
    assert set(texts) & set(seed1)  # the corpus is the other seed's passages


def test_table_and_findings_agree_with_the_scores():
    script = _load_script()

    def rows(accuracy, rank, loss):
        return {
            "arith": {"accuracy": accuracy, "rank_accuracy": None, "chance": None,
                      "target_loss": loss},
            "nli": {"accuracy": accuracy, "rank_accuracy": rank, "chance": 100 / 3,
                    "target_loss": loss + 1.0},
        }  # fmt: skip

    evaluations = {
        "initialisation": rows(0.0, 30.0, 7.0),
        "vanilla": rows(0.0, 40.0, 5.0),
        "instruction-augmented": rows(10.0, 50.0, 4.0),
    }
    table = script.format_table(evaluations)
    assert "| arith | n/a | 0.0 / n/a / 7.000 | 0.0 / n/a / 5.000 | 10.0 / n/a / 4.000 |" in table
    assert (
        "| mean | 33.3 | 0.0 / 30.0 / 7.500 | 0.0 / 40.0 / 5.500 | 10.0 / 50.0 / 4.500 |" in table
    )
    findings = script.summarize_findings({"evaluations": evaluations})
    assert findings == [
        "Held-out-template exact match (mean over clusters): vanilla 0, instruction-augmented "
        "10 (instruction-augmented better).",
        "Held-out-template rank classification (mean over clusters): vanilla 40, "
        "instruction-augmented 50 (instruction-augmented better).",
        "Held-out-template teacher-forced target loss (mean over clusters): vanilla 5.5, "
        "instruction-augmented 4.5 (instruction-augmented better).",
    ]
