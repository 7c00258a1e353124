"""Seeded generators of the raw examples of the demo collection, one per task cluster.

Each generator turns a `numpy.random.Generator` into one example's fields (the template
placeholders, plus `answer` and, for option tasks, `options`). Examples are short so a
tiny T5 learns them on a laptop CPU in minutes, yet each cluster needs a different skill:

- arith: 2-3 step word problems with small numbers; the target is a chain of thought ending in
  "So the answer is N.".
- sentiment: generated opinions whose polarity may be flipped by "not".
- nli: premise/hypothesis pairs from location facts, rules and comparisons.
- words: reverse the order of a short word list.
- reading: answer a question about a two-person context.

Held-out instances are decided by the content (a digest of the fields), not by position, so
no validation example ever appears in training, even if the generator repeats itself.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from flan_jax.tasks import templates

Fields = dict[str, Any]

NAMES = (
    "Ana",
    "Ben",
    "Carla",
    "Dev",
    "Emma",
    "Femi",
    "Goro",
    "Hana",
    "Ivan",
    "Jia",
    "Kofi",
    "Lena",
    "Mateo",
    "Nora",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
)
OBJECTS = (
    "apples",
    "pencils",
    "stickers",
    "books",
    "coins",
    "marbles",
    "cookies",
    "stamps",
    "shells",
    "cards",
)
CITIES = {
    "Paris": "France",
    "Lima": "Peru",
    "Oslo": "Norway",
    "Cairo": "Egypt",
    "Tokyo": "Japan",
    "Quito": "Ecuador",
    "Hanoi": "Vietnam",
    "Accra": "Ghana",
    "Dublin": "Ireland",
    "Madrid": "Spain",
}
JOBS = {
    "baker": "oven",
    "farmer": "tractor",
    "painter": "ladder",
    "sailor": "boat",
    "doctor": "stethoscope",
    "teacher": "whiteboard",
    "pilot": "map",
    "tailor": "needle",
}
SUBJECTS = (
    "The soup",
    "The movie",
    "The hotel room",
    "The new phone",
    "The concert",
    "The service",
    "The bike",
    "The book",
    "The train ride",
    "The museum",
)
POSITIVE = ("great", "lovely", "excellent", "wonderful", "fun", "comfortable", "tasty")
NEGATIVE = ("awful", "boring", "terrible", "dirty", "slow", "disappointing", "noisy")
ADVERBS = ("", "really ", "quite ", "very ")
WORDS = (
    "red",
    "blue",
    "green",
    "sun",
    "moon",
    "star",
    "tree",
    "river",
    "stone",
    "bird",
    "fish",
    "door",
    "lamp",
    "cup",
    "road",
    "hill",
    "rain",
    "snow",
    "wind",
    "leaf",
)
SENTIMENT_OPTIONS = ["negative", "positive"]
NLI_OPTIONS = ["yes", "it is not possible to tell", "no"]
HELD_OUT_PERCENT = 10


def _pick(rng: np.random.Generator, items) -> Any:
    items = tuple(items)
    return items[int(rng.integers(len(items)))]


def _pick_distinct(rng: np.random.Generator, items, count: int) -> list:
    items = tuple(items)
    return [items[int(i)] for i in rng.choice(len(items), size=count, replace=False)]


def generate_arith(rng: np.random.Generator) -> Fields:
    """A 2-3 step word problem with its worked solution."""
    name, obj = _pick(rng, NAMES), _pick(rng, OBJECTS)
    value = int(rng.integers(2, 10))
    sentences = [f"{name} has {value} {obj}."]
    steps = []
    for step in range(int(rng.integers(2, 4))):
        kind = _pick(rng, ("add", "add", "sub", "sub", "double"))
        if kind == "double" and value <= 9:
            sentences.append(f"{name} doubles the {obj}.")
            steps.append(f"{value} * 2 = {value * 2}.")
            value *= 2
        elif kind == "sub" and value > 2:
            amount = int(rng.integers(1, value))
            verb = _pick(rng, ("gives away", "loses", "sells"))
            sentences.append(f"{'Then ' if step else ''}{name} {verb} {amount}.")
            steps.append(f"{value} - {amount} = {value - amount}.")
            value -= amount
        else:
            amount = int(rng.integers(1, 6))
            verb = _pick(rng, ("buys", "finds", "gets"))
            sentences.append(f"{'Then ' if step else ''}{name} {verb} {amount} more.")
            steps.append(f"{value} + {amount} = {value + amount}.")
            value += amount
    sentences.append(f"How many {obj} does {name} have now?")
    return {"question": " ".join(sentences), "rationale": " ".join(steps), "answer": str(value)}


def generate_sentiment(rng: np.random.Generator) -> Fields:
    """One or two clauses of the same polarity; "not" flips a clause's adjective."""
    positive = bool(rng.integers(2))
    clauses = []
    for subject in _pick_distinct(rng, SUBJECTS, int(rng.integers(1, 3))):
        negated = bool(rng.random() < 0.3)
        pool = POSITIVE if positive != negated else NEGATIVE
        adjective = _pick(rng, pool)
        if negated:
            clauses.append(f"{subject} was not {adjective}")
        else:
            clauses.append(f"{subject} was {_pick(rng, ADVERBS)}{adjective}")
    text = ", and ".join([clauses[0]] + [c[0].lower() + c[1:] for c in clauses[1:]]) + "."
    return {
        "text": text,
        "options": list(SENTIMENT_OPTIONS),
        "answer": "positive" if positive else "negative",
    }


