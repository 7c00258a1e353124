"""The Flan-T5 evaluation benchmarks, read from their original files, and their few-shot prompts.

Each benchmark lives in one data directory (a `DataPaths` source: `$FLAN_JAX_DATA_DIR/<source>`
or `DataPaths.source_dirs[<source>]`), in the layout its authors publish:

- `mmlu`: `dev/<subject>_dev.csv` (the 5 exemplars) and `test/<subject>_test.csv`
  (github.com/hendrycks/test).
- `bbh`: `bbh/<task>.json` and `cot-prompts/<task>.txt` (suzgunmirac/BIG-Bench-Hard).
- `tydiqa_goldp`: `<language>_tydiqa_dev.json`, else the official `tydiqa-goldp-v1.1-dev.json`
  filtered by id prefix (google-research-datasets/tydiqa).
- `mgsm`: `mgsm_<lang>.tsv`, question TAB answer, no header (google-research/url-nlp).
- `cot_exemplars`: `flant5_cot_specialization/mmlu-cot.json` (the 57 MMLU CoT prompts,
  FranxYao/FlanT5-CoT-Specialization) and `active_prompt/math_word_problems.txt` (the 8 CoT
  exemplars of Wei et al. 2022, shizhediao/active-prompt).

MMLU CSVs may be the original ones (no header, answer letter) or the common re-hosted form
(header `question,choice0,...,answer`, answer a 0-based index).

The prompts (the setting is `<benchmark>_<direct|cot>`):

- `mmlu_direct`: the 5-shot format of Hendrycks et al.'s `evaluate.py`, kept to the
  character (its header says "about  <subject>." with two spaces): question, `A. ...` to
  `D. ...` lines, `Answer: X`. Target: the letter.
- `mmlu_cot`: the published 5-shot MMLU CoT prompt of the subject (Flan-PaLM's, as released
  with the CoT-specialization work; 3 subjects hold 4 exemplars there), then
  `Q: ...\\n(A) ... (B) ... (C) ... (D) ...\\nA: Let's think step by step.` in its format.
  Target: `The answer is (X).`
- `bbh_cot`: the published 3-shot `cot-prompts/<task>.txt` (canary line dropped), then
  `Q: <input>\\nA: Let's think step by step.`, as the BBH authors run it. Target:
  `So the answer is <target>.`
- `bbh_direct`: the same task description and exemplars without the reasoning (`Q: ...\\nA:
  <answer>`), as the Flan-T5 paper's answer-only BBH prompts. Target: the BBH target.
- `tydiqa_direct`: 1-shot; the exemplar is another dev question of the same language, drawn
  per example (`templates.example_rng`), because only the dev split is public for GoldP in
  every language. Layout (ours): `Passage: ...\\nQuestion: ...\\nAnswer: ...`. Target: the
  first gold answer; every gold answer is kept for scoring.
- `mgsm_cot`: 8-shot CoT with the English exemplars of Wei et al. (MGSM's "EN-CoT" setting:
  MGSM's translated exemplars ship as a Python module, which we do not execute), in that
  file's `Q: ...\\nA: <rationale> The answer is N.` layout. Target: `The answer is N.`
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.resources
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from flan_jax.data import file_io
from flan_jax.errors import UserError
from flan_jax.tasks import data_paths, templates

SOURCES = ("mmlu", "bbh", "tydiqa_goldp", "mgsm", "cot_exemplars")
MMLU_COT_PROMPTS = "flant5_cot_specialization/mmlu-cot.json"
MATH_COT_EXEMPLARS = "active_prompt/math_word_problems.txt"
TYDIQA_OFFICIAL_DEV = "tydiqa-goldp-v1.1-dev.json"
MMLU_LETTERS = ("A", "B", "C", "D")
_MMLU_HEADER = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]
_BBH_OPTION_RE = re.compile(r"^\([A-Z]\) ", re.MULTILINE)
_BBH_COT_ANSWER_RE = re.compile(r"So the answer is (.*)\.\s*$", re.DOTALL)
_BBH_COT_MARKER = "\nA: Let's think step by step."

HOW_TO_GET = {
    "mmlu": "Get MMLU from github.com/hendrycks/test (data.tar linked from its README) and put "
    "its dev/ and test/ folders there.",
    "bbh": "Clone github.com/suzgunmirac/BIG-Bench-Hard and use its root (bbh/ and "
    "cot-prompts/) as the folder.",
    "tydiqa_goldp": f"Put {TYDIQA_OFFICIAL_DEV} from github.com/google-research-datasets/tydiqa "
    "there (or per-language <language>_tydiqa_dev.json files).",
    "mgsm": "Put the mgsm_<lang>.tsv files of github.com/google-research/url-nlp (mgsm/) there.",
    "cot_exemplars": f"Put {MMLU_COT_PROMPTS} (lib_prompt/mmlu-cot.json of "
    f"github.com/FranxYao/FlanT5-CoT-Specialization) and {MATH_COT_EXEMPLARS} "
    "(basic_cot_prompts/math_word_problems of github.com/shizhediao/active-prompt) there.",
}


class BenchmarkDataError(UserError, ValueError):
    """A benchmark file that does not have its published format; names the file and record."""


@dataclasses.dataclass(frozen=True)
class EvalExample:
    """One evaluation item, ready for a text-to-text model.

    Attributes:
      key: stable within its subset, e.g. "test:12".
      inputs: the full few-shot prompt.
      target: the reference completion: what a perfect model writes, and what the scorers
        parse the same way as a prediction.
      answers: the gold answers a prediction is compared with (several for TyDiQA).
      num_options: the answer options a guess picks from; 0 for free-form answers. The
        example's chance accuracy is 1 / num_options (0 when free-form).
    """

    key: str
    inputs: str
    target: str
    answers: tuple[str, ...]
    num_options: int = 0

    @property
    def chance(self) -> float:
        """The accuracy of a uniform guess over the options, in [0, 1]."""
        return 1.0 / self.num_options if self.num_options else 0.0


@functools.cache
def load_catalog() -> dict[str, Any]:
    """The subjects, tasks and languages of the suite (`flan_t5_benchmarks.yaml`)."""
    text = importlib.resources.files(__package__).joinpath("flan_t5_benchmarks.yaml").read_text()
    return yaml.safe_load(text)


def source_file(source: str, relative: str, *, paths: data_paths.DataPaths | None) -> str:
    """The path of `relative` in `source`'s directory; MissingDataError names it when absent."""
    directory = data_paths.resolve_data_paths(paths).source_dir(source)
    return data_paths.require_path(
        os.path.join(directory, relative),
        dataset=source,
        how_to_get=f"{HOW_TO_GET[source]} (folder: {directory}; or set "
        f"DataPaths.source_dirs[{source!r}]).",
    )


