"""The metric wrappers against the reference packages called directly, and against values
computed by hand in the test (SQuAD's official definition, ROUGE n-gram counts, NIv2's rules)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from flan_jax.data.vocabularies import get_vocabulary
from flan_jax.evaluation import metrics
from flan_jax.evaluation.math_datasets import unescape_tsv_field
from flan_jax.inference import DecodeConfig, Predictor
from flan_jax.models import decoding, t5
from flan_jax.tasks import cot
from flan_jax.testing.models import make_tiny_t5_config, write_test_sentencepiece
from flan_jax.testing.shared_data import shared_data_path


def test_accuracy_ignores_surrounding_whitespace_only():
    targets = ["yes", "no", "(B)", "Yes"]
    predictions = [" yes\n", "no", "B", "yes"]
    assert metrics.accuracy(targets, predictions) == {"accuracy": 50.0}
    assert metrics.accuracy([], []) == {"accuracy": 0.0}


def test_length_mismatch_names_the_metric():
    with pytest.raises(ValueError, match="squad: got 2 targets but 1 predictions"):
        metrics.squad(["a", "b"], ["a"])


# ------------------------------------------------------------------------------------------
# SQuAD v1.1: every value below is worked out by hand from the official definition
# (lowercase; drop punctuation; drop a/an/the; collapse whitespace; F1 over token bags).
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "gold, prediction, em, f1",
    [
        ("The Eiffel Tower", "eiffel   tower.", 100.0, 100.0),  # article, case, space, period
        ("an apple", "A   apple!", 100.0, 100.0),  # both articles go
        ("Theatre", "theatre", 100.0, 100.0),  # "the" inside a word stays
        ("U.S.A.", "USA", 100.0, 100.0),  # punctuation removed, not replaced by a space
        # "new yorkcity" vs "new york city": shared {new}: P 1/3, R 1/2 -> F1 2/5.
        ("New York-City", "new york city", 0.0, 40.0),
        ("the cat sat", "cat sat on mat", 0.0, 200 / 3),  # P 2/4, R 2/2 -> F1 2/3
        ("a a b", "a b b", 0.0, 200 / 3),  # "a" is an article: [b] vs [b, b]: P 1/2, R 1
        ("the", "a", 100.0, 0.0),  # both normalise to "": equal, but no shared token (v1.1)
    ],
)
def test_squad_matches_the_official_definition(gold, prediction, em, f1):
    scores = metrics.squad([gold], [prediction])
    assert scores["em"] == pytest.approx(em)
    assert scores["f1"] == pytest.approx(f1)


def test_squad_takes_the_best_gold_and_averages_examples():
    targets = [["4", "four", "Four years"], "Denver Broncos", ("the moon",)]
    predictions = ["four years", "Broncos", "Mars"]
    # ex 1: EM 1 (Four years), F1 1; ex 2: EM 0, F1 P 1/1 R 1/2 -> 2/3; ex 3: 0, 0.
    scores = metrics.squad(targets, predictions)
    assert scores["em"] == pytest.approx(100 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)


def test_exact_match_uses_squad_normalisation_and_several_golds():
    targets = ["The answer", ["x", "Paris, France"], "two"]
    predictions = ["answer.", "paris france", "2"]
    assert metrics.exact_match(targets, predictions) == {"exact_match": pytest.approx(200 / 3)}


# ------------------------------------------------------------------------------------------
# ROUGE and BLEU: the reference packages called directly, plus hand-counted n-grams
# ------------------------------------------------------------------------------------------
SUMMARIES = [
    ("the cat sat on the mat . it was happy .", "the cat sat . it was very happy ."),
    ("Police arrested two men on Tuesday", "two men were arrested by police"),
    ("rain is expected tomorrow", "sunny skies all week"),
]


def test_rouge_equals_rouge_score_called_directly():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"])
    expected = {key: 0.0 for key in ("rouge1", "rouge2", "rougeLsum")}
    for target, prediction in SUMMARIES:
        # t5's preparation: one sentence per line for rougeLsum.
        scores = scorer.score(target.replace(" . ", " .\n"), prediction.replace(" . ", " .\n"))
        for key in expected:
            expected[key] += 100 * scores[key].fmeasure / len(SUMMARIES)
    got = metrics.rouge([t for t, _ in SUMMARIES], [p for _, p in SUMMARIES])
    assert got == pytest.approx(expected)


def test_rouge_hand_counted():
    # Target 6 tokens, prediction 3, all 3 shared: ROUGE-1 P 1, R 1/2 -> F 2/3.
    # Bigrams: 2 of the prediction's 2 among the target's 5: P 1, R 2/5 -> F 4/7.
    got = metrics.rouge(["the cat sat on the mat"], ["The cat sat"])
    assert got["rouge1"] == pytest.approx(200 / 3)
    assert got["rouge2"] == pytest.approx(400 / 7)
    assert got["rougeLsum"] == pytest.approx(200 / 3)


def test_rouge_does_not_stem_as_t5():
    # With stemming "running" and "runs" would both be "run".
    assert metrics.rouge(["running"], ["runs"])["rouge1"] == 0.0


def test_rouge_takes_the_best_gold_per_type():
    golds = ["completely different words", "the cat sat on the mat"]
    assert metrics.rouge([golds], ["The cat sat"]) == pytest.approx(
        metrics.rouge([golds[1]], ["The cat sat"])
    )


TRANSLATIONS = [
    (
        "Der schnelle braune Fuchs springt über den faulen Hund.",
        "Der schnelle Fuchs springt über den Hund.",
    ),
    ("Das Wetter ist heute schön, nicht wahr?", "Das Wetter ist heute schön!"),
    ("Ich habe 3.000 Bücher gelesen.", "Ich las 3.000 Bücher."),
]


def test_bleu_equals_sacrebleu_with_t5_settings():
    targets = [t for t, _ in TRANSLATIONS]
    predictions = [p for _, p in TRANSLATIONS]
    expected = sacrebleu.corpus_bleu(
        predictions,
        [targets],
        smooth_method="exp",
        smooth_value=0.0,
        force=False,
        lowercase=False,
        tokenize="intl",
        use_effective_order=False,
    ).score
    assert metrics.bleu(targets, predictions) == {"bleu": pytest.approx(expected)}
    assert 0.0 < expected < 100.0


def test_bleu_hand_values():
    sentence = "the quick brown fox jumps over the lazy dog"
    assert metrics.bleu([sentence], [sentence]) == {"bleu": pytest.approx(100.0)}
    # 5 tokens, all 5 unigrams match; no 2-, 3- or 4-gram does (0/4, 0/3, 0/2). "exp"
    # smoothing gives the k-th zero count 1 / (2^k * total): 1/8, 1/12, 1/16. Brevity
    # penalty exp(1 - 9/5).
    precisions = [1.0, 1 / 8, 1 / 12, 1 / 16]
    expected = 100 * np.exp(1 - 9 / 5) * np.exp(np.mean(np.log(precisions)))
    got = metrics.bleu([sentence], ["dog lazy the over jumps"])["bleu"]
    assert got == pytest.approx(expected)


def test_bleu_several_golds_become_reference_streams():
    targets = [["a cat is on the mat", "there is a cat on the mat"], ["hello world"]]
    predictions = ["there is a cat on the mat", "hello world"]
    expected = sacrebleu.corpus_bleu(
        predictions,
        [["a cat is on the mat", "hello world"], ["there is a cat on the mat", None]],
        smooth_method="exp",
        smooth_value=0.0,
        tokenize="intl",
    ).score
    assert metrics.bleu(targets, predictions)["bleu"] == pytest.approx(expected)
    assert expected == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------
# CoT accuracy and NIv2
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "target, prediction, correct",
    [
        ("12 + 60 = 72. So the answer is 72.", "She sold 72.0 clips. So the answer is 72.", True),
        ("72", "... So the answer is $72.", True),  # a bare gold, numeric
        ("72", "... So the answer is 73.", False),
        ("So the answer is (C).", "Thus the answer is C.", True),
        ("(C)", "So the answer is (D).", False),
        ("Mrs. Hilt", "Mrs. Hilt has more. So the answer is Mrs. Hilt.", True),
        ("So the answer is Mrs. Hilt.", "So the answer is Mr. Hilt.", False),
        ("yes", "no answer phrase here", False),
    ],
)
def test_cot_accuracy(target, prediction, correct):
    assert metrics.cot_accuracy([target], [prediction]) == {"accuracy": 100.0 * correct}


COT_FILES = ["gsm8k", "aqua", "creak", "ecqa", "qasc", "sensemaking", "strategyqa"]


@pytest.mark.parametrize("name", COT_FILES)
def test_cot_gold_answer_reads_what_the_cot_tasks_write(name):
    # The CoT tasks' own reader (tasks.cot.parse_cot_answer) is the independent computation.
    path = shared_data_path("flan_cot_data", f"{name}_train.tsv")
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").split("\n") if line]
    targets = [f"{unescape_tsv_field(r)} So the answer is {a}." for _, a, r in rows]
    misses = [t[-60:] for t in targets if metrics.cot_gold_answer(t) != cot.parse_cot_answer(t)]
    assert not misses, f"{len(misses)} of {len(targets)}, e.g. {misses[:3]}"
    assert metrics.cot_accuracy(targets, targets) == {"accuracy": 100.0}


def test_niv2_exact_match_keeps_articles_and_rouge_l_stems():
    targets = [["The cat."], ["dogs running"], ["A b", "c d e"]]
    predictions = ["the CAT", "dog runs", "c d"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge_l = [
        max(scorer.score(g, p)["rougeL"].fmeasure for g in golds)
        for golds, p in zip(targets, predictions)
    ]
    got = metrics.niv2(targets, predictions)
    # Hand: EM only for "The cat." vs "the CAT" (articles are not removed by NIv2).
    assert got["exact_match"] == pytest.approx(100 / 3)
    assert got["rougeL"] == pytest.approx(100 * np.mean(rouge_l))
    # Hand: stemmed "dog run" vs "dog run" is 1; "c d" vs "c d e" is P 1, R 2/3 -> 4/5.
    assert rouge_l == pytest.approx([1.0, 1.0, 0.8])
    assert metrics.niv2(["An apple"], ["apple"])["exact_match"] == 0.0
    assert metrics.exact_match(["An apple"], ["apple"])["exact_match"] == 100.0


# ------------------------------------------------------------------------------------------
# Rank classification
# ------------------------------------------------------------------------------------------
def test_rank_classify_with_a_known_scorer():
    calls = []

    def score_fn(inputs, targets):
        calls.append(len(inputs))
        # The log-likelihood favours the option whose length equals the input's digit.
        return [-abs(len(t) - int(i)) for i, t in zip(inputs, targets)]

    options = [["a", "bbb", "cc"], ["xx", "y"], ["zzzz", "zz", "z", "zzz"]]
    assert metrics.rank_classify(score_fn, ["3", "1", "3"], options) == [1, 1, 3]
    assert calls == [9]  # one scorer call for every pair
    with pytest.raises(ValueError, match="Example 1 has no answer options"):
        metrics.rank_classify(score_fn, ["1", "2"], [["a"], []])


def test_rank_classification_accuracy_and_ties():
    scores = [[-1.0, -0.5], [-2.0, -2.0, -3.0], [-0.1]]
    assert metrics.choose_options(scores) == [1, 0, 0]  # a tie goes to the first option
    assert metrics.rank_classification([1, 1, 0], scores) == {"accuracy": pytest.approx(200 / 3)}


def test_rank_classify_picks_the_highest_model_log_likelihood(tmp_path):
    config = make_tiny_t5_config(vocab_size=96)
    model, params = t5.T5Model(config), t5.init_params(config, jax.random.key(3))
    vocabulary = get_vocabulary(str(write_test_sentencepiece(tmp_path)))
    predictor = Predictor(model, params, vocabulary, DecodeConfig(max_decode_len=8, batch_size=4))
    inputs = ["is the sky blue", "pick a word", "translate the river"]
    options = [["yes", "no", "maybe"], ["the cat", "a dog"], ["first", "second", "third", "no"]]

    chosen = metrics.rank_classify(
        lambda i, t: predictor.score(i, t).log_likelihoods, inputs, options
    )

    # Independently: each pair scored alone by the decoding library, as `flan-jax score`'s
    # Predictor.score does in batches, then the best option by hand.
    for text, opts, picked in zip(inputs, options, chosen):
        input_row = predictor.tokenize([text])
        pair_scores = [
            float(
                np.asarray(
                    decoding.score_targets(
                        model,
                        params,
                        np.array(input_row),
                        np.array(predictor.tokenize([o], max_len=8)),
                    )
                )[0]
            )
            for o in opts
        ]
        assert picked == int(np.argmax(pair_scores)), (text, pair_scores)
        direct = predictor.score([text] * len(opts), list(opts)).log_likelihoods
        assert picked == int(np.argmax(direct))
