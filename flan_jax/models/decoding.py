"""Decoding and scoring for any :class:`~flan_jax.models.interface.Model`: jit-compiled, batched.

- `greedy_decode`: the most likely token at every step.
- `temperature_sample`: sampling with temperature, top-k and top-p (nucleus) filtering;
  temperature 0 is greedy decoding.
- `beam_search`: beam search with the GNMT length penalty ((5 + length) / 6) ** alpha.
- `score_targets`: summed log-likelihood of given targets (EOS included), for rank
  classification.

The algorithms see the model only through its decode hooks (``init_decode_state``,
``decode_step``, ``reorder_decode_state``) and, for scoring, ``make_scoring_batch``,
``hidden_states`` and ``output_kernel``; the model is a static argument of ``jax.jit``.

Generated token arrays are [batch, max_decode_len]: the tokens after the start token 0, with
EOS (`eos_id`; 1, T5's, by default; the predictor passes its vocabulary's) included and 0
after it. :func:`flan_jax.inference.completion_tokens`
turns a row into the completion it holds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from flan_jax.kernels.fused_loss import token_logprobs_from_hidden
from flan_jax.models.interface import Model

Array = jax.Array
Params = Any

# Log-probability of impossible hypotheses; finite so that arithmetic on it never gives NaN.
NEG_INF = -1.0e7
EOS_ID = 1


@dataclasses.dataclass(frozen=True)
class DecodeResult:
    """Decoded sequences.

    Attributes:
      tokens: [batch, max_decode_len] for greedy / sampling; [batch, num_beams,
        max_decode_len] for beam search, best beam first.
      scores: [batch] summed log-probabilities of the tokens (greedy / sampling), or
        [batch, num_beams] length-penalised beam scores.
    """

    tokens: Array
    scores: Array


def _log_probs_step(model: Model, params: Params, state: Any, tokens: Array) -> tuple[Array, Any]:
    """Feeds `tokens` [batch]; returns log-probabilities [batch, vocab] and the new state."""
    logits, state = model.decode_step(params, state, tokens)
    return jax.nn.log_softmax(logits), state


# ------------------------------------------------------------------------------------------
# Greedy decoding and sampling
# ------------------------------------------------------------------------------------------
def filter_logits(logits: Array, *, top_k: int = 0, top_p: float = 1.0) -> Array:
    """Sets logits outside the top-k / nucleus (top-p) set to NEG_INF.

    Args:
      logits: [batch, vocab].
      top_k: Keep the k largest logits; 0 keeps all.
      top_p: Keep the smallest set of most likely tokens whose probability reaches top_p;
        1.0 keeps all. The most likely token is always kept.
    """
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # The smallest kept logit: the last sorted entry whose preceding mass is < top_p.
        num_kept = jnp.sum(mass_before < top_p, axis=-1, keepdims=True)
        threshold = jnp.take_along_axis(sorted_logits, num_kept - 1, axis=-1)
        logits = jnp.where(logits < threshold, NEG_INF, logits)
    return logits


@functools.partial(
    jax.jit, static_argnames=("model", "max_decode_len", "eos_id", "temperature", "top_k", "top_p")
)
def _sample_loop(
    model: Model,
    params: Params,
    inputs: Array,
    rng: Array,
    *,
    max_decode_len: int,
    eos_id: int,
    temperature: float,
    top_k: int,
    top_p: float,
) -> tuple[Array, Array]:
    batch = inputs.shape[0]
    decode_state = model.init_decode_state(params, inputs, max_decode_len=max_decode_len)

    def select(log_probs: Array, key: Array) -> Array:
        if temperature == 0.0:
            return jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
        filtered = filter_logits(log_probs / temperature, top_k=top_k, top_p=top_p)
        return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)

    def cond(state: tuple) -> Array:
        step, _, _, done, _, _, _ = state
        return (step < max_decode_len) & ~jnp.all(done)

    def body(state: tuple) -> tuple:
        step, last, out, done, total, decode_state, key = state
        log_probs, decode_state = _log_probs_step(model, params, decode_state, last)
        key, step_key = jax.random.split(key)
        token = jnp.where(done, 0, select(log_probs, step_key))
        chosen = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
        total = total + jnp.where(done, 0.0, chosen)
        out = out.at[:, step].set(token)
        return step + 1, token, out, done | (token == eos_id), total, decode_state, key

    init = (
        jnp.array(0),
        jnp.zeros((batch,), jnp.int32),
        jnp.zeros((batch, max_decode_len), jnp.int32),
        jnp.zeros((batch,), bool),
        jnp.zeros((batch,), jnp.float32),
        decode_state,
        rng,
    )
    _, _, out, _, total, _, _ = jax.lax.while_loop(cond, body, init)
    return out, total


def temperature_sample(
    model: Model,
    params: Params,
    inputs: ArrayLike,
    *,
    rng: Array | None = None,
    max_decode_len: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int = EOS_ID,
) -> DecodeResult:
    """Samples continuations, stopping each row at EOS.

    Args:
      model: The model (static under jit).
      params: Model parameters.
      inputs: [batch, input_len] int, 0-padded.
      rng: PRNG key; required unless temperature is 0.
      max_decode_len: Maximum number of generated tokens.
      temperature: Softmax temperature; 0 selects the most likely token (greedy).
      top_k: Sample among the k most likely tokens (0: all).
      top_p: Sample within the nucleus of probability top_p (1.0: all).
      eos_id: The end-of-sequence id.

    Returns:
      DecodeResult with tokens [batch, max_decode_len] and their summed log-probabilities
      under the unmodified model distribution.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}.")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}.")
    if rng is None:
        if temperature != 0.0:
            raise ValueError("temperature_sample needs an rng unless temperature is 0.")
        rng = jax.random.key(0)
    tokens, scores = _sample_loop(
        model,
        params,
        jnp.asarray(inputs),
        rng,
        max_decode_len=int(max_decode_len),
        eos_id=eos_id,
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
    )
    return DecodeResult(tokens, scores)


