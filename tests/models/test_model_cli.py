"""`flan-jax convert / infer / score` end to end on a tiny model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from flan_jax.cli import main as cli
from flan_jax.testing.models import (
    hf_state_dict_numpy,
    make_hf_reference,
    make_tiny_t5_config,
    write_test_sentencepiece,
)

torch = pytest.importorskip("torch", reason="torch is the reference implementation")
transformers = pytest.importorskip("transformers", reason="reference implementation")

LINES = [
    {"inputs": "the dog answers seven questions", "targets": "yes", "id": 1},
    {"inputs": "translate the river", "targets": "the cat", "id": 2},
    {"inputs": "first then finally", "targets": "no because", "id": 3},
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A transformers-written T5 1.0 directory with a vocabulary, converted to flan_jax."""
    root = tmp_path_factory.mktemp("cli")
    vocab = write_test_sentencepiece(root, vocab_size=96)
    config = make_tiny_t5_config(vocab_size=128, feed_forward="relu", tie_word_embeddings=True)
    reference = make_hf_reference(config, seed=0)
    reference.save_pretrained(root / "hf")
    shutil.copyfile(vocab, root / "hf" / "spiece.model")
    assert (
        cli.main(
            [
                "convert",
                "--from-hf",
                str(root / "hf"),
                "--out",
                str(root / "ckpt"),
                "--dtype",
                "float32",
                "--extra_ids",
                "4",
            ]
        )
        == 0
    )
    with open(root / "in.jsonl", "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in LINES)
    return root, reference


def _read(path):
    return [json.loads(line) for line in open(path)]


def _infer(root, out, *flags: str) -> None:
    """`flan-jax infer` on the test checkpoint and inputs, 6 decoded tokens at most."""
    argv = ["infer", "--checkpoint", str(root / "ckpt"), "--input_file", str(root / "in.jsonl")]
    assert cli.main([*argv, "--output_file", str(out), "--max_decode_len", "6", *flags]) == 0


def test_export_reloads_in_transformers_with_identical_tensors(workdir):
    root, reference = workdir
    assert cli.main(["convert", "--to-hf", str(root / "ckpt"), "--out", str(root / "hf_back")]) == 0
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(root / "hf_back")
    expected = hf_state_dict_numpy(reference)
    for key, tensor in hf_state_dict_numpy(reloaded).items():
        np.testing.assert_array_equal(tensor, expected[key], err_msg=key)
    assert (root / "hf_back" / "spiece.model").is_file()


@pytest.mark.parametrize(
    "decode",
    [
        ["--decode", "greedy"],
        ["--decode", "beam", "--num_beams", "3"],
        ["--decode", "sample", "--temperature", "0.7"],
    ],
)
def test_infer_adds_predictions(workdir, decode):
    root, _ = workdir
    out = root / f"pred_{decode[1]}.jsonl"
    _infer(root, out, *decode)
    records = _read(out)
    assert [r["id"] for r in records] == [1, 2, 3]
    assert all(isinstance(r["prediction"], str) for r in records)


def test_infer_from_gin_macros_equals_infer_from_flags(workdir):
    root, _ = workdir
    by_flags, by_gin = root / "by_flags.jsonl", root / "by_gin.jsonl"
    _infer(root, by_flags, "--decode", "beam", "--num_beams", "2")
    assert (
        cli.main(
            [
                "infer",
                "--gin_file=runs/infer.gin",
                f"--gin.CHECKPOINT_PATH={root / 'ckpt'}",
                f"--gin.INPUT_FILE={root / 'in.jsonl'}",
                f"--gin.OUTPUT_FILE={by_gin}",
                "--gin.MAX_DECODE_LEN=6",
                "--gin.DECODE=beam",
                "--gin.NUM_BEAMS=2",
            ]
        )
        == 0
    )
    assert _read(by_gin) == _read(by_flags)


def test_greedy_predictions_match_transformers_generate(workdir):
    from flan_jax.checkpoints import load_model_checkpoint

    root, reference = workdir
    out = root / "pred_check.jsonl"
    _infer(root, out)
    vocab = load_model_checkpoint(root / "ckpt").vocabulary
    for line, record in zip(LINES, _read(out)):
        ids = torch.tensor([list(vocab.encode(line["inputs"])) + [1]])
        generated = reference.generate(
            input_ids=ids,
            max_new_tokens=6,
            do_sample=False,
            num_beams=1,
            decoder_start_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
        )[0, 1:].tolist()
        generated = generated[: generated.index(1)] if 1 in generated else generated
        assert record["prediction"] == vocab.decode([t for t in generated if t != 0])


def test_score_matches_transformers_log_likelihood(workdir):
    from flan_jax.checkpoints import load_model_checkpoint

    root, reference = workdir
    out = root / "scores.jsonl"
    assert (
        cli.main(
            [
                "score",
                "--checkpoint",
                str(root / "ckpt"),
                "--input_file",
                str(root / "in.jsonl"),
                "--output_file",
                str(out),
            ]
        )
        == 0
    )
    vocab = load_model_checkpoint(root / "ckpt").vocabulary
    for line, record in zip(LINES, _read(out)):
        inputs = torch.tensor([list(vocab.encode(line["inputs"])) + [1]])
        targets = torch.tensor([list(vocab.encode(line["targets"])) + [1]])
        with torch.no_grad():
            logits = reference(input_ids=inputs, labels=targets).logits
        expected = torch.log_softmax(logits, -1)[0].gather(1, targets.T).sum().item()
        assert record["num_target_tokens"] == targets.shape[1]
        assert record["log_likelihood"] == pytest.approx(expected, abs=1e-4)


def test_bad_inputs_give_one_clear_error(workdir, tmp_path, capsys):
    root, _ = workdir
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"inputs": "fine"}\n{"inputs": oops}\n')
    args = ["--checkpoint", str(root / "ckpt"), "--output_file", str(tmp_path / "o.jsonl")]
    assert cli.main(["infer", "--input_file", str(bad), *args]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    bad.write_text('{"inputs": "fine"}\n')
    assert cli.main(["score", "--input_file", str(bad), *args]) == 2
    assert f"{bad}:1: field 'targets' must be a string" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "infer",
                "--checkpoint",
                str(tmp_path / "none"),
                "--input_file",
                str(root / "in.jsonl"),
                "--output_file",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["convert", "--from-hf", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
