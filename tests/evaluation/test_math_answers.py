"""Answer extraction: hand-written cases and every gold solution of the real data sets."""

import fractions
import json

import pytest

from flan_jax.evaluation import answers
from flan_jax.evaluation.math_datasets import unescape_tsv_field
from flan_jax.testing.shared_data import shared_data_path

F = fractions.Fraction


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("#### 1,080", "1080"),
        ("She pays 2 x $1,250 = $2,500. So the answer is $2,500.", "2500"),
        ("So the answer is 109,200,000.", "109200000"),
        ("The temperature fell to -7 degrees. The answer is -7.", "-7"),
        ("He lost -$5.50 on the bet.", "-5.5"),
        ("It drops \u22123 degrees", "-3"),
        ("Each gets 3/4 of a pie. The answer is 3/4.", "0.75"),
        ("the answer is 1 1/2 cups", "1.5"),
        ("The answer is 8/3", "8/3"),
        ("The answer is .5 liters", "0.5"),
        ("The final answer is: 42", "42"),
        ("THE ANSWER IS 12 apples.", "12"),
        ("So the answer is 50%.", "50"),
        ("So the answer is 3.50 dollars.", "3.5"),
        ("12 - 5 = 7", "7"),  # a spaced minus is subtraction, not a negative 5
        ("15 15/3 = 20 so 20 cups", "20"),  # "15 15/3" is not a proper mixed number
        ("Total: 5 + 3 = 8.", "8"),  # fallback: the last number, trailing period dropped
        ("2 + 3 = 5. The answer is five.", "5"),  # marked span without a number
        ("He works 40 hours. The answer is 320 dollars. Q: Next, 7 cats", "320"),
        ("Ann: 48/2 = <<48/2=24>>24 clips", "24"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_extract_numeric_answers(text, expected):
    assert answers.extract_answer(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So the answer is (C).", "(C)"),
        ("So the answer is washington d.c.", "washington d.c"),
        ("So the answer is Sentence A.", "Sentence A"),
        ("It is plausible, so the answer is yes.\n\nQ: next question", "yes"),
        ("the answer is 42, but ... So the answer is no.", "no"),  # the last marker wins
    ],
)
def test_extract_text_answers(text, expected):
    assert answers.extract_answer(text, numeric=False) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,080", F(1080)),
        ("$2,500.", F(2500)),
        ("-3/4", F(-3, 4)),
        ("9 (apples)", F(9)),
        ("50%", F(50)),
        ("39.0", F(39)),
        ("2 1/4", F(9, 4)),
        ("0.125", F(1, 8)),
        ("3 + 4", None),
        ("Sentence A", None),
        ("", None),
        ("1,2345", None),
        ("7 of 9", None),
    ],
)
def test_parse_number(text, expected):
    assert answers.parse_number(text) == expected


@pytest.mark.parametrize(
    "value, expected",
    [
        (F(72), "72"),
        (F(-1, 4), "-0.25"),
        (F(13, 5), "2.6"),
        (F(8, 3), "8/3"),
        (F(-1, 3), "-1/3"),
        (F(1, 1000), "0.001"),
        (F(0), "0"),
    ],
)
def test_format_number_round_trips(value, expected):
    assert answers.format_number(value) == expected
    assert answers.parse_number(expected) == value


def test_find_numbers_in_order():
    text = "He paid -$1,250.50 for 1 1/2 tons, i.e. 3/2 at 5th Ave; A1 x2 1,2345 and 3,4"
    assert answers.find_numbers(text) == [
        F(-2501, 2),
        F(3, 2),
        F(3, 2),
        F(5),
        F(1),
        F(2345),
        F(3),
        F(4),
    ]


@pytest.mark.parametrize(
    "prediction, gold, expected",
    [
        ("... The answer is 3/4.", "0.75", True),
        ("The answer is 0.75", "3/4", True),
        ("The answer is 2.6666666666666665", "8/3", True),  # a float-rounded gold
        ("The answer is 2.67", "8/3", False),
        ("The answer is 1,000", "1000", True),
        ("The answer is 999", "1000", False),
        ("So the answer is (C).", "(C)", True),
        ("So the answer is C.", "(C)", True),
        ("So the answer is (D).", "(C)", False),
        ("So the answer is Yes.", "yes", True),
        ("nothing", "5", False),
    ],
)
def test_answers_match(prediction, gold, expected):
    assert answers.answers_match(prediction, gold) is expected


