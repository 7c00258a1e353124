"""Evaluation suites, the unit runner (progress, stored units, resume), reports, dtype choice.

Fast tests: fake predictors, the shared data for the file-based suites (skipped without it).
`flan-jax eval` end to end on a checkpoint is tests/cli/test_eval_cli.py.
"""

from __future__ import annotations

import json
import math

import pytest

from flan_jax.errors import ConfigError, UserError
from flan_jax.evaluation import flan_t5_data, flan_t5_suite, report, runner, suites
from flan_jax.inference import choose_activation_dtype
from flan_jax.tasks import data_paths
from flan_jax.testing.shared_data import shared_data_path


@pytest.fixture(scope="module")
def paths() -> data_paths.DataPaths:
    root = shared_data_path()
    for folder in ("gsm8k", "mgsm", "cot_exemplars"):
        shared_data_path(folder)
    return flan_t5_data.shared_data_paths(str(root))


def test_auto_dtype_is_float32_on_cpu_and_the_checkpoints_elsewhere():
    assert choose_activation_dtype("auto", checkpoint_dtype="bfloat16", platform="cpu") == "float32"
    assert (
        choose_activation_dtype("auto", checkpoint_dtype="bfloat16", platform="tpu") == "bfloat16"
    )
    assert choose_activation_dtype("auto", checkpoint_dtype="float32", platform="gpu") == "float32"
    assert choose_activation_dtype("bfloat16", checkpoint_dtype="float32", platform="cpu") == (
        "bfloat16"
    )
    with pytest.raises(ConfigError, match="float16"):
        choose_activation_dtype("float16", checkpoint_dtype="float32")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("flan_t6", "unknown suite 'flan_t6'"),
        ("tasks", "names no task"),
        ("math:gsm9k", "gsm9k"),
        ("flan_t5:bbh_cot/no_such_task", "no_such_task"),
        ("flan_t5:bbh_cott", "bbh_cott"),
    ],
)
def test_bad_suite_specs_are_user_errors(spec, message):
    with pytest.raises(UserError, match=message):
        suites.make_suite(spec)


def test_spec_items_pick_units():
    suite = suites.make_suite("flan_t5:mgsm_cot/de,bbh_direct")
    units = suite.units()
    assert units[0] == suites.Unit("mgsm_cot", "de")
    assert [u.subset for u in units[1:]] == list(flan_t5_data.benchmark_subsets("bbh"))
    assert [u.key for u in suites.make_suite("math:svamp,gsm8k").units()] == [
        "svamp/svamp",
        "gsm8k/gsm8k",
    ]


def _gsm8k_golds(n: int) -> list[str]:
    """The first golds of GSM8K test, read here from the raw JSONL."""
    lines = shared_data_path("gsm8k", "test.jsonl").read_text().splitlines()[:n]
    return [json.loads(line)["answer"].split("####")[-1].strip().replace(",", "") for line in lines]


def test_math_suite_scores_an_oracle_100_and_a_half_right_predictor_50(paths):
    suite = suites.make_suite("math:gsm8k", paths=paths, max_examples=4)
    golds = _gsm8k_golds(4)
    oracle = runner.run_suite(suite, lambda prompts: [f"So the answer is {g}." for g in golds])
    assert oracle.benchmarks["gsm8k"].score == 100.0 and oracle.average == 100.0
    half = [f"The answer is {g}." if i % 2 else "The answer is -1." for i, g in enumerate(golds)]
    assert runner.run_suite(suite, lambda prompts: half).benchmarks["gsm8k"].score == 50.0
    data = suite.load(suite.units()[0])
    first = json.loads(shared_data_path("gsm8k", "test.jsonl").read_text().splitlines()[0])
    assert data.prompts[0].endswith(f"Q: {first['question']}\nA:")
    assert data.prompts[0].count("The answer is") == 8  # the 8 CoT exemplars


def test_missing_math_file_is_named_with_how_to_get_it(tmp_path):
    suite = suites.make_suite("math:svamp", paths=data_paths.DataPaths(root=str(tmp_path)))
    with pytest.raises(data_paths.MissingDataError, match=r"svamp/SVAMP\.json.*arkilpatel"):
        suite.check_data()


def test_flan_t5_units_combine_like_score_suite(paths):
    """The unit-by-unit run equals `flan_t5_suite.score_suite` on the same predictor."""

    def predict(prompts):  # a deterministic, prompt-dependent answer
        return [f"The answer is {len(p) % 7}." for p in prompts]

    suite = suites.make_suite("flan_t5:mgsm_cot/fr,mgsm_cot/de", paths=paths, max_examples=5)
    result = runner.run_suite(suite, predict)
    direct = flan_t5_suite.score_suite(
        predict,
        paths=paths,
        settings=["mgsm_cot"],
        subsets={"mgsm": ["fr", "de"]},
        max_examples_per_subset=5,
    )
    ours, theirs = result.benchmarks["mgsm_cot"], direct.benchmarks["mgsm_cot"]
    assert ours.score == theirs.score and ours.breakdown == theirs.breakdown
    assert ours.normalized == theirs.normalized and result.average is None


class _CountingSuite(suites.Suite):
    """Two units of two prompts; a prediction is right when it repeats its prompt."""

    def units(self):
        return [suites.Unit("b", "x"), suites.Unit("b", "y")]

    def _load(self, unit):
        prompts = [f"{unit.subset}{i}" for i in range(2)]
        return suites.UnitData(prompts, prompts)

    def score(self, unit, data, predictions):
        right = sum(p == e for p, e in zip(predictions, data.examples))
        return {"accuracy": 50.0 * right, "num_examples": 2.0}

    def combine(self, results):
        rows = {u.subset: s for u, s in results.items()}
        score = sum(s["accuracy"] for s in rows.values()) / len(rows)
        benchmark = suites.BenchmarkResult("b", "accuracy", score, 4, rows)
        return suites.SuiteResult(self.spec, {"b": benchmark}, "mean", score)