def _nli_location(rng: np.random.Generator, name: str, label: str) -> tuple[str, str]:
    city = _pick(rng, CITIES)
    premise = f"{name} lives in {city}."
    if label == "yes":
        return premise, f"{name} lives in {CITIES[city]}"
    if label == "no":
        other = _pick(rng, [c for c in CITIES.values() if c != CITIES[city]])
        return premise, f"{name} lives in {other}"
    return premise, f"{name} was born in {_pick(rng, CITIES.values())}"


def _nli_rule(rng: np.random.Generator, name: str, label: str) -> tuple[str, str]:
    job = _pick(rng, JOBS)
    premise = f"Every {job} in the village owns a {JOBS[job]}. {name} is a {job}."
    if label == "yes":
        return premise, f"{name} owns a {JOBS[job]}"
    if label == "no":
        return premise, f"{name} is not a {job}"
    return premise, f"{name} owns a {_pick(rng, [t for t in JOBS.values() if t != JOBS[job]])}"


def _nli_compare(rng: np.random.Generator, name: str, label: str) -> tuple[str, str]:
    other = _pick(rng, [n for n in NAMES if n != name])
    premise = f"{name} is taller than {other}."
    if label == "yes":
        return premise, f"{other} is shorter than {name}"
    if label == "no":
        return premise, f"{other} is taller than {name}"
    return premise, f"{name} is older than {other}"


def generate_nli(rng: np.random.Generator) -> Fields:
    """A premise, a hypothesis and whether the premise entails it (3 labels)."""
    label = _pick(rng, NLI_OPTIONS)
    make_pair = _pick(rng, (_nli_location, _nli_rule, _nli_compare))
    premise, hypothesis = make_pair(rng, _pick(rng, NAMES), label)
    return {
        "premise": premise,
        "hypothesis": hypothesis,
        "options": list(NLI_OPTIONS),
        "answer": label,
    }


def generate_words(rng: np.random.Generator) -> Fields:
    """A list of 3-5 distinct words and the same list reversed."""
    words = _pick_distinct(rng, WORDS, int(rng.integers(3, 6)))
    answer = " ".join(reversed(words))
    shuffled = list(words)
    while " ".join(shuffled) in (answer, " ".join(words)):
        rng.shuffle(shuffled)
    options = [answer, " ".join(words), " ".join(shuffled)]
    rng.shuffle(options)
    return {"words": " ".join(words), "options": options, "answer": answer}


def generate_reading(rng: np.random.Generator) -> Fields:
    """A two-person context and a question about one attribute of one person."""
    people = _pick_distinct(rng, NAMES, 2)
    cities = _pick_distinct(rng, CITIES, 3)
    jobs = _pick_distinct(rng, JOBS, 3)
    context = " ".join(
        f"{person} lives in {cities[i]} and works as a {jobs[i]}."
        for i, person in enumerate(people)
    )
    who = int(rng.integers(2))
    name = people[who]
    question, pool = _pick(
        rng,
        (
            (f"Where does {name} live?", cities),
            (f"What is {name}'s job?", jobs),
        ),
    )
    options = list(pool)
    rng.shuffle(options)
    return {"context": context, "question": question, "options": options, "answer": pool[who]}


GENERATORS: dict[str, Callable[[np.random.Generator], Fields]] = {
    "arith": generate_arith,
    "sentiment": generate_sentiment,
    "nli": generate_nli,
    "words": generate_words,
    "reading": generate_reading,
}


def is_held_out(fields: Fields) -> bool:
    """Whether an example belongs to the held-out instances (by a digest of its content)."""
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "little") % 100 < HELD_OUT_PERCENT


def iterate_examples(
    cluster: str, split: str, count: int, seed: int = 0
) -> Iterator[tuple[str, Fields]]:
    """Yields `count` (key, fields) examples of `cluster` for "train" or "validation".

    Candidate `i` is drawn from `example_rng(seed, "demo/CLUSTER", "candidate:i")`, so the
    stream is the same in every process; each split keeps the candidates its content digest
    assigns to it, keyed "SPLIT:n".
    """
    if cluster not in GENERATORS:
        raise ValueError(f"Unknown demo cluster {cluster!r}; known: {sorted(GENERATORS)}.")
    if split not in ("train", "validation"):
        raise ValueError(f"Demo split must be 'train' or 'validation', got {split!r}.")
    generate = GENERATORS[cluster]
    produced = candidate = 0
    while produced < count:
        fields = generate(templates.example_rng(seed, f"demo/{cluster}", f"candidate:{candidate}"))
        candidate += 1
        if is_held_out(fields) == (split == "validation"):
            yield f"{split}:{produced}", fields
            produced += 1