@pytest.mark.parametrize("split", ["train", "test", "test_socratic"])
def test_recovers_every_gsm8k_gold_answer(split):
    path = shared_data_path("gsm8k", f"{split}.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == {"train": 7473, "test": 1319, "test_socratic": 1319}[split]
    failures = []
    for row in rows:
        # Gold read independently of the extractor: the text after "####", commas removed.
        gold = F(row["answer"].split("####")[-1].strip().replace(",", ""))
        extracted = answers.extract_answer(row["answer"])
        if extracted is None or F(extracted) != gold:
            failures.append((row["answer"][-60:], extracted, gold))
    assert not failures, f"{len(failures)} misses, e.g. {failures[:3]}"


COT_FILES = ["gsm8k", "aqua", "creak", "ecqa", "qasc", "sensemaking", "strategyqa"]


@pytest.mark.parametrize("name", COT_FILES)
def test_recovers_cot_tsv_answers_from_rationales(name):
    path = shared_data_path("flan_cot_data", f"{name}_train.tsv")
    # Split on "\n" only: some fields hold U+2028 and the like, which splitlines() breaks on.
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").split("\n") if line]
    failures = []
    for _, answer, rationale in rows:
        target = f"{unescape_tsv_field(rationale)} So the answer is {answer}."
        if name == "gsm8k":  # numeric: recover the number, compared as a value
            ok = F(answers.extract_answer(target) or "nan") == F(answer)
        else:  # option labels, yes/no and free text: recover the exact answer text
            ok = answers.extract_answer(target, numeric=False) == answer.strip()
        ok = ok and answers.answers_match(target, answers.canonicalize_answer(answer))
        if not ok:
            failures.append((target[-80:], answer))
    assert not failures, f"{len(failures)} misses of {len(rows)}, e.g. {failures[:3]}"


# Non-numeric gold answers as ASDiv writes them (211 of its 2,305: names, times, yes/no):
# a title's or a dotted abbreviation's period does not end the answer's sentence.
@pytest.mark.parametrize(
    "prediction, gold, expected",
    [
        ("Mrs. Hilt has 5 more. So the answer is Mrs. Hilt.", "Mrs. Hilt", True),
        ("So the answer is Mrs. Hilt. Q: How many", "Mrs. Hilt", True),
        ("So the answer is mrs. hilt", "Mrs. Hilt", True),
        ("So the answer is Mr. Hilt.", "Mrs. Hilt", False),
        ("So the answer is Dr. Lee.", "Dr. Lee", True),
        ("So the answer is St. Louis. The other city is smaller.", "St. Louis", True),
        ("The train arrives at 3:00 p.m. So the answer is 3:00 p.m.", "3:00 p.m.", True),
        ("So the answer is 3:00 p.m. on Monday.", "3:00 p.m.", False),
        ("So the answer is the U.S. team.", "the U.S. team", True),
        ("So the answer is yes. Next, ...", "yes", True),
        ("So the answer is no. Next, ...", "yes", False),
        ("So the answer is 2:3.", "2:3", True),
    ],
)
def test_answers_match_non_numeric_golds(prediction, gold, expected):
    assert answers.answers_match(prediction, gold) is expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So the answer is Mrs. Hilt.", "Mrs. Hilt"),
        ("So the answer is C. The others are wrong.", "C"),  # a single letter is no title
        ("So the answer is 1st. Then", "1st"),  # "st" glued to a digit is no title
        ("So the answer is 5 p.m. today.", "5 p.m. today"),
        ("The answer is:\n42\nQ: next", "42"),  # a line break ends the sentence
        ("no marker, 42", None),
    ],
)
def test_marked_answer_span(text, expected):
    assert answers.marked_answer_span(text) == expected


def test_real_asdiv_name_answer_matches_its_cot_sentence():
    path = shared_data_path("math_ood_samples", "asdiv.sample.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    names = [row["answer"] for row in rows if answers.parse_number(row["answer"]) is None]
    assert names == ["Mrs. Hilt"]
    for gold in names:
        assert answers.answers_match(f"Reasoning. So the answer is {gold}.", gold)
        assert answers.extract_answer(f"So the answer is {gold}.", numeric=False) == gold


def test_improper_mixed_candidates_are_two_numbers_everywhere():
    assert answers.find_numbers("-15 15/3 = 20") == [F(-15), F(5), F(20)]
    assert answers.extract_answer_span("x = 15 15/3") == "15/3"
    assert answers.extract_answer("x = 15 15/3") == "5"
