"""The Flan-T5 suite on the real shared data: prompts, scoring, chance levels, normalization.

Expected scores are computed here from the raw files with the standard library, not through
the suite's loaders, so a loader or scorer that drops, shifts or misreads items fails.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import re

import pytest
import seqio

from flan_jax.evaluation import flan_t5_data, flan_t5_suite
from flan_jax.tasks import data_paths, flan_t5_eval
from flan_jax.testing.shared_data import shared_data_path

BBH_OPTION_RE = re.compile(r"^\([A-Z]\) ", re.MULTILINE)


@pytest.fixture(scope="module")
def paths() -> data_paths.DataPaths:
    for folder in ("mmlu_slice", "bbh", "tydiqa_goldp_dev", "mgsm", "cot_exemplars"):
        shared_data_path(folder)
    return flan_t5_data.shared_data_paths(str(shared_data_path()))


@pytest.fixture(scope="module")
def subsets(paths) -> dict[str, tuple[str, ...]]:
    # The shared slice has MMLU test files for 5 subjects; everything else is complete.
    mmlu = flan_t5_data.available_subsets("mmlu", paths=paths)
    assert len(mmlu) == 5
    return {"mmlu": mmlu}


# ------------------------------------------------------------------ raw data, read independently


def raw_mmlu_answers(subject: str) -> list[str]:
    path = shared_data_path("mmlu_slice", "test", f"{subject}_test.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]  # header row; answers are 0-based indices here
    assert all(len(row) == 6 for row in rows)
    return ["ABCD"[int(row[5])] for row in rows]


def raw_bbh(task: str) -> list[dict]:
    with open(shared_data_path("bbh", "bbh", f"{task}.json"), encoding="utf-8") as f:
        return json.load(f)["examples"]


def raw_bbh_chance(task: str) -> float:
    """A uniform guess: over the printed options, else over the task's answers when there
    are only two different ones (True/False, Yes/No, ...), else free-form (0)."""
    examples = raw_bbh(task)
    counts = [len(BBH_OPTION_RE.findall(e["input"])) for e in examples]
    if all(counts):
        return 100.0 * sum(1 / k for k in counts) / len(counts)
    return 50.0 if len({e["target"] for e in examples}) == 2 else 0.0


def raw_mgsm_answers(language: str) -> list[float]:
    path = shared_data_path("mgsm", f"mgsm_{language}.tsv")
    with open(path, encoding="utf-8") as f:
        return [
            float(line.rstrip("\n").split("\t")[1].replace(",", "")) for line in f if line.strip()
        ]


def raw_tydiqa_answers(language: str) -> list[list[str]]:
    with open(
        shared_data_path("tydiqa_goldp_dev", f"{language}_tydiqa_dev.json"), encoding="utf-8"
    ) as f:
        data = json.load(f)["data"]
    return [
        [a["text"] for a in qa["answers"]]
        for article in data
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    ]


def share(values, wanted) -> float:
    return 100.0 * sum(v == wanted for v in values) / len(values)


# ------------------------------------------------------------------------------------ predictors


def make_oracle(paths, subsets):
    """Answers each prompt with its reference completion (prompts repeated within a subset
    get their targets in order)."""
    targets = collections.defaultdict(collections.deque)
    for setting, spec in flan_t5_suite.SETTINGS.items():
        names = subsets.get(spec.benchmark, flan_t5_data.benchmark_subsets(spec.benchmark))
        for subset in names:
            for example in flan_t5_suite.load_examples(setting, subset, paths=paths):
                targets[example.inputs].append(example.target)

    def predict(texts):
        return [targets[text].popleft() for text in texts]

    return predict


def constant(text):
    return lambda texts: [text] * len(texts)


# ----------------------------------------------------------------------------------------- tests


def test_oracle_scores_100_everywhere(paths, subsets):
    result = flan_t5_suite.score_suite(make_oracle(paths, subsets), paths=paths, subsets=subsets)
    assert set(result.benchmarks) == set(flan_t5_suite.SETTING_NAMES)
    for benchmark in result.benchmarks.values():
        assert benchmark.score == pytest.approx(100.0), benchmark.setting
        assert benchmark.normalized == pytest.approx(100.0), benchmark.setting
        for subset, row in benchmark.breakdown.items():
            assert row[benchmark.metric] == pytest.approx(100.0), (benchmark.setting, subset)
    assert result.normalized_average == pytest.approx(100.0)
    # Every item of the shared data is scored.
    assert result.benchmarks["mmlu_direct"].num_examples == 1021
    assert result.benchmarks["bbh_cot"].num_examples == 6511
    assert result.benchmarks["tydiqa_direct"].num_examples == 5077 - 440  # no English
    assert result.benchmarks["mgsm_cot"].num_examples == 2500
    assert result.benchmarks["tydiqa_direct"].breakdown["bengali"]["f1"] == pytest.approx(100.0)


def test_constant_predictor_scores_its_share_of_golds_and_chance_is_from_the_data(paths, subsets):
    mmlu_subjects = subsets["mmlu"]
    bbh_tasks = flan_t5_data.benchmark_subsets("bbh")
    mgsm_languages = flan_t5_data.benchmark_subsets("mgsm")
    answers_by_setting = {
        "mmlu_direct": "A",
        "mmlu_cot": "Let's see. The answer is (A).",
        "bbh_direct": "(A)",
        "bbh_cot": "Hmm. So the answer is (A).",
        "tydiqa_direct": "qqqzzz",
        "mgsm_cot": "Adding up, the answer is 10.",
    }
    mmlu_golds = [a for s in mmlu_subjects for a in raw_mmlu_answers(s)]
    bbh_shares = [share([e["target"] for e in raw_bbh(t)], "(A)") for t in bbh_tasks]
    bbh_chance = sum(raw_bbh_chance(t) for t in bbh_tasks) / len(bbh_tasks)
    assert all(
        "qqqzzz" not in g
        for lang in flan_t5_data.benchmark_subsets("tydiqa")
        for golds in raw_tydiqa_answers(lang)
        for g in golds
    )
    expected = {  # setting: (score, chance)
        "mmlu_direct": (share(mmlu_golds, "A"), 25.0),
        "mmlu_cot": (share(mmlu_golds, "A"), 25.0),
        "bbh_direct": (sum(bbh_shares) / len(bbh_shares), bbh_chance),
        "bbh_cot": (sum(bbh_shares) / len(bbh_shares), bbh_chance),
        "tydiqa_direct": (0.0, 0.0),
        "mgsm_cot": (
            sum(share(raw_mgsm_answers(lang), 10.0) for lang in mgsm_languages)
            / len(mgsm_languages),
            0.0,
        ),
    }
    for setting, answer in answers_by_setting.items():
        result = flan_t5_suite.score_suite(
            constant(answer), paths=paths, settings=[setting], subsets=subsets
        )
        benchmark = result.benchmarks[setting]
        score, chance = expected[setting]
        assert benchmark.score == pytest.approx(score), setting
        assert benchmark.chance == pytest.approx(chance), setting
        assert benchmark.normalized == pytest.approx(100 * (score - chance) / (100 - chance))
        assert result.normalized_average is None  # only one of the six settings
    # Not 0 once normalized: "(A)" is never right on BBH's yes/no and free-form tasks, so
    # it scores below the chance of a uniform guess there.
    assert expected["bbh_direct"][0] < bbh_chance < 50.0


def test_guessing_each_letter_in_turn_averages_exactly_chance(paths, subsets):
    # Over the 4 constant letters every MMLU question is right exactly once: mean = 25.
    scores = [
        flan_t5_suite.score_suite(
            constant(letter), paths=paths, settings=["mmlu_direct"], subsets=subsets
        ).benchmarks["mmlu_direct"]
        for letter in "ABCD"
    ]
    assert sum(s.score for s in scores) / 4 == pytest.approx(25.0)
    assert sum(s.normalized for s in scores) / 4 == pytest.approx(0.0, abs=1e-9)


def test_normalized_average_is_the_mean_of_the_six_normalized_scores():
    def at(setting, score, chance):
        row = {
            "accuracy": score,
            "exact_match": score,
            "em": score,
            "chance": chance,
            "num_examples": 10.0,
        }
        return flan_t5_suite.combine_subsets(setting, {"all": row})

    chances = {
        "mmlu_direct": 25.0,
        "mmlu_cot": 25.0,
        "bbh_direct": 30.0,
        "bbh_cot": 30.0,
        "tydiqa_direct": 0.0,
        "mgsm_cot": 0.0,
    }
    at_chance = {s: at(s, c, c) for s, c in chances.items()}
    perfect = {s: at(s, 100.0, c) for s, c in chances.items()}
    assert flan_t5_suite.normalized_average(at_chance) == pytest.approx(0.0)
    assert flan_t5_suite.normalized_average(perfect) == pytest.approx(100.0)
    mixed = dict(at_chance, mmlu_direct=at("mmlu_direct", 62.5, 25.0))  # (62.5-25)/75 = 50
    assert flan_t5_suite.normalized_average(mixed) == pytest.approx(50.0 / 6)
    with pytest.raises(ValueError, match="missing"):
        flan_t5_suite.normalized_average({"mmlu_direct": perfect["mmlu_direct"]})


def test_mmlu_is_averaged_over_questions_and_bbh_over_tasks(paths):
    rows = {
        "a": {"accuracy": 100.0, "chance": 25.0, "num_examples": 3.0},
        "b": {"accuracy": 0.0, "chance": 25.0, "num_examples": 1.0},
    }
    assert flan_t5_suite.combine_subsets("mmlu_direct", rows).score == pytest.approx(75.0)
    bbh_rows = {
        k: {"exact_match": v["accuracy"], "chance": 0.0, "num_examples": v["num_examples"]}
        for k, v in rows.items()
    }
    assert flan_t5_suite.combine_subsets("bbh_direct", bbh_rows).score == pytest.approx(50.0)


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"),
        (" (C) because", "C"),
        ("D. Idols", "D"),
        ("So the answer is (A).", "A"),
        ("The answer is B\n\nQ: next", "B"),
        ("I do not know", ""),
        ("", ""),
    ],
)
def test_parse_choice_letter(text, letter):
    assert flan_t5_suite.parse_choice_letter(text) == letter


@pytest.mark.parametrize(
    "text, answer",
    [
        ("So the answer is ] } ].", "] } ]"),
        ("valid\n\nQ: more", "valid"),
        ("(B).", "(B)"),
        ("x. So the answer is -219.", "-219"),
        ("So the answer is yes.\nQ: x", "yes"),
    ],
)
def test_parse_bbh_answer(text, answer):
    assert flan_t5_suite.parse_bbh_answer(text) == answer


def test_bbh_exact_match_is_strict_so_dyck_brackets_count(paths):
    examples = flan_t5_suite.load_examples("bbh_direct", "dyck_languages", paths=paths)[:20]
    wrong = [")" if e.answers[0] != ")" else "]" for e in examples]
    assert flan_t5_suite.score_predictions("bbh_direct", examples, wrong)["exact_match"] == 0.0


# ----------------------------------------------------------------------------- golden prompts


def test_mmlu_5_shot_direct_prompt_golden(paths):
    example = flan_t5_suite.load_examples("mmlu_direct", "abstract_algebra", paths=paths)[0]
    assert example.inputs == (
        "The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
        "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\n"
        "Answer: B\n\n"
        "Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 "
        "| If H and K are subgroups of G then HK is a subgroup of G.\nA. True, True\n"
        "B. False, False\nC. True, False\nD. False, True\nAnswer: B\n\n"
        "Statement 1 | Every element of a group generates a cyclic subgroup of the group. "
        "Statement 2 | The symmetric group S_10 has 10 elements.\nA. True, True\nB. False, False\n"
        "C. True, False\nD. False, True\nAnswer: C\n\n"
        "Statement 1| Every function from a finite set onto itself must be one to one. "
        "Statement 2 | Every subgroup of an abelian group is abelian.\nA. True, True\n"
        "B. False, False\nC. True, False\nD. False, True\nAnswer: A\n\n"
        "Find the characteristic of the ring 2Z.\nA. 0\nB. 3\nC. 12\nD. 30\nAnswer: A\n\n"
        "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
        "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
    )
    assert example.target == "B" and example.answers == ("B",)


def test_bbh_3_shot_cot_prompt_golden(paths):
    example = flan_t5_suite.load_examples("bbh_cot", "sports_understanding", paths=paths)[0]
    assert example.inputs == (
        "Determine whether an artificially constructed sentence relating to sports is plausible "
        "or not.\n\n"
        'Q: Is the following sentence plausible? "Bam Adebayo scored a reverse layup in the '
        'Western Conference Finals."\n'
        "A: Let's think step by step. Bam Adebayo is an American basketball player. Scoring a "
        "reverse layup in the Western Conference Finals is part of the NBA Finals. So the answer "
        "is yes.\n\n"
        'Q: Is the following sentence plausible? "Santi Cazorla scored a touchdown."\n'
        "A: Let's think step by step. Santi Cazorla is a soccer player. Touchdown is part of "
        "American football and rugby. So the answer is no.\n\n"
        'Q: Is the following sentence plausible? "DeMar DeRozan was called for the goal tend."\n'
        "A: Let's think step by step. DeMar DeRozan is an American basketball player. Goal "
        "tending is part of basketball. So the answer is yes.\n\n"
        'Q: Is the following sentence plausible? "Elias Lindholm beat the buzzer."\n'
        "A: Let's think step by step."
    )
    assert example.answers == (raw_bbh("sports_understanding")[0]["target"],)
    direct = flan_t5_suite.load_examples("bbh_direct", "sports_understanding", paths=paths)[0]
    assert direct.inputs.endswith(
        'Q: Is the following sentence plausible? "Santi Cazorla scored a touchdown."\nA: no\n\n'
        'Q: Is the following sentence plausible? "DeMar DeRozan was called for the goal tend."\n'
        'A: yes\n\nQ: Is the following sentence plausible? "Elias Lindholm beat the buzzer."\nA:'
    )


def test_tydiqa_1_shot_prompt_golden(paths):
    examples = flan_t5_suite.load_examples("tydiqa_direct", "swahili", paths=paths)
    (example,) = [e for e in examples if e.key == "swahili-2891310630328813902-2"]
    assert example.inputs == (
        "Passage: Popo ni mamalia kama panya mwenye mabawa. \n"
        "Question: Je,popo ni ndege ama mnyama?\nAnswer: mamalia\n\n"
        "Passage: Kimo chake ni mita 300 na juu yake kuna antena ya redio jumla ya kimo inafikia "
        "mita 324. \nQuestion: Mnara wa Eiffel una urefu gani?\nAnswer:"
    )
    assert example.answers == ("mita 324", "mita 324")
    # The exemplar is never the item itself, and it is drawn the same way every run.
    again = flan_t5_suite.load_examples("tydiqa_direct", "swahili", paths=paths)
    assert [e.inputs for e in again] == [e.inputs for e in examples]
    assert all(e.inputs.count(e.inputs.rsplit("Question: ", 1)[1]) == 1 for e in examples)


MGSM_EXEMPLARS = (
    "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. "
    "After they are done, there will be 21 trees. How many trees did the grove workers plant "
    "today?\nA: Let's think step by step. There are 15 trees originally. Then there were 21 "
    "trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6.\n\n"
    "Q: If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the "
    "parking lot?\nA: Let's think step by step. There are originally 3 cars. 2 more cars arrive. "
    "3 + 2 = 5. The answer is 5.\n\n"
    "Q: Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they "
    "have left in total?\nA: Let's think step by step. Originally, Leah had 32 chocolates. Her "
    "sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. "
    "The answer is 39.\n\n"
    "Q: Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How "
    "many lollipops did Jason give to Denny?\nA: Let's think step by step. Jason started with 20 "
    "lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The "
    "answer is 8.\n\n"
    "Q: Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many "
    "toys does he have now?\nA: Let's think step by step. Shawn started with 5 toys. If he got 2 "
    "toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The answer is 9.\n\n"
    "Q: There were nine computers in the server room. Five more computers were installed each "
    "day, from monday to thursday. How many computers are now in the server room?\nA: Let's "
    "think step by step. There were originally 9 computers. For each of 4 days, 5 more computers "
    "were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.\n\n"
    "Q: Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 "
    "more. How many golf balls did he have at the end of wednesday?\nA: Let's think step by "
    "step. Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. "
    "After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.\n\n"
    "Q: Olivia has $23. She bought five bagels for $3 each. How much money does she have left?\n"
    "A: Let's think step by step. Olivia had 23 dollars. 5 bagels for 3 dollars each will be "
    "5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.\n\n"
)


def test_mgsm_8_shot_cot_prompt_golden(paths):
    example = flan_t5_suite.load_examples("mgsm_cot", "de", paths=paths)[0]
    assert example.inputs == MGSM_EXEMPLARS + (
        "Q: Janets Enten legen 16 Eier pro Tag. Sie isst drei jeden Morgen zum Frühstück und "
        "backt mit vier jeden Tag Muffins für ihre Freunde. Den Rest verkauft sie täglich auf dem "
        "Bauernmarkt für 2 US-Dollar pro frischem Entenei. Wie viel Dollar nimmt sie täglich auf "
        "dem Bauernmarkt ein?\nA:"
    )
    assert example.answers == ("18",) and example.target == "The answer is 18."


# ------------------------------------------------------------------------------ missing data


def test_missing_file_is_named_with_how_to_get_it(tmp_path, paths):
    empty = data_paths.DataPaths(root=str(tmp_path))
    with pytest.raises(data_paths.MissingDataError) as error:
        flan_t5_suite.load_examples("mmlu_direct", "anatomy", paths=empty)
    message = str(error.value)
    assert os.path.join(str(tmp_path), "mmlu", "test", "anatomy_test.csv") in message
    assert "hendrycks/test" in message
    # The MMLU slice has no anatomy test file: the default catalog run says so by name.
    with pytest.raises(data_paths.MissingDataError, match="anatomy_test.csv"):
        flan_t5_suite.score_suite(constant("A"), paths=paths, settings=["mmlu_direct"])
    no_exemplars = data_paths.DataPaths(
        root=str(tmp_path), source_dirs={"mgsm": paths.source_dir("mgsm")}
    )
    with pytest.raises(data_paths.MissingDataError, match="math_word_problems.txt"):
        flan_t5_suite.load_examples("mgsm_cot", "de", paths=no_exemplars)


# ------------------------------------------------------------------------------ seqio tasks


def test_task_names_round_trip():
    name = flan_t5_eval.make_eval_task_name("bbh_cot", "navigate")
    assert name == "flan_t5_eval__bbh_cot__navigate"
    assert flan_t5_eval.parse_eval_task_name(name) == ("bbh_cot", "navigate")
    with pytest.raises(ValueError, match="flan_t5_eval__<setting>__<subset>"):
        flan_t5_eval.parse_eval_task_name("flan_t5_eval__nope__navigate")


def test_seqio_task_yields_the_suite_examples_and_scores_like_the_suite(paths):
    vocab_path = shared_data_path("sentencepiece_test_vocab", "sentencepiece.model")
    vocabulary = seqio.SentencePieceVocabulary(str(vocab_path))
    for name in list(seqio.TaskRegistry.names()):
        if name.startswith(flan_t5_eval.PREFIX + "__"):
            seqio.TaskRegistry.remove(name)
    names = flan_t5_eval.register_flan_t5_eval_tasks(vocabulary, settings=["bbh_cot"], paths=paths)
    assert len(names) == 27
    task = seqio.get_mixture_or_task("flan_t5_eval__bbh_cot__navigate")
    dataset = task.get_dataset(None, split="test", shuffle=False, use_cached=False)
    rows = list(dataset.as_numpy_iterator())
    examples = flan_t5_suite.load_examples("bbh_cot", "navigate", paths=paths)
    assert [r["inputs_pretokenized"].decode() for r in rows] == [e.inputs for e in examples]
    targets = [
        task.postprocess_fn(r["targets_pretokenized"], example=r, is_target=True) for r in rows
    ]
    predictions = [
        task.postprocess_fn(p, example=None) for p in ["So the answer is Yes."] * len(rows)
    ]
    (metric_fn,) = task.metric_fns
    assert metric_fn(targets, predictions) == flan_t5_suite.score_predictions(
        "bbh_cot", examples, predictions
    )
    expected = share([e["target"] for e in raw_bbh("navigate")], "Yes")
    assert metric_fn(targets, predictions)["exact_match"] == pytest.approx(expected)