def _read_json(path: str) -> Any:
    try:
        return json.loads(file_io.read_text(path, error_type=BenchmarkDataError))
    except json.JSONDecodeError as error:
        raise BenchmarkDataError(f"{path}:{error.lineno}: not valid JSON ({error.msg}).") from error


# ---------------------------------------------------------------------------------------- MMLU


@dataclasses.dataclass(frozen=True)
class MmluQuestion:
    question: str
    choices: tuple[str, str, str, str]
    answer: str  # "A" .. "D"


def read_mmlu_csv(path: str) -> list[MmluQuestion]:
    """The questions of one MMLU CSV, original (letter answers) or re-hosted (header, index)."""
    rows = list(csv.reader(io.StringIO(file_io.read_text(path, error_type=BenchmarkDataError))))
    if rows and [cell.strip() for cell in rows[0]] == _MMLU_HEADER:
        rows = rows[1:]
    questions = []
    for line, row in enumerate(rows, start=1):
        answer = row[-1].strip() if len(row) == 6 else ""
        if answer in ("0", "1", "2", "3"):
            answer = MMLU_LETTERS[int(answer)]
        if answer not in MMLU_LETTERS:
            raise BenchmarkDataError(
                f"{path}: row {line}: expected 6 columns (question, 4 choices, answer A-D or "
                f"0-3), got {row!r}."
            )
        questions.append(MmluQuestion(row[0], (row[1], row[2], row[3], row[4]), answer))
    return questions


