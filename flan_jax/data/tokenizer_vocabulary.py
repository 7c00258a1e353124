"""A Hugging Face `tokenizer.json` as a seqio vocabulary, through the `tokenizers` package.

Decoder-only checkpoints (OPT, Llama 3, Mistral) ship their tokenizer as `tokenizer.json`
(the "fast" tokenizer). `TokenizerVocabulary` wraps it so seqio's `tokenize` preprocessor,
our tasks, the trainer and the predictor use it as they use a SentencePiece model.

Which ids are special is not in `tokenizer.json` itself; Hugging Face keeps it in the
sibling `tokenizer_config.json` (`"eos_token": "</s>"`, or an added-token dict with a
`"content"`). That file is read when present, and checkpoints copy it beside the tokenizer
(`COMPANION_FILES`). Without it, EOS is the first of the usual names (`</s>`,
`<|end_of_text|>`, `<|endoftext|>`, `<eos>`) that the tokenizer holds.

Encoding adds no special tokens: the model's `start_token_id` plays the part of BOS, and
the task appends EOS, as with the T5 vocabulary.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import seqio
import tensorflow as tf
import tokenizers

CONFIG_FILENAME = "tokenizer_config.json"
# Files that travel with `tokenizer.json` when it is copied into a checkpoint.
COMPANION_FILES = (CONFIG_FILENAME,)
# Names checked, in order, when tokenizer_config.json does not name a special token.
_FALLBACK_NAMES = {
    "eos": ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>"),
    "unk": ("<unk>", "<|unk|>"),
    "pad": ("<pad>", "<|pad|>"),
    "bos": ("<s>", "<|begin_of_text|>", "<bos>"),
}


def _special_token_name(value: Any) -> str | None:
    """`"</s>"` or `{"content": "</s>", ...}` (an AddedToken dict) -> `"</s>"`."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_special_names(config_path: Path) -> dict[str, str]:
    """{"eos": "</s>", ...} from tokenizer_config.json; {} when the file is absent."""
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path}: not valid JSON ({error}).") from error
    names = {}
    for kind in _FALLBACK_NAMES:
        name = _special_token_name(config.get(f"{kind}_token"))
        if name is not None:
            names[kind] = name
    return names


class TokenizerVocabulary(seqio.Vocabulary):
    """A `tokenizer.json` as a `seqio.Vocabulary` (no extra ids: sentinels need SentencePiece).

    Attributes:
      tokenizer_file: the `tokenizer.json` it was loaded from.
    """

    def __init__(self, tokenizer_file: str):
        path = Path(tokenizer_file)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        self.tokenizer_file = str(path)
        self._file_bytes = path.read_bytes()
        try:
            self._tokenizer = tokenizers.Tokenizer.from_str(self._file_bytes.decode("utf-8"))
        except Exception as error:  # tokenizers raises its own Exception type on bad JSON.
            raise ValueError(f"{path}: not a tokenizers JSON file ({error}).") from error
        self._special_ids = self._find_special_ids(path)
        if self._special_ids.get("eos") is None:
            raise ValueError(
                f"{path}: no end-of-sequence token: add {path.parent / CONFIG_FILENAME} with "
                f'"eos_token" naming one (tried {", ".join(_FALLBACK_NAMES["eos"])}).'
            )
        super().__init__(extra_ids=0)

    def _find_special_ids(self, path: Path) -> dict[str, int | None]:
        configured = _read_special_names(path.parent / CONFIG_FILENAME)
        ids: dict[str, int | None] = {}
        for kind, fallbacks in _FALLBACK_NAMES.items():
            if kind in configured:
                token_id = self._tokenizer.token_to_id(configured[kind])
                if token_id is None:
                    raise ValueError(
                        f"{path.parent / CONFIG_FILENAME}: {kind}_token "
                        f"{configured[kind]!r} is not in {path}."
                    )
                ids[kind] = token_id
                continue
            found = (self._tokenizer.token_to_id(name) for name in fallbacks)
            ids[kind] = next((i for i in found if i is not None), None)
        return ids

    @property
    def eos_id(self) -> int:
        return int(self._special_ids["eos"])  # type: ignore[arg-type]  # checked in __init__

    @property
    def unk_id(self) -> int | None:
        return self._special_ids["unk"]

    @property
    def bos_id(self) -> int | None:
        return self._special_ids["bos"]

    @property
    def pad_id(self) -> int:
        # seqio pads with 0 whatever this says; decoder-only rows mark padding with segment
        # id 0, so a real token 0 is never mistaken for padding.
        pad = self._special_ids["pad"]
        return seqio.vocabularies.PAD_ID if pad is None else pad

    @property
    def _base_vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def _encode(self, s: str) -> Sequence[int]:
        return self._tokenizer.encode(s, add_special_tokens=False).ids

    def _decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        """Encodes a scalar string tensor to int32 ids [length] (seqio's tokenize step)."""

        def encode(text: tf.Tensor) -> np.ndarray:
            return np.asarray(self._encode(text.numpy().decode("utf-8")), np.int32)

        ids = tf.py_function(encode, [s], tf.int32)
        ids.set_shape([None])
        return ids

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """Decodes ids [..., length] to strings [...], each up to its first EOS."""

        def decode(batch: tf.Tensor) -> np.ndarray:
            array = batch.numpy()
            rows = array.reshape(-1, array.shape[-1]) if array.size else array.reshape(0, 0)
            texts = [self._decode(row).encode("utf-8") for row in rows]
            return np.asarray(texts, dtype=object).reshape(array.shape[:-1])

        texts = tf.py_function(decode, [ids], tf.string)
        texts.set_shape(ids.shape[:-1])
        return texts

    def _identity(self) -> tuple[str, tuple[tuple[str, int | None], ...]]:
        digest = hashlib.sha256(self._file_bytes).hexdigest()
        return digest, tuple(sorted(self._special_ids.items()))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenizerVocabulary):
            return False
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __str__(self) -> str:
        return f"TokenizerVocabulary({self.tokenizer_file}, eos_id={self.eos_id})"
