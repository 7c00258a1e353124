"""`flan-jax distill train` and `flan-jax distill select` on a tiny student, against direct math."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax import checkpoints
from flan_jax.cli import distill as distill_cli
from flan_jax.cli import main as cli
from flan_jax.data.vocabularies import build_sentencepiece_model, get_vocabulary
from flan_jax.distill import alignment, formats, targets
from flan_jax.distill.kl_loss import SPARSE_KL
from flan_jax.distill.teacher_store import TeacherStore, TeacherStoreWriter
from flan_jax.evaluation import answers
from flan_jax.evaluation.math_datasets import load_math_dataset
from flan_jax.models import decoding, t5
from flan_jax.testing.kernels import dense_logits, naive_sparse_kl
from flan_jax.testing.models import make_tiny_t5_config
from flan_jax.training import adafactor, losses, partitioning, train_state, train_step

LEARNING_RATE = 0.01
LENGTHS = {"inputs": 48, "targets": 32}


def _question(i: int) -> str:
    return f"Tom has {i} apples and buys 2 more. How many apples does he have?"


def _completion(i: int) -> str:
    return f"Tom starts with {i} apples. {i} + 2 = {i + 2}. The answer is {i + 2}."


def _teacher_tokens(text: str) -> list[str]:
    """A byte-level-BPE-like split of ``text`` ("Ġ" marks a space), unlike SentencePiece's."""
    words = text.split(" ")
    return [words[0]] + [f"Ġ{word}" for word in words[1:]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny student checkpoint (step 0), its vocabulary and a 6-sample teacher store."""
    root = tmp_path_factory.mktemp("distill_cli")
    texts = [
        f"Q: {_question(i)} A: Let's think step by step. {_completion(i)}" for i in range(40)
    ] + ["Sam reads 12 pages. Mia sold 3 cakes. Ben walks 7 miles."]
    vocab_path = build_sentencepiece_model(texts, str(root / "spiece"), 100, hard_vocab_limit=False)
    config = make_tiny_t5_config(vocab_size=128)
    params = t5.init_params(config, jax.random.key(0))
    student = str(root / "student")
    checkpoints.save_model_checkpoint(
        student, params=params, config=config, vocab_path=vocab_path, extra_ids=0, step=0
    )
    store = str(root / "store")
    with TeacherStoreWriter(store, k=4) as writer:
        for i in range(6):
            tokens = _teacher_tokens(_completion(i))
            rows = [
                {token: -0.2, "Ġ7": -2.0, "Ġapples": -3.0}
                if token != "Ġ7"
                else {token: -0.1, "Ġ8": -2.5}
                for token in tokens
            ]
            writer.add_strings(
                f"toy/{i}",
                tokens,
                rows,
                metadata={"question": _question(i), "answer": str(i + 2), "text": _completion(i)},
            )
    return {
        "root": root,
        "student": student,
        "store": store,
        "config": config,
        "params": params,
        "vocabulary": get_vocabulary(vocab_path),
    }


def _train_argv(setup, model_dir, *extra: str) -> list[str]:
    return [
        "train",
        "--gin_file=runs/distill.gin",
        f"--gin.STUDENT={setup['student']}",
        f"--gin.MODEL_DIR={model_dir}",
        "--gin.BATCH_SIZE=4",
        f"--gin.LEARNING_RATE={LEARNING_RATE}",
        f"--gin.FEATURE_LENGTHS={LENGTHS}",
        "--gin.LOG_PERIOD=1",
        "--gin.metrics.MetricsConfig.tensorboard=False",
        *extra,
    ]


def _naive_first_loss(setup, batch, loss: losses.LossConfig) -> float:
    """The per-token KL + z-loss of the untrained student with full logits."""
    params, config = setup["params"], setup["config"]
    hidden = t5.EncoderDecoder(config).apply(
        {"params": params},
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        return_hidden=True,
    )
    kernel = t5.output_kernel(params)
    kl = naive_sparse_kl(
        hidden,
        kernel,
        jnp.asarray(batch["teacher_ids"]),
        jnp.asarray(batch["teacher_logprobs"]),
        missing_mass="drop",
        temperature=1.0,
    )
    lse = jax.nn.logsumexp(dense_logits(hidden, kernel), axis=-1)
    weights = batch["decoder_loss_weights"]
    return float(jnp.sum(weights * (kl + loss.z_loss * lse**2)) / jnp.sum(weights))


def _direct_first_step_metrics(setup, batch, loss: losses.LossConfig):
    """One train step of the student on ``batch``, without the trainer's loop."""
    model = t5.T5Model(setup["config"])
    mesh = partitioning.make_mesh(partitioning.MeshConfig(), jax.devices()[:1])
    rules = partitioning.get_logical_axis_rules("1d")
    axes = model.param_logical_axes()
    optimizer = adafactor.make_adafactor(
        LEARNING_RATE, param_axes=axes, config=adafactor.AdafactorConfig()
    )
    shardings = train_state.get_train_state_shardings(
        model.abstract_params(), axes, optimizer, mesh, rules
    )
    step = train_step.make_train_step(
        model=model,
        optimizer=optimizer,
        loss_config=loss,
        mesh=mesh,
        rules=rules,
        state_shardings=shardings,
    )
    state = train_state.init_sharded_train_state(
        jax.tree.map(np.asarray, setup["params"]), optimizer, shardings
    )
    _, metrics = step(state, partitioning.make_global_batch(batch, mesh, rules))
    return metrics


def test_distill_train_saves_steps_and_its_first_loss_matches_direct_paths(setup, tmp_path):
    model_dir = str(tmp_path / "run")
    argv = _train_argv(
        setup,
        model_dir,
        f"--gin.STORE={setup['store']}",
        "--gin.TRAIN_STEPS=4",
        "--gin.SAVE_PERIOD=2",
    )
    assert distill_cli.main(argv) == 0
    assert [s for s in sorted(os.listdir(model_dir)) if s.isdigit()] == ["2", "4"]
    with open(os.path.join(model_dir, "metrics.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    assert [line["step"] for line in logged] == [1, 2, 3, 4]
    with open(os.path.join(model_dir, "distill_summary.json")) as f:
        summary = json.load(f)
    assert summary["num_examples"] == {formats.ZS_COT: 6} and summary["loss_kind"] == SPARSE_KL

    # The same first batch, built directly, through the train step alone.
    store = TeacherStore(setup["store"])
    stats = alignment.AlignmentStats()
    examples = targets.build_teacher_examples(
        store,
        setup["vocabulary"],
        distribution=True,
        ratios={formats.ZS_COT: 1.0},
        seed=0,
        stats=stats,
    )
    assert summary["alignment_fallback_rate"] == pytest.approx(stats.fallback_rate)
    assert 0.0 < stats.fallback_rate < 1.0  # some tokens carry the teacher's distribution
    batch = next(
        targets.DistillationBatches(
            examples,
            batch_size=4,
            seed=0,
            inputs_length=LENGTHS["inputs"],
            targets_length=LENGTHS["targets"],
        )
    )
    loss = losses.LossConfig(
        kind=SPARSE_KL,
        z_loss=1e-4,
        normalization="num_real_target_tokens",
        kind_options={"missing_mass": "drop", "temperature": 1.0},
    )
    metrics = _direct_first_step_metrics(setup, batch, loss)
    np.testing.assert_allclose(
        logged[0]["train/loss"], float(metrics["loss"]), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        logged[0]["train/loss"], _naive_first_loss(setup, batch, loss), rtol=1e-5, atol=1e-5
    )

    trained = checkpoints.load_model_checkpoint(model_dir, step=4)
    assert trained.config == setup["config"]
    changes = [
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(setup["params"]))
    ]
    assert max(changes) > 1e-4


_KILL_AT_BATCH = """
import os, sys
from flan_jax.cli import distill as distill_cli
from flan_jax.cli import main as cli
from flan_jax.distill import targets

calls = 0
serve = targets.DistillationBatches.__next__


def serve_then_die(self):
    global calls
    calls += 1
    if calls == {kill_at}:
        os._exit(3)  # SIGKILL-like: no cleanup, no final checkpoint
    return serve(self)


targets.DistillationBatches.__next__ = serve_then_die
sys.exit(distill_cli.main({argv!r}))
"""


def _final_params_and_data_state(model_dir: str, step: int):
    from flan_jax.training import checkpointing

    loaded = checkpoints.load_model_checkpoint(model_dir, step=step)
    manager = checkpointing.TrainCheckpointManager(
        model_dir,
        checkpointing.CheckpointConfig(),
        model_config=loaded.config,
        vocab_path=loaded.vocabulary.sentencepiece_model_file,
        extra_ids=0,
    )
    try:
        return loaded.params, manager.read_data_state(step)
    finally:
        manager.close()


def test_distill_train_killed_after_a_checkpoint_resumes_exactly(setup, tmp_path):
    """Killed while fetching step 4's batch (step 2 saved), resumed to 6 == 6 uninterrupted."""
    import subprocess
    import sys

    def argv(model_dir):
        return _train_argv(
            setup,
            str(model_dir),
            f"--gin.STORE={setup['store']}",
            "--gin.TRAIN_STEPS=6",
            "--gin.SAVE_PERIOD=2",
            "--gin.SEED=1",
            "--gin.checkpointing.CheckpointConfig.async_save=False",
        )

    killed = tmp_path / "killed"
    script = _KILL_AT_BATCH.format(kill_at=4, argv=argv(killed))
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert child.returncode == 3, child.stderr[-3000:]
    assert [s for s in sorted(os.listdir(killed)) if s.isdigit()] == ["2"]
    assert distill_cli.main(argv(killed)) == 0  # resumes from step 2
    uninterrupted = tmp_path / "uninterrupted"
    assert distill_cli.main(argv(uninterrupted)) == 0

    resumed_params, resumed_data = _final_params_and_data_state(str(killed), 6)
    whole_params, whole_data = _final_params_and_data_state(str(uninterrupted), 6)
    assert resumed_data == whole_data and resumed_data["position"] > 0
    for a, b in zip(jax.tree.leaves(resumed_params), jax.tree.leaves(whole_params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    with open(killed / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == [1, 2, 3, 3, 4, 5, 6]  # the resumed leg redoes step 3 from step 2


def _write_eval_files(root, answer_of) -> dict[str, str]:
    """GSM8K JSONL, SVAMP JSON and MultiArith JSON files in their original formats."""
    paths = {
        name: str(root / f"{name}.{ext}")
        for name, ext in (("gsm8k", "jsonl"), ("svamp", "json"), ("multiarith", "json"))
    }
    with open(paths["gsm8k"], "w") as f:
        f.writelines(
            json.dumps(
                {
                    "question": f"Ann has {i} pens. How many pens?",
                    "answer": f"She has {i}.\n#### {answer_of(i)}",
                }
            )
            + "\n"
            for i in range(4)
        )
    with open(paths["svamp"], "w") as f:
        json.dump(
            [
                {
                    "ID": f"chal-{i}",
                    "Body": f"Bob has {i + 10} cars.",
                    "Question": "How many cars does he have?",
                    "Equation": "x",
                    "Answer": float(answer_of(i + 1)),
                    "Type": "Addition",
                }
                for i in range(5)
            ],
            f,
        )
    with open(paths["multiarith"], "w") as f:
        json.dump(
            [
                {
                    "iIndex": i,
                    "sQuestion": f"Sue had {i + 20} cakes. How many now?",
                    "lSolutions": [answer_of(i + 2)],
                }
                for i in range(3)
            ],
            f,
        )
    return paths


def _direct_accuracy(model_dir: str, step: int, examples, max_decode_len: int) -> int:
    """Correct count from one-example greedy decoding in zero-shot answer-only format."""
    loaded = checkpoints.load_model_checkpoint(model_dir, step=step)
    correct = 0
    for example in examples:
        prompt = formats.render_inputs(example, formats.ZS_ANSWER_ONLY)
        encoder = np.zeros((1, 64), np.int32)
        ids = targets.encode_text(loaded.vocabulary, prompt)
        encoder[0, : len(ids)] = ids
        tokens = np.asarray(
            decoding.greedy_decode(
                loaded.model, loaded.params, encoder, max_decode_len=max_decode_len
            ).tokens
        )[0]
        end = int(np.argmax(tokens == 1)) if (tokens == 1).any() else len(tokens)
        text = loaded.vocabulary.decode(tokens[:end].tolist())
        correct += answers.answers_match(text, example.answer)
    return correct


def test_distill_select_matches_direct_greedy_counts_and_picks_best(setup, tmp_path):
    # Answer-only fine-tuning on gold problems whose answer is always 5 makes a student that
    # answers 5: the eval sets mix answer 5 with others, so accuracies are not all zero.
    train_path = tmp_path / "train.jsonl"
    train_path.write_text(
        "".join(
            json.dumps({"question": _question(i), "answer": "Add.\n#### 5"}) + "\n"
            for i in range(8)
        )
    )
    model_dir = str(tmp_path / "answer_only")
    argv = _train_argv(
        setup,
        model_dir,
        "--gin.STORE=None",
        "--gin.LOSS_KIND='cross_entropy'",
        "--gin.KIND_OPTIONS={}",
        f"--gin.TRAIN_DATA={train_path}",
        "--gin.GOLD_RATIOS={'zs_answer_only': 1}",
        "--gin.TRAIN_STEPS=10",
        "--gin.SAVE_PERIOD=2",
        "--gin.LEARNING_RATE=0.03",
    )
    assert distill_cli.main(argv) == 0
    paths = _write_eval_files(tmp_path, lambda i: 5 if i % 2 else i + 7)
    out = str(tmp_path / "selection.json")
    argv = [
        "select",
        "--checkpoint_dir",
        model_dir,
        "--format",
        "zs_answer_only",
        "--dev",
        "svamp,multiarith",
        "--max_decode_len",
        "16",
        "--batch_size",
        "4",
        "--out",
        out,
    ] + [f"--eval={name}={path}" for name, path in paths.items()]
    assert distill_cli.main(argv) == 0
    with open(out) as f:
        result = json.load(f)

    sets = {name: load_math_dataset(name, path) for name, path in paths.items()}
    expected = {
        step: {
            name: _direct_accuracy(model_dir, step, examples, 16) for name, examples in sets.items()
        }
        for step in (2, 4, 6, 8, 10)
    }
    got = {row["step"]: row["correct"] for row in result["table"]["rows"]}
    assert got == expected
    # Not a degenerate table: the dev accuracy changes during training.
    assert len({tuple(row.values()) for row in expected.values()}) > 1
    dev_mean = {
        step: np.mean([row[name] / len(sets[name]) for name in ("svamp", "multiarith")])
        for step, row in expected.items()
    }
    best = max(dev_mean, key=lambda step: (dev_mean[step], -step))
    assert result["selection"]["step"] == best
    assert result["selection"]["dev_accuracy"] == pytest.approx(dev_mean[best])

    # Self-consistency: 3 samples at a near-zero temperature all equal the greedy output,
    # so the majority vote reproduces the greedy counts.
    voted_out = str(tmp_path / "voted.json")
    voted_argv = [a if a != out else voted_out for a in argv]
    assert distill_cli.main(voted_argv + ["--num_samples", "3", "--temperature", "1e-4"]) == 0
    with open(voted_out) as f:
        voted = json.load(f)
    assert {row["step"]: row["correct"] for row in voted["table"]["rows"]} == expected
    assert voted["decode"]["num_samples"] == 3


def test_distill_select_rejects_dev_sets_that_overlap_training(setup, tmp_path, capsys):
    paths = _write_eval_files(tmp_path, lambda i: i)
    train_path = tmp_path / "train.jsonl"
    train_path.write_text(
        json.dumps({"question": "Sue had 21 cakes.  How many now?", "answer": "21"}) + "\n"
    )
    out = str(tmp_path / "selection.json")
    argv = [
        "select",
        "--checkpoint_dir",
        setup["student"],
        "--dev",
        "multiarith",
        f"--eval=multiarith={paths['multiarith']}",
        "--train_questions",
        str(train_path),
        "--out",
        out,
    ]
    assert cli.main(["distill", *argv]) == 2
    error = capsys.readouterr().err
    assert "dev set 'multiarith' shares 1 question" in error and "multiarith/1" in error
    assert not os.path.exists(out)
