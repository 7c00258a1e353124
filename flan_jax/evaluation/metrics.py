"""seqio metric functions for every task family: `f(targets, predictions) -> {name: score}`.

Scores are on a 0-100 scale, as in t5 and FLAN. Targets and predictions are the
postprocessed texts of a task (seqio calls `metric_fn(targets, predictions)`); the scoring
itself is done by the reference packages, `rouge-score` and `sacrebleu`, configured as the
t5 library's `t5.evaluation.metrics` (which FLAN's tasks use) configures them:

| function              | keys                      | what it is                                   |
|-----------------------|---------------------------|----------------------------------------------|
| `accuracy`            | accuracy                  | `target.strip() == prediction.strip()`       |
| `exact_match`         | exact_match               | equality after SQuAD's `normalize_answer`    |
| `squad`               | em, f1                    | SQuAD v1.1's official EM and token-bag F1    |
| `rouge`               | rouge1, rouge2, rougeLsum | mean ROUGE F-measure (`rouge_score`)         |
| `bleu`                | bleu                      | corpus BLEU (`sacrebleu.corpus_bleu`)        |
| `cot_accuracy`        | accuracy                  | the answer after "the answer is" (`answers`) |
| `niv2`                | exact_match, rougeL       | NIv2's `compute_metrics` (English track)     |
| `rank_classification` | accuracy                  | highest-log-likelihood option == gold option |

Worked example:

    squad(["the Eiffel Tower"], ["Eiffel tower."])          -> {"em": 100.0, "f1": 100.0}
    squad([["4", "four"]], ["four"])                         -> {"em": 100.0, "f1": 100.0}
    cot_accuracy(["So the answer is 72."], ["... So the answer is 72.0."])
                                                             -> {"accuracy": 100.0}

Where a target may have several gold answers (`squad`, `rouge`, `bleu`, `niv2`), `targets[i]`
is a string or a sequence of strings, and the best-matching gold counts.
"""

from __future__ import annotations

import collections
import difflib
import re
import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer

from flan_jax.evaluation import answers

Target = str | Sequence[str]
Scores = dict[str, float]
# A scorer: the log-likelihood of each (input, target) pair, e.g.
# `lambda i, t: predictor.score(i, t).log_likelihoods` (flan_jax.inference.Predictor).
ScoreFn = Callable[[Sequence[str], Sequence[str]], Sequence[float]]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeLsum")
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def _check_lengths(name: str, targets: Sequence, predictions: Sequence) -> None:
    if len(targets) != len(predictions):
        raise ValueError(
            f"{name}: got {len(targets)} targets but {len(predictions)} predictions; "
            "pass one prediction per target."
        )


def _golds(target: Target) -> list[str]:
    """A target's gold answers: `"x"` -> `["x"]`; a sequence as a list (never empty)."""
    golds = [target] if isinstance(target, str) else list(target)
    if not golds:
        raise ValueError("A target has no gold answer; give at least one string.")
    return golds


def _percent(hits: Sequence[float]) -> float:
    return 100.0 * float(np.mean(hits)) if len(hits) else 0.0


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> Scores:
    """Percentage of predictions equal to their target, ignoring surrounding whitespace."""
    _check_lengths("accuracy", targets, predictions)
    return {"accuracy": _percent([t.strip() == p.strip() for t, p in zip(targets, predictions)])}


def _remove_punctuation(text: str) -> str:
    return "".join(ch for ch in text if ch not in _PUNCTUATION)


def normalize_squad_answer(text: str) -> str:
    """SQuAD v1.1's `normalize_answer`: lowercase, drop ASCII punctuation, drop the articles
    a/an/the, collapse whitespace. `"The  Eiffel-Tower!"` -> `"eiffeltower"`."""
    text = _remove_punctuation(text.lower())
    return " ".join(_ARTICLES_RE.sub(" ", text).split())


def normalize_niv2_answer(text: str) -> str:
    """NIv2's normalisation: SQuAD's without removing articles (its evaluation.py says so).
    `"The Eiffel-Tower!"` -> `"the eiffeltower"`."""
    return " ".join(_remove_punctuation(text.lower()).split())


def exact_match(targets: Sequence[Target], predictions: Sequence[str]) -> Scores:
    """Percentage of predictions equal to a gold answer after `normalize_squad_answer`."""
    _check_lengths("exact_match", targets, predictions)
    hits = [
        max(normalize_squad_answer(p) == normalize_squad_answer(g) for g in _golds(t))
        for t, p in zip(targets, predictions)
    ]
    return {"exact_match": _percent(hits)}


