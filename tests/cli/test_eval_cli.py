"""`flan-jax eval` end to end on tiny demo checkpoints: reports, numbers, resume, dtype.

Two checkpoint directories with the demo vocabulary: "small" (steps 1 and 2, recorded in
bfloat16) and "wide" (one step, more parameters), so the report has curves over steps and
a scaling plot. The numbers are checked against the predictor and the metrics called here
directly, on prompts built here.
"""

from __future__ import annotations

import json

import jax
import pytest

from flan_jax import checkpoints, inference
from flan_jax.cli import main as cli
from flan_jax.data import pipeline
from flan_jax.evaluation import answers, flan_t5_data, math_datasets
from flan_jax.models import t5
from flan_jax.tasks import demo
from flan_jax.testing.models import make_tiny_t5_config
from flan_jax.testing.shared_data import shared_data_path

pytestmark = pytest.mark.slow

TASK = "demo__arith__zs_noopt"
MAX_EXAMPLES, MAX_DECODE_LEN, MAX_INPUT_LEN = 3, 6, 512


def _save(path, config, steps, vocabulary):
    for step in steps:
        params = t5.T5Model(config).init_params(jax.random.key(step))
        checkpoints.save_model_checkpoint(
            path,
            params=params,
            config=config,
            vocab_path=vocabulary.sentencepiece_model_file,
            extra_ids=0,
            step=step,
        )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    shared = shared_data_path()
    shared_data_path("gsm8k", "test.jsonl")
    shared_data_path("cot_exemplars")
    root = tmp_path_factory.mktemp("eval_cli")
    vocabulary = demo.get_demo_vocabulary()
    small = make_tiny_t5_config(vocab_size=1024, dtype="bfloat16")
    _save(root / "small", small, [1, 2], vocabulary)
    _save(root / "wide", make_tiny_t5_config(vocab_size=1024, emb_dim=64), [5], vocabulary)
    argv = ["eval", "--checkpoint", str(root / "small"), "--checkpoint", str(root / "wide")]
    argv += ["--suite", f"tasks:{TASK}", "--suite", "math:gsm8k", "--data_root", str(shared)]
    argv += ["--max_examples", str(MAX_EXAMPLES), "--max_decode_len", str(MAX_DECODE_LEN)]
    argv += ["--out", str(root / "out")]
    assert cli.main(argv) == 0
    return root, argv


def _direct(ckpt, step):
    """Predictions and scores of one checkpoint step, computed without the eval code."""
    loaded = checkpoints.load_model_checkpoint(ckpt, step=step)
    config = loaded.config.replace(dtype="float32")  # what --dtype auto means on CPU
    decode = inference.DecodeConfig(
        max_decode_len=MAX_DECODE_LEN, batch_size=8, max_input_len=MAX_INPUT_LEN
    )
    predictor = inference.Predictor(t5.T5Model(config), loaded.params, loaded.vocabulary, decode)

    examples = pipeline.make_eval_examples(
        TASK,
        "validation",
        task_feature_lengths={"inputs": MAX_INPUT_LEN, "targets": MAX_DECODE_LEN},
        max_examples=MAX_EXAMPLES,
    )
    task_predictions = predictor.predict([ex["inputs_pretokenized"] for ex in examples])
    golds = [ex["targets_pretokenized"] for ex in examples]
    task_accuracy = 100.0 * sum(p.split() == g.split() for p, g in zip(task_predictions, golds))
    task_accuracy /= len(golds)

    problems = math_datasets.load_gsm8k(shared_data_path("gsm8k", "test.jsonl"))[:MAX_EXAMPLES]
    shots = flan_t5_data.read_math_cot_exemplars(
        str(shared_data_path("cot_exemplars", flan_t5_data.MATH_COT_EXEMPLARS))
    )
    prompts = ["\n\n".join([*shots, f"Q: {p.question}\nA:"]) for p in problems]
    math_predictions = predictor.predict(prompts)
    right = sum(answers.answers_match(x, p.answer) for x, p in zip(math_predictions, problems))
    return {
        "task": (task_predictions, task_accuracy),
        "math": (math_predictions, 100.0 * right / len(problems)),
    }


def test_reports_are_written_and_equal_the_direct_computation(run):
    root, _ = run
    out = root / "out"
    data = json.loads((out / "results.json").read_text())
    rows = {(r["label"], r["step"]): r for r in data["results"]}
    assert sorted(rows) == [("small", 1), ("small", 2), ("wide", 5)]
    assert rows[("wide", 5)]["num_params"] > rows[("small", 1)]["num_params"]
    # The checkpoint records bfloat16; --dtype auto evaluates in float32 on CPU.
    assert {r["dtype"] for r in rows.values()} == {"float32"}
    for label, step in [("small", 2), ("wide", 5)]:
        direct = _direct(root / label, step)
        suites = rows[(label, step)]["suites"]
        task = suites[f"tasks:{TASK}"]["benchmarks"][TASK]
        assert task["score"] == pytest.approx(direct["task"][1])
        assert task["num_examples"] == MAX_EXAMPLES
        gsm8k = suites["math:gsm8k"]["benchmarks"]["gsm8k"]
        assert gsm8k["score"] == pytest.approx(direct["math"][1])
        units = out / "units" / label / f"step_{step}"
        stored = json.loads((units / f"tasks_{TASK}" / f"{TASK}_{TASK}.json").read_text())
        assert stored["predictions"] == direct["task"][0]
        stored = json.loads((units / "math_gsm8k" / "gsm8k_gsm8k.json").read_text())
        assert stored["predictions"] == direct["math"][0]
        assert stored["settings"]["dtype"] == "float32"

    table = (out / "results.md").read_text()
    assert "## math:gsm8k" in table and "| small | 2 |" in table and "float32" in table
    pngs = {p.name for p in out.glob("*.png")}
    assert {
        f"tasks_{TASK}_scores.png",
        f"tasks_{TASK}_steps_small.png",
        f"tasks_{TASK}_scaling.png",
        "math_gsm8k_scores.png",
        "math_gsm8k_steps_small.png",
        "math_gsm8k_scaling.png",
    } == pngs


def test_rerun_skips_stored_units_and_redoes_a_missing_one(run, monkeypatch, capsys):
    root, argv = run
    calls = []
    predict = inference.Predictor.predict

    def counting(self, texts, **kwargs):
        calls.append(len(texts))
        return predict(self, texts, **kwargs)

    monkeypatch.setattr(inference.Predictor, "predict", counting)
    before = json.loads((root / "out" / "results.json").read_text())
    assert cli.main(argv) == 0
    assert calls == []
    assert json.loads((root / "out" / "results.json").read_text()) == before
    assert "stored (3 examples)" in capsys.readouterr().err

    (root / "out" / "units" / "small" / "step_1" / "math_gsm8k" / "gsm8k_gsm8k.json").unlink()
    assert cli.main(argv) == 0
    assert calls == [MAX_EXAMPLES]
    assert json.loads((root / "out" / "results.json").read_text()) == before
