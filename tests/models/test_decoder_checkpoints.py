"""Decoder-only checkpoints: save/load round trip, model kinds, and `flan-jax infer / score /
eval` on a tiny decoder checkpoint compared with the predictor called directly."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from flan_jax import checkpoints, inference
from flan_jax.cli import main as cli
from flan_jax.models import decoder, registry, t5
from flan_jax.models.config import T5Config
from flan_jax.testing.models import make_tiny_t5_config, save_tiny_demo_decoder_checkpoint
from flan_jax.training import checkpointing

TASK = "demo__arith__zs_noopt"
LINES = [
    {"inputs": "the dog answers seven questions", "targets": "yes", "id": 1},
    {"inputs": "translate the river", "targets": "the cat", "id": 2},
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder_ckpt")
    ckpt, params, config = save_tiny_demo_decoder_checkpoint(root, step=3)
    with open(root / "in.jsonl", "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in LINES)
    return root, ckpt, params, config


def test_a_decoder_checkpoint_round_trips(saved):
    _, ckpt, params, config = saved
    metadata = json.loads((ckpt / checkpoints.CONFIG_FILENAME).read_text())
    assert metadata["model_kind"] == "decoder"
    loaded = checkpoints.load_model_checkpoint(ckpt)
    assert loaded.config == config and loaded.step == 3
    assert isinstance(loaded.model, decoder.DecoderModel)
    assert loaded.vocabulary.eos_id == 1
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_without_model_kind_loads_as_t5(tmp_path, saved):
    root, *_ = saved
    config = make_tiny_t5_config(vocab_size=1024)
    ckpt = checkpoints.save_model_checkpoint(
        tmp_path / "old",
        params=t5.init_params(config, jax.random.key(0)),
        config=config,
        vocab_path=root / "ckpt" / checkpoints.VOCAB_FILENAME,
        extra_ids=0,
    )
    path = ckpt / checkpoints.CONFIG_FILENAME
    metadata = json.loads(path.read_text())
    assert metadata.pop("model_kind") == "t5"
    path.write_text(json.dumps(metadata))  # as written before decoder-only models
    loaded = checkpoints.load_model_checkpoint(ckpt)
    assert isinstance(loaded.config, T5Config) and isinstance(loaded.model, t5.T5Model)


def test_unknown_model_kind_is_named(tmp_path, saved):
    _, ckpt, *_ = saved
    metadata = json.loads((ckpt / checkpoints.CONFIG_FILENAME).read_text())
    (tmp_path / checkpoints.CONFIG_FILENAME).write_text(
        json.dumps({**metadata, "model_kind": "rnn"})
    )
    (tmp_path / checkpoints.VOCAB_FILENAME).write_bytes(
        (ckpt / checkpoints.VOCAB_FILENAME).read_bytes()
    )
    with pytest.raises(Exception, match="unknown model_kind 'rnn'.*'decoder', 't5'"):
        checkpoints.read_model_metadata(tmp_path)


def test_initial_params_of_another_model_kind_are_refused(saved):
    _, ckpt, *_ = saved
    model = t5.T5Model(make_tiny_t5_config(vocab_size=1024))
    with pytest.raises(checkpoints.CheckpointError, match="holds a 'decoder' model"):
        checkpointing.load_initial_params(
            ckpt,
            model_config=model.config,
            abstract_params=model.abstract_params(),
            shardings=None,
        )
    assert registry.kind_of(model.config) == "t5"


def _predictor(saved, **decode):
    _, ckpt, _, _ = saved
    loaded = checkpoints.load_model_checkpoint(ckpt)
    config = inference.DecodeConfig(max_decode_len=5, **decode)
    return inference.Predictor(loaded.model, loaded.params, loaded.vocabulary, config)


def _read(path):
    return [json.loads(line) for line in open(path)]


def test_infer_and_score_cli_on_a_decoder_checkpoint(tmp_path, saved):
    root, ckpt, *_ = saved
    common = ["--checkpoint", str(ckpt), "--input_file", str(root / "in.jsonl")]
    out = tmp_path / "infer.jsonl"
    assert cli.main(["infer", *common, "--output_file", str(out), "--max_decode_len", "5"]) == 0
    expected = _predictor(saved).predict([line["inputs"] for line in LINES])
    assert [row["prediction"] for row in _read(out)] == expected
    out = tmp_path / "score.jsonl"
    assert cli.main(["score", *common, "--output_file", str(out), "--max_target_len", "5"]) == 0
    scores = _predictor(saved).score(
        [line["inputs"] for line in LINES], [line["targets"] for line in LINES]
    )
    got = [row["log_likelihood"] for row in _read(out)]
    np.testing.assert_allclose(got, scores.log_likelihoods, rtol=1e-5)


def test_eval_cli_on_a_decoder_checkpoint(tmp_path, saved):
    _, ckpt, *_ = saved
    argv = ["eval", "--checkpoint", str(ckpt), "--suite", f"tasks:{TASK}"]
    argv += ["--max_examples", "2", "--max_decode_len", "4", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    assert any((tmp_path / "out").rglob("*.json"))