def test_stored_units_are_not_predicted_again(tmp_path):
    calls: list[list[str]] = []

    def echo(prompts):
        calls.append(prompts)
        return list(prompts) if prompts[0].startswith("x") else ["wrong", prompts[1]]

    lines: list[str] = []
    store = runner.UnitStore(tmp_path, {"dtype": "float32"})
    first = runner.run_suite(_CountingSuite("count"), echo, store=store, log=lines.append)
    assert len(calls) == 2 and first.average == 75.0
    assert "count [1/2] b/x: 2 examples in" in lines[0] and "examples/s" in lines[0]
    again = runner.run_suite(_CountingSuite("count"), echo, store=store, log=lines.append)
    assert len(calls) == 2 and again == first
    assert lines[-1] == "count [2/2] b/y: stored (2 examples)"
    stored = json.loads((tmp_path / "b_y.json").read_text())
    assert stored["predictions"] == ["wrong", "y1"]

    (tmp_path / "b_x.json").unlink()  # an interrupted run: one unit missing
    runner.run_suite(_CountingSuite("count"), echo, store=store)
    assert len(calls) == 3
    other_settings = runner.UnitStore(tmp_path, {"dtype": "bfloat16"})
    runner.run_suite(_CountingSuite("count"), echo, store=other_settings)
    assert len(calls) == 5


def _result(label, step, num_params, scores, average):
    benchmarks = {
        name: suites.BenchmarkResult(name, "accuracy", v, 3, {name: {"accuracy": v}})
        for name, v in scores.items()
    }
    suite = suites.SuiteResult("math", benchmarks, "mean_accuracy", average)
    return report.CheckpointResult(
        f"/c/{label}", label, step, num_params, "float32", {"math": suite}
    )


def test_markdown_table_and_plots(tmp_path):
    results = [
        _result("small", 100, 1000, {"gsm8k": 10.0, "svamp": 20.0}, 15.0),
        _result("small", 200, 1000, {"gsm8k": 30.0, "svamp": 40.0}, 35.0),
        _result("large", 50, 5000, {"gsm8k": 50.0}, 50.0),
    ]
    table = report.to_markdown(results).splitlines()
    assert table[2] == (
        "| checkpoint | step | params | dtype | gsm8k | svamp | mean_accuracy | examples |"
    )
    assert table[5] == "| small | 200 | 1,000 | float32 | 30.0 | 40.0 | 35.0 | 6 |"
    assert table[6] == "| large | 50 | 5,000 | float32 | 50.0 | - | 50.0 | 3 |"
    written = report.write_report(str(tmp_path), results, {"max_examples": 3}, log=lambda _: None)
    assert written["results"][1]["suites"]["math"]["average"] == 35.0
    assert json.loads((tmp_path / "results.json").read_text()) == written
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["math_scaling.png", "math_scores.png", "math_steps_small.png"]
    assert all((tmp_path / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_scalars_name_benchmarks_and_the_average():
    result = _result("a", 1, 1, {"gsm8k": 10.0, "svamp": 30.0}, 20.0).suites["math"]
    assert result.scalars() == {
        "gsm8k/accuracy": 10.0,
        "svamp/accuracy": 30.0,
        "math/mean_accuracy": 20.0,
    }
    assert not math.isnan(result.num_examples)


@pytest.fixture(scope="module")
def demo_tasks():
    from flan_jax.tasks import demo

    demo.register_demo_tasks(demo.get_demo_vocabulary())


def _oracle(suite):
    """Predicts each unit's targets: the prompts are looked up in the loaded examples."""
    targets = {}
    for unit in suite.units():
        for ex in suite.load(unit).examples:
            targets[ex["inputs_pretokenized"]] = ex["targets_pretokenized"]
    return lambda prompts: [targets[p] for p in prompts]


def test_heldout_clusters_suite_scores_each_held_out_clusters_zero_shot_tasks(demo_tasks):
    from flan_jax.tasks.demo import collection

    suite = suites.make_suite("heldout_clusters:demo/words,demo/nli", max_examples=2)
    expected = collection.demo_eval_tasks()
    assert [(u.benchmark, u.subset) for u in suite.units()] == [
        (f"demo/{c}", expected[c][kind]) for c in ("words", "nli") for kind in ("seen", "unseen")
    ]
    result = runner.run_suite(suite, _oracle(suite))
    assert {b.score for b in result.benchmarks.values()} == {100.0}
    assert result.average == 100.0 and result.average_name == "mean_held_out_score"
    wrong = runner.run_suite(suite, lambda prompts: ["#" for _ in prompts])
    assert wrong.average == 0.0
    with pytest.raises(UserError, match="no_such"):
        suites.make_suite("heldout_clusters:demo/no_such")


def test_optiml_suite_has_a_benchmark_per_level(demo_tasks):
    from flan_jax.tasks.heldout import categories

    protocol = categories.register_optiml_protocol(demo=True)
    suite = suites.make_suite("optiml:demo,held_out_categories,held_out_tasks", max_examples=2)
    assert [(u.benchmark, u.subset) for u in suite.units()] == [
        (level, task)
        for level in ("held_out_categories", "held_out_tasks")
        for task in protocol.eval_tasks[level]
    ]
    result = runner.run_suite(suite, _oracle(suite))
    assert set(result.benchmarks) == {"held_out_categories", "held_out_tasks"}
    assert result.average == 100.0
    with pytest.raises(UserError, match="level4"):
        suites.make_suite("optiml:demo,level4")