def _token_f1(prediction: str, gold: str) -> float:
    """SQuAD v1.1's F1 over the bags of normalised tokens (0 when nothing is shared, so
    also when both are empty, as in v1.1)."""
    predicted_tokens = normalize_squad_answer(prediction).split()
    gold_tokens = normalize_squad_answer(gold).split()
    shared = sum(
        (collections.Counter(predicted_tokens) & collections.Counter(gold_tokens)).values()
    )
    if shared == 0:
        return 0.0
    precision = shared / len(predicted_tokens)
    recall = shared / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Target], predictions: Sequence[str]) -> Scores:
    """SQuAD v1.1's exact match and F1, each the max over the gold answers, averaged."""
    _check_lengths("squad", targets, predictions)
    em = [
        max(normalize_squad_answer(p) == normalize_squad_answer(g) for g in _golds(t))
        for t, p in zip(targets, predictions)
    ]
    f1 = [max(_token_f1(p, g) for g in _golds(t)) for t, p in zip(targets, predictions)]
    return {"em": _percent(em), "f1": _percent(f1)}


def _sentences_on_lines(summary: str) -> str:
    # rougeLsum splits summaries on newlines; t5's rouge puts one after each " . ".
    return summary.replace(" . ", " .\n")


def rouge(targets: Sequence[Target], predictions: Sequence[str]) -> Scores:
    """Mean ROUGE-1/2/Lsum F-measure x100, configured as t5's `rouge` (default tokenizer,
    no stemming, " . " starts a new line for rougeLsum).

    t5 reports the median of bootstrap resamples of the mean; the mean itself is reported
    here, so scores do not depend on a random resampling. With several golds, each ROUGE
    type takes its best-scoring gold per prediction (FLAN's `rouge_fn`, from GEM).
    """
    _check_lengths("rouge", targets, predictions)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES))
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for target, prediction in zip(targets, predictions):
        per_gold = [
            scorer.score(target=_sentences_on_lines(g), prediction=_sentences_on_lines(prediction))
            for g in _golds(target)
        ]
        for rouge_type in ROUGE_TYPES:
            totals[rouge_type] += max(s[rouge_type].fmeasure for s in per_gold)
    count = max(len(targets), 1)
    return {rouge_type: 100.0 * total / count for rouge_type, total in totals.items()}


def bleu(targets: Sequence[Target], predictions: Sequence[str]) -> Scores:
    """Corpus BLEU with t5's `bleu` settings: `tokenize="intl"`, `smooth_method="exp"`,
    `smooth_value=0.0`, case-sensitive, no effective order. Several golds per target become
    sacrebleu reference streams (None where a target has fewer)."""
    _check_lengths("bleu", targets, predictions)
    golds = [_golds(t) for t in targets]
    num_streams = max((len(g) for g in golds), default=1)
    streams = [[g[i] if i < len(g) else None for g in golds] for i in range(num_streams)]
    score = sacrebleu.corpus_bleu(
        list(predictions),
        streams,  # type: ignore[arg-type]  # sacrebleu documents None as "no reference"
        smooth_method="exp",
        smooth_value=0.0,
        force=False,
        lowercase=False,
        tokenize="intl",
        use_effective_order=False,
    )
    return {"bleu": float(score.score)}


def cot_gold_answer(target: str) -> str:
    """The gold answer of a CoT target: X of "... So the answer is X.", else the target.

    A target without the marker is a bare gold answer ("72", "(B)", "Mrs. Hilt").
    """
    marked = answers.marked_answer_span(target)
    return marked if marked is not None else target.strip()


def cot_accuracy(targets: Sequence[str], predictions: Sequence[str]) -> Scores:
    """Accuracy of the answer a chain of thought ends with ("So the answer is X.").

    The gold is `cot_gold_answer(target)`; the prediction's answer is read by
    `answers.answers_match`: numerically when the gold is a number ("72" == "72.0" ==
    "$72"), else as normalised text ("(C)" == "C", "Mrs. Hilt" == "mrs. hilt.").
    """
    _check_lengths("cot_accuracy", targets, predictions)
    hits = [answers.answers_match(p, cot_gold_answer(t)) for t, p in zip(targets, predictions)]
    return {"accuracy": _percent(hits)}


