"""Offline SentencePiece models: T5 id layout, reproducible, atomic, cached by content."""

import os

import pytest
import sentencepiece as spm

from flan_jax.data import vocabularies

TEXTS = [
    f"{name} has {n} apples. So the answer is {n + 2}."
    for n in range(40)
    for name in ("Ana", "Ben", "Carla")
]


def test_model_has_the_t5_layout_and_round_trips(tmp_path):
    path = vocabularies.build_sentencepiece_model(
        TEXTS, str(tmp_path / "spm"), 60, hard_vocab_limit=False
    )
    vocabulary = vocabularies.get_vocabulary(path, extra_ids=5)
    processor = spm.SentencePieceProcessor(model_file=path)
    assert (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()) == (
        0,
        1,
        2,
        -1,
    )
    assert vocabulary.vocab_size == processor.vocab_size() + 5
    text = "Ben has 7 apples."
    assert vocabulary.decode(vocabulary.encode(text)) == text
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def test_same_corpus_and_settings_give_the_same_model_bytes():
    settings = vocabularies.SentencePieceSettings(60, hard_vocab_limit=False)
    assert vocabularies.train_sentencepiece_bytes(TEXTS, settings) == (
        vocabularies.train_sentencepiece_bytes(TEXTS, settings)
    )


def test_cache_is_keyed_by_corpus_and_settings(tmp_path):
    settings = vocabularies.SentencePieceSettings(60, hard_vocab_limit=False)
    first = vocabularies.get_or_build_vocabulary(
        "t", lambda: TEXTS, settings, cache_dir=str(tmp_path)
    )
    mtime = os.path.getmtime(first.sentencepiece_model_file)
    again = vocabularies.get_or_build_vocabulary(
        "t", lambda: TEXTS, settings, cache_dir=str(tmp_path)
    )
    assert again.sentencepiece_model_file == first.sentencepiece_model_file
    assert os.path.getmtime(again.sentencepiece_model_file) == mtime
    other = vocabularies.get_or_build_vocabulary(
        "t", lambda: TEXTS[:-5], settings, cache_dir=str(tmp_path)
    )
    assert other.sentencepiece_model_file != first.sentencepiece_model_file


def test_model_without_eos_and_bad_settings_are_explained(tmp_path):
    prefix = str(tmp_path / "no_eos")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXTS),
        model_prefix=prefix,
        vocab_size=40,
        hard_vocab_limit=False,
        eos_id=-1,
        minloglevel=2,
    )
    with pytest.raises(ValueError, match="no end-of-sequence piece"):
        vocabularies.get_vocabulary(prefix + ".model")
    with pytest.raises(FileNotFoundError, match="not found"):
        vocabularies.get_vocabulary(str(tmp_path / "missing.model"))
    with pytest.raises(ValueError, match="model_type"):
        vocabularies.SentencePieceSettings(100, model_type="word")
    with pytest.raises(ValueError, match="empty corpus"):
        vocabularies.build_sentencepiece_model(["", " "], prefix, 50)
