"""`flan-jax convert` on decoder-only Hugging Face directories, then `infer` / `score` / back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sentencepiece as spm

from flan_jax.cli import main as cli
from flan_jax.testing.hf_decoders import (
    HF_PARITY_CONFIGS,
    hf_state_dict_numpy,
    make_hf_decoder,
    write_test_tokenizer,
)

torch = pytest.importorskip("torch", reason="torch is the reference implementation")
transformers = pytest.importorskip("transformers", reason="the reference implementation")

LINES = [
    {"inputs": "the dog answers seven questions", "targets": "yes", "id": 1},
    {"inputs": "translate the river", "targets": "the cat", "id": 2},
    {"inputs": "first then finally", "targets": "no because", "id": 3},
]
MODEL = "llama_gqa_tied_biases"


def _read(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A transformers-written Llama directory with a tokenizer.json, converted to flan_jax."""
    root = tmp_path_factory.mktemp("decoder_cli")
    reference = make_hf_decoder(HF_PARITY_CONFIGS[MODEL], seed=3)
    reference.save_pretrained(root / "hf")
    write_test_tokenizer(root / "hf")
    argv = ["convert", "--from-hf", str(root / "hf"), "--out", str(root / "ckpt")]
    assert cli.main([*argv, "--dtype", "float32"]) == 0
    with open(root / "in.jsonl", "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in LINES)
    return root, reference


def test_the_checkpoint_holds_the_tokenizer(workdir):
    root, _ = workdir
    metadata = json.loads((root / "ckpt" / "flan_jax_config.json").read_text())
    assert metadata["model_kind"] == "decoder"
    assert metadata["vocabulary"] == {"path": "tokenizer.json", "extra_ids": 0}
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (root / "ckpt" / name).read_bytes() == (root / "hf" / name).read_bytes()
    assert metadata["model"]["start_token_id"] == HF_PARITY_CONFIGS[MODEL]["bos_token_id"]


def test_greedy_predictions_match_transformers_generate(workdir):
    from flan_jax.checkpoints import load_model_checkpoint

    root, reference = workdir
    out = root / "pred.jsonl"
    argv = ["infer", "--checkpoint", str(root / "ckpt"), "--input_file", str(root / "in.jsonl")]
    assert cli.main([*argv, "--output_file", str(out), "--max_decode_len", "6"]) == 0
    vocab = load_model_checkpoint(root / "ckpt").vocabulary
    bos, eos = HF_PARITY_CONFIGS[MODEL]["bos_token_id"], vocab.eos_id
    for line, record in zip(LINES, _read(out), strict=True):
        ids = torch.tensor([[bos, *vocab.encode(line["inputs"]), eos]])
        with torch.no_grad():
            generated = reference.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=6,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=vocab.pad_id,
            )[0, ids.shape[1] :].tolist()
        assert record["prediction"] == vocab.decode(generated)


def test_score_matches_transformers_log_likelihood(workdir):
    from flan_jax.checkpoints import load_model_checkpoint

    root, reference = workdir
    out = root / "scores.jsonl"
    argv = ["score", "--checkpoint", str(root / "ckpt"), "--input_file", str(root / "in.jsonl")]
    assert cli.main([*argv, "--output_file", str(out)]) == 0
    vocab = load_model_checkpoint(root / "ckpt").vocabulary
    bos, eos = HF_PARITY_CONFIGS[MODEL]["bos_token_id"], vocab.eos_id
    for line, record in zip(LINES, _read(out), strict=True):
        prompt = [bos, *vocab.encode(line["inputs"]), eos]
        target = [*vocab.encode(line["targets"]), eos]
        with torch.no_grad():
            logits = reference(input_ids=torch.tensor([prompt + target])).logits[0]
        log_probs = torch.log_softmax(logits, -1).numpy()
        expected = sum(log_probs[len(prompt) + j - 1, t] for j, t in enumerate(target))
        assert record["num_target_tokens"] == len(target)
        assert record["log_likelihood"] == pytest.approx(expected, abs=1e-4)


def test_export_reloads_in_transformers_with_identical_tensors(workdir):
    root, reference = workdir
    out = root / "hf_back"
    assert cli.main(["convert", "--to-hf", str(root / "ckpt"), "--out", str(out)]) == 0
    reloaded = transformers.LlamaForCausalLM.from_pretrained(out)
    expected = hf_state_dict_numpy(reference)
    for key, tensor in hf_state_dict_numpy(reloaded).items():
        np.testing.assert_array_equal(tensor, expected[key], err_msg=key)
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (0, 2)
    assert (out / "tokenizer.json").read_bytes() == (root / "hf" / "tokenizer.json").read_bytes()
    assert (out / "tokenizer_config.json").is_file()


def test_a_sentencepiece_tokenizer_model_is_converted_too(tmp_path):
    from flan_jax.checkpoints import load_model_checkpoint

    reference = make_hf_decoder(HF_PARITY_CONFIGS["mistral_gqa_sliding_window"], seed=4)
    reference.save_pretrained(tmp_path / "hf")
    # SentencePiece's default layout is Llama 2's / Mistral's: unk 0, bos 1, eos 2.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line["inputs"] for line in LINES] * 30),
        model_prefix=str(tmp_path / "hf" / "tokenizer"),
        vocab_size=40,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    argv = ["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]
    assert cli.main([*argv, "--dtype", "float32"]) == 0
    loaded = load_model_checkpoint(tmp_path / "ckpt")
    assert loaded.config.sliding_window == 5
    assert (loaded.vocabulary.eos_id, loaded.vocabulary.extra_ids) == (2, 0)
    argv = ["convert", "--to-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "back")]
    assert cli.main(argv) == 0
    assert (tmp_path / "back" / "tokenizer.model").read_bytes() == (
        tmp_path / "hf" / "tokenizer.model"
    ).read_bytes()
    assert json.loads((tmp_path / "back" / "config.json").read_text())["model_type"] == "mistral"
