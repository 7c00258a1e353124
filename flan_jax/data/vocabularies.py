"""Vocabulary files: SentencePiece models built offline, and opening any vocabulary file.

`get_vocabulary` opens a SentencePiece model (any id layout with an EOS) or a Hugging Face
`tokenizer.json` (`tokenizer_vocabulary.TokenizerVocabulary`) as a seqio vocabulary.

T5 models expect pad 0, eos 1, unk 2 and no BOS; the decoder starts from the pad id. A
model built here follows that layout, so `seqio.SentencePieceVocabulary` (which adds the
`extra_ids` sentinels at the top of the id range) works with it unchanged.

Building is reproducible: one training thread and no input sampling or shuffling, so the
same texts and settings give the same model bytes. Models are written atomically (a
temporary file renamed into place), so a crash or a concurrent builder never leaves a
truncated `.model` behind, and `get_or_build_vocabulary` caches them under a name derived
from a digest of the corpus and the settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

import sentencepiece as spm
import seqio

from flan_jax.data import file_io
from flan_jax.data.tokenizer_vocabulary import COMPANION_FILES, TokenizerVocabulary

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
CACHE_DIR_ENV = "FLAN_JAX_CACHE_DIR"


@dataclasses.dataclass(frozen=True)
class SentencePieceSettings:
    """How a SentencePiece model is trained.

    Attributes:
      vocab_size: the number of pieces (including pad, eos and unk).
      model_type: "unigram" (as T5) or "bpe".
      byte_fallback: encode unknown characters as byte pieces instead of unk.
      split_digits: one piece per digit (helps small models with arithmetic).
      hard_vocab_limit: if False, a small corpus may yield fewer pieces than asked.
      character_coverage: share of characters covered by pieces (1.0 keeps all).
    """

    vocab_size: int
    model_type: str = "unigram"
    byte_fallback: bool = False
    split_digits: bool = False
    hard_vocab_limit: bool = True
    character_coverage: float = 1.0

    def __post_init__(self):
        if self.vocab_size < 4:
            raise ValueError(
                f"SentencePieceSettings.vocab_size must be >= 4, got {self.vocab_size}."
            )
        if self.model_type not in ("unigram", "bpe"):
            raise ValueError(
                "SentencePieceSettings.model_type must be 'unigram' or 'bpe', "
                f"got {self.model_type!r}."
            )
        if not 0.0 < self.character_coverage <= 1.0:
            raise ValueError(
                "SentencePieceSettings.character_coverage must be in (0, 1], "
                f"got {self.character_coverage}."
            )


def default_cache_dir() -> str:
    """`$FLAN_JAX_CACHE_DIR`, else `~/.cache/flan_jax`."""
    return os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "flan_jax"
    )


def train_sentencepiece_bytes(texts: Iterable[str], settings: SentencePieceSettings) -> bytes:
    """Trains a SentencePiece model in memory; returns the serialized model."""
    lines = [line for text in texts for line in str(text).splitlines() if line.strip()]
    if not lines:
        raise ValueError("Cannot build a SentencePiece model from an empty corpus.")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=settings.vocab_size,
        model_type=settings.model_type,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        byte_fallback=settings.byte_fallback,
        split_digits=settings.split_digits,
        hard_vocab_limit=settings.hard_vocab_limit,
        character_coverage=settings.character_coverage,
        # Determinism: one thread, every sentence, in the given order.
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        max_sentence_length=1 << 16,
        minloglevel=2,
    )
    return model.getvalue()


def build_sentencepiece_model(
    texts: Iterable[str], out_prefix: str, vocab_size: int, **settings
) -> str:
    """Trains a T5-layout SentencePiece model and writes `{out_prefix}.model` atomically.

    Args:
      texts: the training corpus; each text may span several lines.
      out_prefix: the output path without the `.model` suffix.
      vocab_size: the number of pieces.
      **settings: further `SentencePieceSettings` fields.

    Returns:
      The path of the written model.
    """
    model_bytes = train_sentencepiece_bytes(
        texts, SentencePieceSettings(vocab_size=vocab_size, **settings)
    )
    path = f"{out_prefix}.model"
    file_io.write_atomically(path, lambda f: f.write(model_bytes), mode="wb")
    return path


def get_vocabulary(path: str, extra_ids: int = 0) -> seqio.Vocabulary:
    """Opens a vocabulary file as a seqio vocabulary, by its kind.

    - `*.json` (a Hugging Face `tokenizer.json`): a `TokenizerVocabulary` over the
      `tokenizers` package; its special tokens come from a sibling `tokenizer_config.json`.
    - anything else: a SentencePiece model as `seqio.SentencePieceVocabulary`, in any id
      layout that has an EOS piece: T5's (pad 0, eos 1, unk 2, no bos, as built here) or
      Llama 2 / Mistral's `tokenizer.model` (unk 0, bos 1, eos 2).

    Args:
      path: The vocabulary file.
      extra_ids: Sentinel ids added on top (T5 span corruption); SentencePiece only.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    if path.endswith(".json"):
        if extra_ids:
            raise ValueError(
                f"{path}: extra_ids={extra_ids}, but sentinel ids need a SentencePiece model; "
                "use extra_ids=0 with a tokenizer.json."
            )
        return TokenizerVocabulary(path)
    processor = spm.SentencePieceProcessor(model_file=path)
    if processor.eos_id() < 0:
        raise ValueError(
            f"{path}: the SentencePiece model has no end-of-sequence piece (eos_id -1); "
            "train it with an eos_id (T5 layout: pad 0, eos 1, unk 2)."
        )
    return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def vocabulary_file(vocabulary: seqio.Vocabulary) -> str:
    """The file a vocabulary of `get_vocabulary` was read from (checkpoints copy it)."""
    if isinstance(vocabulary, seqio.SentencePieceVocabulary):
        return vocabulary.sentencepiece_model_file
    if isinstance(vocabulary, TokenizerVocabulary):
        return vocabulary.tokenizer_file
    raise TypeError(
        f"{type(vocabulary).__name__} is not stored in a file; training and checkpoints "
        "need a SentencePiece model or a tokenizer.json (vocabularies.get_vocabulary)."
    )