def greedy_decode(
    model: Model, params: Params, inputs: ArrayLike, *, max_decode_len: int, eos_id: int = EOS_ID
) -> DecodeResult:
    """Greedy decoding: `temperature_sample` at temperature 0."""
    return temperature_sample(
        model, params, inputs, temperature=0.0, max_decode_len=max_decode_len, eos_id=eos_id
    )


# ------------------------------------------------------------------------------------------
# Beam search
# ------------------------------------------------------------------------------------------
def length_penalty(length: Array | int, alpha: float) -> Array:
    """The GNMT length penalty ((5 + length) / 6) ** alpha that beam scores are divided by."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _top_k_along(values: Array, k: int, *arrays: Array) -> tuple[Array, ...]:
    """The k largest `values` [batch, n] and the matching rows of each [batch, n, ...] array."""
    top_values, indices = jax.lax.top_k(values, k)
    gathered = tuple(
        jnp.take_along_axis(a, indices.reshape(indices.shape + (1,) * (a.ndim - 2)), axis=1)
        for a in arrays
    )
    return (top_values, indices) + gathered


@functools.partial(
    jax.jit, static_argnames=("model", "num_beams", "alpha", "max_decode_len", "eos_id")
)
def _beam_search(
    model: Model,
    params: Params,
    inputs: Array,
    *,
    num_beams: int,
    alpha: float,
    max_decode_len: int,
    eos_id: int,
) -> tuple[Array, Array]:
    batch, k, length = inputs.shape[0], num_beams, max_decode_len
    # Row b * k + j of the decode state serves beam j of input b.
    decode_state = model.init_decode_state(
        params, jnp.repeat(inputs, k, axis=0), max_decode_len=length
    )
    best_bound = length_penalty(length, alpha)

    def cond(state: tuple) -> Array:
        step, _, alive_logp, _, finished_scores, _ = state
        # No alive hypothesis can still enter the finished top-k: its log-probability only
        # falls, and the largest penalty divisor is that of the maximum length.
        hopeless = jnp.min(finished_scores, axis=1) >= jnp.max(alive_logp, axis=1) / best_bound
        return (step < length) & ~jnp.all(hopeless)

    def body(state: tuple) -> tuple:
        step, alive_seqs, alive_logp, finished_seqs, finished_scores, decode_state = state
        last = jnp.where(step == 0, 0, alive_seqs[:, :, jnp.maximum(step - 1, 0)])
        log_probs, decode_state = _log_probs_step(model, params, decode_state, last.reshape(-1))
        vocab = log_probs.shape[-1]
        candidates = alive_logp[:, :, None] + log_probs.reshape(batch, k, vocab)
        # 2k candidates always leave k that did not just end with EOS.
        cand_logp, flat = jax.lax.top_k(candidates.reshape(batch, k * vocab), 2 * k)
        cand_beam, cand_token = flat // vocab, flat % vocab
        cand_seqs = jnp.take_along_axis(alive_seqs, cand_beam[:, :, None], axis=1)
        cand_seqs = cand_seqs.at[:, :, step].set(cand_token)
        ends = (cand_token == eos_id) | (step + 1 == length)
        real = cand_logp > NEG_INF / 2
        cand_scores = jnp.where(ends & real, cand_logp / length_penalty(step + 1, alpha), NEG_INF)
        alive_logp, _, alive_seqs, beam = _top_k_along(
            jnp.where(cand_token == eos_id, NEG_INF, cand_logp), k, cand_seqs, cand_beam
        )
        rows = jnp.arange(batch)[:, None] * k
        decode_state = model.reorder_decode_state(decode_state, (rows + beam).reshape(-1))
        finished_scores, _, finished_seqs = _top_k_along(
            jnp.concatenate([finished_scores, cand_scores], axis=1),
            k,
            jnp.concatenate([finished_seqs, cand_seqs], axis=1),
        )
        return step + 1, alive_seqs, alive_logp, finished_seqs, finished_scores, decode_state

    alive_logp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1)), (batch, 1))
    seqs = jnp.zeros((batch, k, length), jnp.int32)
    init = (jnp.array(0), seqs, alive_logp, seqs, jnp.full((batch, k), NEG_INF), decode_state)
    _, _, _, finished_seqs, finished_scores, _ = jax.lax.while_loop(cond, body, init)
    return finished_seqs, finished_scores


def beam_search(
    model: Model,
    params: Params,
    inputs: ArrayLike,
    *,
    max_decode_len: int,
    num_beams: int = 4,
    alpha: float = 0.6,
    eos_id: int = EOS_ID,
) -> DecodeResult:
    """Beam search for the sequences of highest length-penalised log-probability.

    A hypothesis is complete when it emits EOS or reaches `max_decode_len` tokens; its score
    is log p(tokens) / ((5 + number of tokens) / 6) ** alpha. The search stops early once no
    unfinished hypothesis can still beat the k best complete ones.

    Args:
      model: The model (static under jit).
      params: Model parameters.
      inputs: [batch, input_len] int, 0-padded.
      max_decode_len: Maximum number of generated tokens.
      num_beams: Beam width k.
      alpha: Length penalty exponent (0 disables it).
      eos_id: The end-of-sequence id.

    Returns:
      DecodeResult with tokens [batch, num_beams, max_decode_len] and scores
      [batch, num_beams], best first.
    """
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}.")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}.")
    tokens, scores = _beam_search(
        model,
        params,
        jnp.asarray(inputs),
        num_beams=int(num_beams),
        alpha=float(alpha),
        max_decode_len=int(max_decode_len),
        eos_id=eos_id,
    )
    return DecodeResult(tokens, scores)


# ------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnames=("model",))
def token_log_likelihoods(
    model: Model, params: Params, inputs: ArrayLike, targets: ArrayLike
) -> Array:
    """Log-probability of every scored token of the model's scoring batch; 0 elsewhere.

    The result is [batch, length of `make_scoring_batch`'s rows]: `target_len` for T5, and
    `input_len + target_len` for a decoder-only model (its rows hold the inputs too, with
    zero weight), so sums over the last axis are the targets' log-likelihoods either way.

    The fused kernel reads the log-softmax at the targets from the hidden states in
    vocabulary chunks, so no [batch, length, vocab] logits are materialised.
    """
    batch = model.make_scoring_batch(jnp.asarray(inputs), jnp.asarray(targets))
    hidden = model.hidden_states(params, batch)  # [batch, length, embed]
    target_tokens = batch["decoder_target_tokens"]
    chosen = token_logprobs_from_hidden(
        hidden, model.output_kernel(params), target_tokens[..., None]
    )[..., 0]
    return jnp.where(batch["decoder_loss_weights"] > 0, chosen, 0.0)


def score_targets(model: Model, params: Params, inputs: ArrayLike, targets: ArrayLike) -> Array:
    """Summed log-likelihood of each row's targets (EOS included, 0-padding excluded).

    Args:
      model: The model (static under jit).
      params: Model parameters.
      inputs: [batch, input_len] int, 0-padded.
      targets: [batch, target_len] int targets ending with EOS, then 0-padded.

    Returns:
      [batch] float32 log-likelihoods.
    """
    return jnp.sum(token_log_likelihoods(model, params, inputs, targets), axis=-1)