def _mmlu_direct_block(question: MmluQuestion, *, with_answer: bool) -> str:
    lines = [question.question]
    lines += [f"{letter}. {choice}" for letter, choice in zip(MMLU_LETTERS, question.choices)]
    block = "\n".join(lines) + "\nAnswer:"
    return block + f" {question.answer}\n\n" if with_answer else block


def mmlu_direct_prompt(subject: str, exemplars: Sequence[MmluQuestion], item: MmluQuestion) -> str:
    # Hendrycks et al. prefix each word of the subject with a space, hence "about  x".
    spaced_subject = "".join(" " + word for word in subject.split("_"))
    header = (
        f"The following are multiple choice questions (with answers) about {spaced_subject}.\n\n"
    )
    shots = "".join(_mmlu_direct_block(q, with_answer=True) for q in exemplars)
    return header + shots + _mmlu_direct_block(item, with_answer=False)


def mmlu_cot_prompt(published_prompt: str, item: MmluQuestion) -> str:
    options = " ".join(f"({letter}) {choice}" for letter, choice in zip(MMLU_LETTERS, item.choices))
    return (
        f"{published_prompt.strip()}\n\nQ: {item.question}\n{options}\nA: Let's think step by step."
    )


def load_mmlu(subject: str, *, cot: bool, paths: data_paths.DataPaths | None) -> list[EvalExample]:
    """The test questions of an MMLU subject with their 5-shot direct or CoT prompts."""
    test = read_mmlu_csv(source_file("mmlu", f"test/{subject}_test.csv", paths=paths))
    if cot:
        prompts_path = source_file("cot_exemplars", MMLU_COT_PROMPTS, paths=paths)
        published = _read_json(prompts_path)
        if subject not in published:
            raise BenchmarkDataError(f"{prompts_path}: no CoT prompt for subject {subject!r}.")
        return [
            EvalExample(
                f"test:{i}",
                mmlu_cot_prompt(published[subject], q),
                f"The answer is ({q.answer}).",
                (q.answer,),
                num_options=4,
            )
            for i, q in enumerate(test)
        ]
    dev = read_mmlu_csv(source_file("mmlu", f"dev/{subject}_dev.csv", paths=paths))[:5]
    return [
        EvalExample(
            f"test:{i}", mmlu_direct_prompt(subject, dev, q), q.answer, (q.answer,), num_options=4
        )
        for i, q in enumerate(test)
    ]


# ----------------------------------------------------------------------------------------- BBH


@dataclasses.dataclass(frozen=True)
class BbhCotPrompt:
    """A published BBH CoT prompt, split: the description, and each exemplar's question
    block (`Q: ...`), reasoning (`A: Let's think step by step. ...`) and answer."""

    text: str
    description: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]


def read_bbh_cot_prompt(path: str) -> BbhCotPrompt:
    raw = file_io.read_text(path, error_type=BenchmarkDataError)
    # The files open with a canary line, then "-----".
    _, separator, text = raw.partition("-----\n")
    if not separator:
        raise BenchmarkDataError(f"{path}: expected the canary line and '-----' before the prompt.")
    text = text.strip()
    description, *shots = text.split("\n\nQ: ")
    questions, answers = [], []
    for number, shot in enumerate(shots, start=1):
        question, marker, reasoning = shot.partition(_BBH_COT_MARKER)
        answer = _BBH_COT_ANSWER_RE.search(reasoning)
        if not marker or answer is None:
            raise BenchmarkDataError(
                f'{path}: exemplar {number} lacks "A: Let\'s think step by step." or its final '
                '"So the answer is ...".'
            )
        questions.append("Q: " + question)
        answers.append(answer.group(1).strip())
    return BbhCotPrompt(text, description, tuple(questions), tuple(answers))


def bbh_cot_prompt(prompt: BbhCotPrompt, task_input: str) -> str:
    return f"{prompt.text}\n\nQ: {task_input}{_BBH_COT_MARKER}"


def bbh_direct_prompt(prompt: BbhCotPrompt, task_input: str) -> str:
    shots = [f"{q}\nA: {a}" for q, a in zip(prompt.questions, prompt.answers)]
    return "\n\n".join([prompt.description, *shots, f"Q: {task_input}\nA:"])


