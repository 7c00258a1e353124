"""13-gram contamination: normalisation, a planted overlap, disjoint data, and agreement with a
brute-force check over word tuples."""

import numpy as np
import pytest

from flan_jax.evaluation import contamination

WORDS = [f"w{i}" for i in range(400)]


def text_of(rng: np.random.Generator, length: int) -> str:
    return " ".join(WORDS[int(i)] for i in rng.integers(len(WORDS), size=length))


def brute_force_overlaps(train: list[str], text: str, n: int = 13) -> bool:
    def grams(t: str) -> set[tuple[str, ...]]:
        words = contamination.normalize_words(t)
        return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}

    seen = set().union(*(grams(t) for t in train))
    return bool(grams(text) & seen)


def test_normalisation_lowercases_and_drops_punctuation():
    assert contamination.normalize_words("The cat's  hat!\nÉTÉ, 42_b") == [
        "the",
        "cat",
        "s",
        "hat",
        "été",
        "42",
        "b",
    ]


def test_planted_overlap_is_found_despite_case_and_punctuation():
    rng = np.random.default_rng(0)
    planted = text_of(rng, 13)
    train = [text_of(rng, 60) for _ in range(50)]
    train[17] = text_of(rng, 20) + " " + planted + " " + text_of(rng, 5)
    index = contamination.build_ngram_index(train)
    shouted = planted.upper().replace(" ", ", ")
    twelve = " ".join(planted.split()[:12])
    report = contamination.check_contamination(
        index, {"dirty": [text_of(rng, 30), "Q: " + shouted + "?", twelve], "clean": []}
    )
    assert report["dirty"].contaminated_indices == (1,)
    assert report["dirty"].total == 3 and report["dirty"].fraction == pytest.approx(1 / 3)
    assert report["clean"].total == 0 and report["clean"].fraction == 0.0


def test_disjoint_data_reports_no_overlap():
    rng = np.random.default_rng(1)
    train = [text_of(rng, 80) for _ in range(30)]
    other = [" ".join(f"x{w}" for w in text_of(rng, 80).split()) for _ in range(30)]
    report = contamination.check_contamination(contamination.build_ngram_index(train), {"t": other})
    assert report["t"].contaminated == 0 and report["t"].total == 30


def test_matches_a_brute_force_check_over_word_tuples():
    rng = np.random.default_rng(2)
    small_vocab = WORDS[:2]  # Few words, so some 13-grams recur by chance.
    train = [" ".join(rng.choice(small_vocab, size=60)) for _ in range(40)]
    evals = [" ".join(rng.choice(small_vocab, size=int(rng.integers(5, 30)))) for _ in range(60)]
    index = contamination.build_ngram_index(train)
    expected = [brute_force_overlaps(train, t) for t in evals]
    assert [index.overlaps(t) for t in evals] == expected
    assert 0 < sum(expected) < len(evals)
    distinct = set()
    for t in train:
        words = contamination.normalize_words(t)
        distinct |= {tuple(words[i : i + 13]) for i in range(len(words) - 12)}
    assert len(index) == len(distinct)


def test_texts_of_examples_joins_inputs_and_targets():
    examples = [{"inputs": b"a b", "targets": "c", "_task_name": b"t"}]
    assert list(contamination.texts_of_examples(examples)) == ["a b\nc"]