def niv2(targets: Sequence[Target], predictions: Sequence[str]) -> Scores:
    """NIv2's `compute_metrics` (allenai/natural-instructions eval/automatic/evaluation.py).

    Exact match after `normalize_niv2_answer` and ROUGE-L F-measure (`rouge_score`'s default
    tokenizer with the Porter stemmer, NIv2's English-track setting), each the max over the
    gold answers, x100. NIv2's cross-lingual track tokenises with GPT-2's tokenizer instead;
    that track is not implemented (the default tokenizer keeps only [a-z0-9] tokens, so
    non-Latin outputs score 0 ROUGE-L here). NIv2 rounds to 4 decimals; this does not.
    """
    _check_lengths("niv2", targets, predictions)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    em, rouge_l = [], []
    for target, prediction in zip(targets, predictions):
        golds = _golds(target)
        em.append(max(normalize_niv2_answer(prediction) == normalize_niv2_answer(g) for g in golds))
        rouge_l.append(
            max(scorer.score(target=g, prediction=prediction)["rougeL"].fmeasure for g in golds)
        )
    return {"exact_match": _percent(em), "rougeL": _percent(rouge_l)}


def choose_options(option_scores: Sequence[Sequence[float]]) -> list[int]:
    """Per example, the index of the highest score (the first one on ties, as np.argmax)."""
    chosen = []
    for index, scores in enumerate(option_scores):
        if len(scores) == 0:
            raise ValueError(f"Example {index} has no answer options to rank.")
        chosen.append(int(np.argmax(np.asarray(scores, dtype=np.float64))))
    return chosen


def rank_classify(
    score_fn: ScoreFn, inputs: Sequence[str], options: Sequence[Sequence[str]]
) -> list[int]:
    """Rank classification: per input, the option the model finds most likely.

    Every (input, option) pair is scored in one `score_fn` call (the scorer batches), and
    each example picks the option with the highest log-likelihood.

    Args:
      score_fn: log-likelihood of each (input, target) pair, e.g.
        `lambda i, t: predictor.score(i, t).log_likelihoods`.
      inputs: the prompts.
      options: per input, its answer options as the model would write them.

    Returns:
      The chosen option index per input.
    """
    _check_lengths("rank_classify", options, inputs)
    pair_inputs = [text for text, opts in zip(inputs, options) for _ in opts]
    pair_targets = [option for opts in options for option in opts]
    flat = list(score_fn(pair_inputs, pair_targets)) if pair_targets else []
    if len(flat) != len(pair_targets):
        raise ValueError(
            f"rank_classify: the scorer returned {len(flat)} scores for {len(pair_targets)} pairs."
        )
    bounds = np.cumsum([0, *(len(opts) for opts in options)])
    return choose_options([flat[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])])


def rank_classification(
    gold_indices: Sequence[int], option_scores: Sequence[Sequence[float]]
) -> Scores:
    """Accuracy of rank classification from per-option log-likelihoods.

    Args:
      gold_indices: per example, the index of its correct option.
      option_scores: per example, the log-likelihood of each of its options.
    """
    _check_lengths("rank_classification", gold_indices, option_scores)
    chosen = choose_options(option_scores)
    return {"accuracy": _percent([c == g for c, g in zip(chosen, gold_indices)])}


MetricFn = Callable[..., Scores]
# The metrics a task catalog may name (`metrics: [rouge]`), by function name.
METRIC_FNS: dict[str, MetricFn] = {
    fn.__name__: fn for fn in (accuracy, exact_match, squad, rouge, bleu, cot_accuracy, niv2)
}


def get_metric_fns(names: Sequence[str], *, where: str) -> tuple[MetricFn, ...]:
    """The metric functions named in a catalog; `where` (file, line, field) prefixes errors.

    Raises:
      ValueError: for no name or an unknown one, naming the closest known metrics.
    """
    if not names:
        raise ValueError(f"{where}: name at least one metric of {sorted(METRIC_FNS)}.")
    unknown = [name for name in names if name not in METRIC_FNS]
    if unknown:
        closest = sorted({c for u in unknown for c in difflib.get_close_matches(u, METRIC_FNS)})
        raise ValueError(
            f"{where}: unknown metrics {unknown}; closest known: {closest} "
            f"(all: {sorted(METRIC_FNS)})."
        )
    return tuple(METRIC_FNS[name] for name in names)


def postprocess_text(output: Any, example: Any = None, is_target: bool = False) -> str:
    """The seqio postprocessor of the Flan tasks: a decoded output or a target as text.

    Targets reach postprocessors as bytes (`targets_pretokenized`), predictions as str; the
    metrics above normalise what they compare themselves, so nothing else changes.
    """
    del example, is_target  # Targets and predictions are read the same way.
    return output.decode("utf-8") if isinstance(output, (bytes, np.bytes_)) else str(output)