def load_bbh(task: str, *, cot: bool, paths: data_paths.DataPaths | None) -> list[EvalExample]:
    """The examples of a BBH task with their 3-shot CoT or answer-only prompts."""
    kinds = load_catalog()["bbh_tasks"]
    if task not in kinds:
        raise BenchmarkDataError(f"Unknown BBH task {task!r}; known: {sorted(kinds)}.")
    data_path = source_file("bbh", f"bbh/{task}.json", paths=paths)
    prompt = read_bbh_cot_prompt(source_file("bbh", f"cot-prompts/{task}.txt", paths=paths))
    examples = []
    for i, record in enumerate(_read_json(data_path)["examples"]):
        if not isinstance(record, dict) or not {"input", "target"} <= set(record):
            raise BenchmarkDataError(f"{data_path}: examples[{i}] lacks 'input' or 'target'.")
        num_options = {"binary": 2, "free": 0}.get(kinds[task])
        if num_options is None:
            num_options = len(_BBH_OPTION_RE.findall(record["input"]))
        inputs = (bbh_cot_prompt if cot else bbh_direct_prompt)(prompt, record["input"])
        target = f"So the answer is {record['target']}." if cot else record["target"]
        examples.append(
            EvalExample(f"test:{i}", inputs, target, (record["target"],), num_options=num_options)
        )
    return examples


# -------------------------------------------------------------------------------------- TyDiQA


@dataclasses.dataclass(frozen=True)
class TydiqaQuestion:
    id: str
    context: str
    question: str
    answers: tuple[str, ...]


def read_squad_questions(path: str, *, id_prefix: str = "") -> list[TydiqaQuestion]:
    """The questions of a SQuAD 1.1 JSON file whose id starts with `id_prefix`, in file order."""
    questions = []
    for article in _read_json(path).get("data", []):
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                if qa["id"].startswith(id_prefix):
                    answers = tuple(a["text"] for a in qa["answers"])
                    if not answers:
                        raise BenchmarkDataError(f"{path}: question {qa['id']} has no answer.")
                    questions.append(
                        TydiqaQuestion(qa["id"], paragraph["context"], qa["question"], answers)
                    )
    return questions


def _tydiqa_block(question: TydiqaQuestion) -> str:
    return f"Passage: {question.context}\nQuestion: {question.question}\nAnswer:"


def tydiqa_prompt(exemplar: TydiqaQuestion, item: TydiqaQuestion) -> str:
    return f"{_tydiqa_block(exemplar)} {exemplar.answers[0]}\n\n{_tydiqa_block(item)}"


def read_tydiqa_language(
    language: str, *, paths: data_paths.DataPaths | None
) -> list[TydiqaQuestion]:
    """A language's GoldP dev questions: its own file, else filtered from the official file."""
    directory = data_paths.resolve_data_paths(paths).source_dir("tydiqa_goldp")
    own_file = os.path.join(directory, f"{language}_tydiqa_dev.json")
    if os.path.exists(own_file):
        return read_squad_questions(own_file)
    official = source_file("tydiqa_goldp", TYDIQA_OFFICIAL_DEV, paths=paths)
    # Official GoldP ids start with the language: "bengali-608617701520483849-1".
    return read_squad_questions(official, id_prefix=f"{language}-")


def load_tydiqa(
    language: str, *, paths: data_paths.DataPaths | None, seed: int = 0
) -> list[EvalExample]:
    """A language's GoldP dev questions with 1-shot prompts (exemplar: another dev question)."""
    questions = read_tydiqa_language(language, paths=paths)
    if len(questions) < 2:
        raise BenchmarkDataError(
            f"TyDiQA-GoldP {language}: {len(questions)} questions; 1-shot prompts need 2 or more."
        )
    examples = []
    for i, item in enumerate(questions):
        rng = templates.example_rng(seed, f"tydiqa_goldp/{language}", item.id)
        other = int(rng.integers(len(questions) - 1))
        exemplar = questions[other + (other >= i)]  # any question but the item itself
        examples.append(
            EvalExample(item.id, tydiqa_prompt(exemplar, item), item.answers[0], item.answers)
        )
    return examples