def copy_vocabulary(path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Copies a vocabulary file, and the files it reads beside it, into `out_dir` atomically.

    Returns:
      The path of the copy (same file name as `path`).
    """
    source, out_dir = Path(path), Path(out_dir)
    names = [source.name]
    if source.suffix == ".json":
        names += [n for n in COMPANION_FILES if (source.parent / n).is_file()]
    for name in names:
        target = out_dir / name
        if target.exists() and os.path.samefile(source.parent / name, target):
            continue
        file_io.write_atomically(target, _writer((source.parent / name).read_bytes()), mode="wb")
    return out_dir / source.name


def _writer(data: bytes) -> Callable[[IO[bytes]], object]:
    return lambda f: f.write(data)


def corpus_digest(texts: Sequence[str], settings: SentencePieceSettings) -> str:
    """A digest naming a (corpus, settings, sentencepiece version) triple: the cache key.

    The version is part of it because sentencepiece releases write different models from
    the same corpus (0.2.2 and 0.2.3 differ in the normalizer's compiled character map).
    """
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
    digest.update(spm.__version__.encode("utf-8"))
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()


def get_or_build_vocabulary(
    name: str,
    make_corpus: Callable[[], Sequence[str]],
    settings: SentencePieceSettings,
    *,
    cache_dir: str | None = None,
    extra_ids: int = 0,
) -> seqio.SentencePieceVocabulary:
    """Returns the cached vocabulary for (corpus, settings), building it on first use.

    The file is `{cache_dir}/{name}_{digest[:16]}.model`, so a changed corpus, changed
    settings or another sentencepiece release build a new model instead of silently
    reusing a stale one.

    Args:
      name: a file-name prefix such as "demo_spm".
      make_corpus: returns the corpus texts (called on every use to compute the digest).
      settings: the training settings.
      cache_dir: where models are kept; `default_cache_dir()` when None.
      extra_ids: sentinel ids added by seqio on top of the model's pieces.
    """
    texts = list(make_corpus())
    cache_dir = cache_dir or default_cache_dir()
    path = os.path.join(cache_dir, f"{name}_{corpus_digest(texts, settings)[:16]}.model")
    if not os.path.exists(path):
        model_bytes = train_sentencepiece_bytes(texts, settings)
        file_io.write_atomically(path, lambda f: f.write(model_bytes), mode="wb")
    return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)
