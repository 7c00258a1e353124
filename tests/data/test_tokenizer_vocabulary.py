"""Hugging Face tokenizer.json and non-T5 SentencePiece models as seqio vocabularies."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sentencepiece as spm
import seqio
import tensorflow as tf
import tokenizers

from flan_jax.data import vocabularies
from flan_jax.data.tokenizer_vocabulary import TokenizerVocabulary
from flan_jax.testing.hf_decoders import write_test_tokenizer
from flan_jax.training import trainer

TEXTS = ["the cat answers seven questions", "héllo wörld, then finally: yes!", "", "  two  spaces"]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return write_test_tokenizer(tmp_path_factory.mktemp("tok"))


def test_encode_decode_equal_the_tokenizers_package(tokenizer_path):
    vocabulary = vocabularies.get_vocabulary(str(tokenizer_path))
    reference = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    assert isinstance(vocabulary, TokenizerVocabulary)
    assert vocabulary.vocab_size == reference.get_vocab_size() > 256
    assert (vocabulary.eos_id, vocabulary.pad_id, vocabulary.bos_id) == (2, 1, 0)
    for text in TEXTS:
        ids = list(vocabulary.encode(text))
        assert ids == reference.encode(text, add_special_tokens=False).ids
        assert vocabulary.decode(ids) == reference.decode(ids) == text
    # Decoding stops at the first EOS, as seqio's SentencePiece vocabulary does.
    ids = list(vocabulary.encode("yes no"))
    assert vocabulary.decode([*ids, 2, *vocabulary.encode("cat")]) == "yes no"


def test_tf_paths_equal_the_python_paths(tokenizer_path):
    vocabulary = vocabularies.get_vocabulary(str(tokenizer_path))
    for text in TEXTS:
        ids = vocabulary.encode_tf(tf.constant(text))
        assert ids.dtype == tf.int32 and ids.shape.rank == 1
        assert ids.numpy().tolist() == list(vocabulary.encode(text))
    rows = [list(vocabulary.encode(t)) for t in TEXTS[:2]]
    width = max(map(len, rows)) + 3
    batch = np.zeros((2, width), np.int32)  # eos then padding 0 (a real token here)
    for i, row in enumerate(rows):
        batch[i, : len(row) + 1] = [*row, vocabulary.eos_id]
    texts = vocabulary.decode_tf(tf.constant(batch))
    assert texts.shape == (2,)
    assert [t.decode() for t in texts.numpy()] == [vocabulary.decode(r) for r in batch] == TEXTS[:2]


def test_in_a_graph_the_shapes_are_static(tokenizer_path):
    vocabulary = vocabularies.get_vocabulary(str(tokenizer_path))

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def encode(text):
        ids = vocabulary.encode_tf(text)
        assert ids.shape.as_list() == [None]
        return ids

    assert encode(tf.constant("the cat")).numpy().tolist() == list(vocabulary.encode("the cat"))


def test_a_seqio_task_tokenizes_with_it(tokenizer_path):
    vocabulary = vocabularies.get_vocabulary(str(tokenizer_path))
    name = "test_tokenizer_vocabulary_task"
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files: tf.data.Dataset.from_tensor_slices(
                {"inputs": TEXTS[:2], "targets": TEXTS[1::-1]}
            ),
            splits=["train"],
        ),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos],
        output_features={
            key: seqio.Feature(vocabulary, add_eos=True) for key in ("inputs", "targets")
        },
    )
    try:
        examples = list(
            seqio.get_mixture_or_task(name)
            .get_dataset(None, split="train", shuffle=False)
            .as_numpy_iterator()
        )
        assert [e["inputs"].tolist() for e in examples] == [
            [*vocabulary.encode(t), vocabulary.eos_id] for t in TEXTS[:2]
        ]
        # The trainer stores this vocabulary in its checkpoints.
        assert trainer.get_task_vocabulary(name) == vocabulary
        assert vocabularies.vocabulary_file(vocabulary) == str(tokenizer_path)
    finally:
        seqio.TaskRegistry.remove(name)


def test_special_tokens_come_from_tokenizer_config(tmp_path):
    path = write_test_tokenizer(tmp_path, with_config=False)
    fallback = vocabularies.get_vocabulary(str(path))
    assert (fallback.eos_id, fallback.unk_id, fallback.pad_id) == (2, 3, 1)
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": {"content": "<unk>", "special": True}, "pad_token": None})
    )
    configured = vocabularies.get_vocabulary(str(path))
    assert configured.eos_id == 3
    assert configured != fallback and hash(configured) != hash(fallback)
    assert configured == vocabularies.get_vocabulary(str(path))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
    with pytest.raises(ValueError, match="eos_token '<|nope|>' is not in"):
        vocabularies.get_vocabulary(str(path))
    with pytest.raises(ValueError, match="extra_ids=3"):
        vocabularies.get_vocabulary(str(path), extra_ids=3)


def test_a_tokenizer_without_eos_is_explained(tmp_path):
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel({"a": 0, "b": 1}, unk_token="a"))
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="no end-of-sequence token: add .*tokenizer_config.json"):
        vocabularies.get_vocabulary(str(tmp_path / "tokenizer.json"))


def test_copy_vocabulary_brings_the_tokenizer_config(tokenizer_path, tmp_path):
    copied = vocabularies.copy_vocabulary(tokenizer_path, tmp_path / "ckpt")
    assert copied == tmp_path / "ckpt" / "tokenizer.json"
    assert (tmp_path / "ckpt" / "tokenizer_config.json").read_bytes() == (
        tokenizer_path.parent / "tokenizer_config.json"
    ).read_bytes()
    assert vocabularies.get_vocabulary(str(copied)) == vocabularies.get_vocabulary(
        str(tokenizer_path)
    )


def test_llama_layout_sentencepiece_model_exposes_its_eos(tmp_path):
    # SentencePiece's default layout is Llama 2's / Mistral's: unk 0, bos 1, eos 2.
    prefix = str(tmp_path / "llama_layout")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS[:2] * 20),
        model_prefix=prefix,
        vocab_size=40,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    vocabulary = vocabularies.get_vocabulary(prefix + ".model")
    assert (vocabulary.unk_id, vocabulary.bos_id, vocabulary.eos_id) == (0, 1, 2)
    ids = list(vocabulary.encode("the cat"))
    assert 1 not in ids  # no BOS: the model's start token plays that part
    assert vocabulary.decode([*ids, 2, 5]) == "the cat"
    assert vocabulary.encode_tf(tf.constant("the cat")).numpy().tolist() == ids
