"""The one inference path: tokenise, batch, decode or score, detokenise.

Every caller that generates or scores text (``flan-jax infer`` and ``score``, evaluation
during training, ``flan-jax distill select``, teacher sampling, the distillation experiment)
goes through a :class:`Predictor` configured by one :class:`DecodeConfig`; the algorithms
themselves live in :mod:`flan_jax.models.decoding` and see only the
:class:`~flan_jax.models.interface.Model` hooks.

What the predictor does around the algorithms:

- **Tokenisation**: ``vocabulary.encode(text)`` cut to ``max_len - 1`` tokens, then EOS, so a
  truncated input still ends with EOS (inputs: ``max_input_len``; scored targets:
  ``max_decode_len``).
- **Batching**: ``batch_size`` inputs per call (sampling decodes ``num_samples`` rows per
  input, beam search ``num_beams``). Every call of one ``predict`` has the same number of
  rows: ``batch_size``, or the smallest power of two holding all inputs when fewer; missing
  rows repeat the last real row (so they stop at EOS when it does) and are dropped.
- **Length buckets**: each batch is 0-padded to its longest row rounded up to a multiple of
  ``length_bucket``, so ``jax.jit`` compiles once per bucket, not once per length. Padding
  is masked, so a row decodes to the same tokens alone or in any padded batch.
- **The EOS rule** (:func:`completion_tokens`): a generated row is cut before its first EOS
  and nothing after it counts. A row without EOS (it hit ``max_decode_len``) keeps all its
  tokens except trailing 0s. A 0 before the end is kept: the model emitted it and conditioned
  the following tokens on it (its text is empty). Sampling rows after EOS are 0-padded by the
  decoding loop and beam rows hold 0 after EOS, so this one rule covers all methods.

Worked example (EOS = 1, max_decode_len = 6)::

    [7, 8, 1, 0, 0, 0] -> [7, 8]          EOS then padding
    [7, 0, 9, 1, 0, 0] -> [7, 0, 9]       a 0 the model emitted before EOS
    [7, 8, 9, 4, 0, 0] -> [7, 8, 9, 4]    no EOS: trailing 0s dropped
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, cast

import jax
import numpy as np
import seqio

from flan_jax.errors import ConfigError
from flan_jax.models import decoding
from flan_jax.models.interface import Model

EOS_ID = decoding.EOS_ID
METHODS = ("greedy", "sample", "beam")
# The activation dtypes a caller may ask for; "auto" is `choose_activation_dtype`'s rule.
DTYPE_CHOICES = ("auto", "float32", "bfloat16")


def choose_activation_dtype(
    requested: str, *, checkpoint_dtype: str, platform: str | None = None
) -> str:
    """The activation dtype to evaluate, score or decode in.

    "auto" is float32 on CPU and the checkpoint's dtype on accelerators: on CPU bfloat16
    activations cost accuracy and gain no speed (a converted HF T5 scored up to 9% relative
    away from transformers in bfloat16, and matched to 1.2e-5 in float32), while on TPU /
    GPU the checkpoint's dtype is what it was trained and tuned for. An explicit
    "float32" / "bfloat16" is used as given.

    Args:
      requested: one of `DTYPE_CHOICES`.
      checkpoint_dtype: the dtype recorded in the checkpoint's config.
      platform: the JAX backend ("cpu", "gpu", "tpu"); None asks JAX.
    """
    if requested not in DTYPE_CHOICES:
        raise ConfigError(f"dtype must be one of {DTYPE_CHOICES}, got {requested!r}.")
    if requested != "auto":
        return requested
    platform = jax.default_backend() if platform is None else platform
    return "float32" if platform == "cpu" else checkpoint_dtype


TokenRows = Sequence[Sequence[int]]
# One prediction per input (num_samples == 1) or a list of num_samples per input.
TokenPredictions = list[np.ndarray] | list[list[np.ndarray]]
TextPredictions = list[str] | list[list[str]]


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How predictions are decoded and how inputs are batched.

    Attributes:
      method: "greedy", "sample" (temperature / top-k / top-p) or "beam" (the best beam).
      max_decode_len: generated tokens per prediction; scored targets are cut to this many
        tokens (EOS included).
      temperature: sampling temperature (> 0; method "sample").
      top_k: sample among the k most likely tokens; 0 keeps all (method "sample").
      top_p: sample within the nucleus of this probability; 1.0 keeps all (method "sample").
      num_beams: beam width (method "beam").
      alpha: GNMT length penalty exponent of beam search (0 disables it).
      num_samples: predictions per input; > 1 only with method "sample".
      seed: sampling seed.
      batch_size: inputs per decoding or scoring call.
      max_input_len: input texts are cut to this many tokens (EOS included).
      length_bucket: input and target lengths are padded to a multiple of this.
    """

    method: str = "greedy"
    max_decode_len: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 4
    alpha: float = 0.6
    num_samples: int = 1
    seed: int = 0
    batch_size: int = 32
    max_input_len: int = 512
    length_bucket: int = 32

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"DecodeConfig.method must be one of {METHODS}; got {self.method!r}.")
        for name in (
            "max_decode_len",
            "num_beams",
            "num_samples",
            "batch_size",
            "max_input_len",
            "length_bucket",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"DecodeConfig.{name} must be >= 1; got {getattr(self, name)}.")
        if self.method == "sample" and not self.temperature > 0:
            raise ConfigError(
                f"DecodeConfig.temperature must be > 0 with method 'sample' (use "
                f"method 'greedy' for temperature 0); got {self.temperature}."
            )
        if self.top_k < 0:
            raise ConfigError(f"DecodeConfig.top_k must be >= 0; got {self.top_k}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"DecodeConfig.top_p must be in (0, 1]; got {self.top_p}.")
        if self.alpha < 0:
            raise ConfigError(f"DecodeConfig.alpha must be >= 0; got {self.alpha}.")
        if self.num_samples > 1 and self.method != "sample":
            raise ConfigError(
                f"DecodeConfig.num_samples > 1 needs method 'sample'; got "
                f"num_samples={self.num_samples} with method {self.method!r}."
            )


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """Log-likelihoods of targets given inputs.

    Attributes:
      log_likelihoods: [num_pairs] float32, summed over the target tokens (EOS included).
      num_tokens: [num_pairs] int, the scored target tokens (EOS included).
    """

    log_likelihoods: np.ndarray
    num_tokens: np.ndarray


def completion_tokens(row: Sequence[int] | np.ndarray, *, eos_id: int = EOS_ID) -> np.ndarray:
    """The completion a generated row holds: up to its first EOS, or without trailing 0s.

    See the module docstring for the rule and a worked example.
    """
    row = np.asarray(row)
    eos = np.flatnonzero(row == eos_id)
    if len(eos):
        return row[: eos[0]]
    real = np.flatnonzero(row != 0)
    return row[: real[-1] + 1] if len(real) else row[:0]


def encode_text(vocabulary: seqio.Vocabulary, text: str, *, max_len: int) -> list[int]:
    """Token ids of ``text`` cut to ``max_len - 1``, then the vocabulary's EOS (kept when
    truncating)."""
    return list(vocabulary.encode(text))[: max_len - 1] + [int(vocabulary.eos_id)]


def pad_token_rows(
    rows: TokenRows, *, length_multiple: int, num_rows: int | None = None
) -> np.ndarray:
    """0-pads token rows to their longest length rounded up to ``length_multiple``.

    Args:
      rows: token id lists (at least one).
      length_multiple: the padded length is a multiple of this.
      num_rows: pad to this many rows by repeating the last row (None: ``len(rows)``).

    Returns:
      int32 ``[num_rows, length]``.
    """
    num_rows = len(rows) if num_rows is None else num_rows
    longest = max(1, max(len(row) for row in rows))
    length = -(-longest // length_multiple) * length_multiple
    out = np.zeros((num_rows, length), np.int32)
    for i in range(num_rows):
        row = rows[min(i, len(rows) - 1)]
        out[i, : len(row)] = row
    return out


def _rows_per_call(num_inputs: int, batch_size: int) -> int:
    """``batch_size``, or the smallest power of two holding all inputs when fewer."""
    if num_inputs >= batch_size:
        return batch_size
    return min(batch_size, 1 << max(num_inputs - 1, 0).bit_length())


class Predictor:
    """Generates and scores text with one model and its parameters.

    Args:
      model: the model (hashable; static under jit).
      params: its parameters.
      vocabulary: tokenises inputs and detokenises predictions; its ``eos_id`` ends inputs
        and generations.
      config: decoding and batching options.

    Example::

        predictor = Predictor(T5Model(config), params, vocabulary, DecodeConfig(method="beam"))
        predictor.predict(["translate English to German: the house"])  # ["das Haus"]
    """

    def __init__(
        self,
        model: Model,
        params: Any,
        vocabulary: seqio.Vocabulary,
        config: DecodeConfig = DecodeConfig(),
    ) -> None:
        self.model = model
        self.params = params
        self.vocabulary = vocabulary
        self.config = config
        # The vocabulary's EOS (1 for T5's SentencePiece, 2 for OPT, 128001 for Llama 3);
        # token-level use (`predict_tokens`) may pass no vocabulary: T5's EOS then.
        self.eos_id = EOS_ID if vocabulary is None else int(vocabulary.eos_id)

    def tokenize(self, texts: Sequence[str], *, max_len: int | None = None) -> list[list[int]]:
        """Token rows of ``texts`` ending with EOS, cut to ``max_len`` (default max_input_len)."""
        max_len = self.config.max_input_len if max_len is None else max_len
        return [encode_text(self.vocabulary, text, max_len=max_len) for text in texts]

    def detokenize(self, tokens: Sequence[int] | np.ndarray) -> str:
        """The text of a completion (as :func:`completion_tokens` returns it)."""
        return self.vocabulary.decode([int(t) for t in tokens])

    def predict(self, texts: Sequence[str], *, rng: jax.Array | None = None) -> TextPredictions:
        """Predicted texts, one per input (a list of ``num_samples`` when sampling several)."""
        predictions = self.predict_tokens(self.tokenize(texts), rng=rng)
        if self.config.num_samples == 1:  # one array per input
            return [self.detokenize(tokens) for tokens in cast(list[np.ndarray], predictions)]
        rows = cast(list[list[np.ndarray]], predictions)  # num_samples arrays per input
        return [[self.detokenize(tokens) for tokens in samples] for samples in rows]

    def predict_tokens(
        self, token_rows: TokenRows, *, rng: jax.Array | None = None
    ) -> TokenPredictions:
        """Completions (:func:`completion_tokens`) of token rows, used as given (not cut).

        Args:
          token_rows: input token ids per input, EOS included, without padding.
          rng: the sampling key (default ``jax.random.key(config.seed)``); the batch
            starting at input ``i`` samples with ``jax.random.fold_in(rng, i)``.

        Returns:
          One int32 array per input, or with ``num_samples > 1`` a list of that many.
        """
        if not len(token_rows):
            return []
        config = self.config
        rng = jax.random.key(config.seed) if rng is None else rng
        num_rows = _rows_per_call(len(token_rows), config.batch_size)
        predictions: list[Any] = []
        for start in range(0, len(token_rows), num_rows):
            rows = list(token_rows[start : start + num_rows])
            inputs = pad_token_rows(rows, length_multiple=config.length_bucket, num_rows=num_rows)
            generated = self._decode(inputs, jax.random.fold_in(rng, start))[: len(rows)]
            for outputs in generated:  # [num_samples, max_decode_len]
                completions = [completion_tokens(row, eos_id=self.eos_id) for row in outputs]
                predictions.append(completions if config.num_samples > 1 else completions[0])
        return predictions

    def _decode(self, inputs: np.ndarray, rng: jax.Array) -> np.ndarray:
        """Generated rows ``[len(inputs), num_samples, max_decode_len]`` (EOS, then 0s)."""
        config, model, params = self.config, self.model, self.params
        if config.method == "beam":
            result = decoding.beam_search(
                model,
                params,
                inputs,
                max_decode_len=config.max_decode_len,
                num_beams=config.num_beams,
                alpha=config.alpha,
                eos_id=self.eos_id,
            )
            return np.asarray(result.tokens[:, :1])  # the best beam
        if config.method == "greedy":
            result = decoding.greedy_decode(
                model, params, inputs, max_decode_len=config.max_decode_len, eos_id=self.eos_id
            )
            return np.asarray(result.tokens)[:, None]
        # Sample j of input i is row i * num_samples + j.
        result = decoding.temperature_sample(
            model,
            params,
            np.repeat(inputs, config.num_samples, axis=0),
            rng=rng,
            max_decode_len=config.max_decode_len,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            eos_id=self.eos_id,
        )
        return np.asarray(result.tokens).reshape(len(inputs), config.num_samples, -1)

    def score(self, inputs: Sequence[str], targets: Sequence[str]) -> ScoreResult:
        """Log-likelihood of each target text given its input text (rank classification).

        Inputs are cut to ``max_input_len`` and targets to ``max_decode_len`` tokens, both
        ending with EOS; the EOS of the target is scored.
        """
        if len(inputs) != len(targets):
            raise ValueError(
                f"Predictor.score needs one target per input; got {len(inputs)} "
                f"inputs and {len(targets)} targets."
            )
        input_rows = self.tokenize(inputs)
        target_rows = self.tokenize(targets, max_len=self.config.max_decode_len)
        num_rows = _rows_per_call(len(input_rows), self.config.batch_size)
        scores: list[np.ndarray] = []
        for start in range(0, len(input_rows), num_rows):
            stop = start + num_rows
            pad = {"length_multiple": self.config.length_bucket, "num_rows": num_rows}
            batch_scores = decoding.score_targets(
                self.model,
                self.params,
                pad_token_rows(input_rows[start:stop], **pad),
                pad_token_rows(target_rows[start:stop], **pad),
            )
            scores.append(np.asarray(batch_scores)[: len(input_rows[start:stop])])
        return ScoreResult(
            np.concatenate(scores) if scores else np.zeros((0,), np.float32),
            np.array([len(row) for row in target_rows], np.int64),
        )