# ---------------------------------------------------------------------------------------- MGSM


def read_math_cot_exemplars(path: str) -> list[str]:
    """The exemplars of `math_word_problems.txt`, each `Q: ...\\nA: <rationale> The answer is N.`"""
    records = _read_json(path)
    shots = []
    for i, record in enumerate(records.get("prompt", []) if isinstance(records, dict) else []):
        if not {"question", "rationale", "pred_ans"} <= set(record):
            raise BenchmarkDataError(f"{path}: prompt[{i}] lacks question, rationale or pred_ans.")
        shots.append(
            f"{record['question']} {record['rationale']} The answer is {record['pred_ans']}."
        )
    if not shots:
        raise BenchmarkDataError(f'{path}: expected {{"prompt": [exemplars]}}.')
    return shots


def mgsm_prompt(exemplars: Sequence[str], question: str) -> str:
    return "\n\n".join([*exemplars, f"Q: {question}\nA:"])


def load_mgsm(language: str, *, paths: data_paths.DataPaths | None) -> list[EvalExample]:
    """A language's 250 MGSM problems with the 8-shot CoT prompt."""
    path = source_file("mgsm", f"mgsm_{language}.tsv", paths=paths)
    exemplars = read_math_cot_exemplars(
        source_file("cot_exemplars", MATH_COT_EXEMPLARS, paths=paths)
    )
    examples = []
    for line_number, line in file_io.read_text_lines(path, error_type=BenchmarkDataError):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) != 2:
            raise BenchmarkDataError(
                f"{path}:{line_number}: expected 2 tab-separated columns (question, answer), "
                f"got {len(fields)}."
            )
        question, answer = fields[0], fields[1].strip()
        examples.append(
            EvalExample(
                f"test:{line_number - 1}",
                mgsm_prompt(exemplars, question),
                f"The answer is {answer}.",
                (answer,),
            )
        )
    return examples


def benchmark_subsets(benchmark: str) -> tuple[str, ...]:
    """The catalog's subjects / tasks / languages of `benchmark`."""
    catalog = load_catalog()
    key = {
        "mmlu": "mmlu_subjects",
        "bbh": "bbh_tasks",
        "tydiqa": "tydiqa_languages",
        "mgsm": "mgsm_languages",
    }[benchmark]
    return tuple(catalog[key])


def available_subsets(benchmark: str, *, paths: data_paths.DataPaths | None) -> tuple[str, ...]:
    """The catalog subsets whose files are present (MMLU slices ship few test files)."""
    available = []
    for subset in benchmark_subsets(benchmark):
        try:
            check_subset_files(benchmark, subset, paths=paths)
        except data_paths.MissingDataError:
            continue
        available.append(subset)
    return tuple(available)


def check_subset_files(benchmark: str, subset: str, *, paths: data_paths.DataPaths | None) -> None:
    """Raises MissingDataError naming a subset's absent test file (exemplars not checked)."""
    if benchmark == "mmlu":
        source_file("mmlu", f"test/{subset}_test.csv", paths=paths)
    elif benchmark == "bbh":
        source_file("bbh", f"bbh/{subset}.json", paths=paths)
    elif benchmark == "tydiqa":
        directory = data_paths.resolve_data_paths(paths).source_dir("tydiqa_goldp")
        if not os.path.exists(os.path.join(directory, f"{subset}_tydiqa_dev.json")):
            source_file("tydiqa_goldp", TYDIQA_OFFICIAL_DEV, paths=paths)
    else:
        source_file("mgsm", f"mgsm_{subset}.tsv", paths=paths)


def shared_data_paths(root: str) -> data_paths.DataPaths:
    """`DataPaths` for the folder names of the shared test data (`../shared/data`)."""
    folders: Mapping[str, str] = {
        "mmlu": "mmlu_slice",
        "bbh": "bbh",
        "tydiqa_goldp": "tydiqa_goldp_dev",
        "mgsm": "mgsm",
        "cot_exemplars": "cot_exemplars",
    }
    return data_paths.DataPaths(
        root=root, source_dirs={s: os.path.join(root, f) for s, f in folders.items()}
    )
