"""Loaders for the math word-problem sets, each read in its original file format.

| name         | file                          | fields read                                    |
|--------------|-------------------------------|------------------------------------------------|
| `gsm8k`      | JSONL                         | `question`, `answer` ending in `#### N`        |
| `multiarith` | JSON list                     | `iIndex`, `sQuestion`, `lSolutions` (one value)|
| `asdiv`      | XML (`Problem` elements) or   | `ID`, `Body`, `Question`, `Answer` (`9 (apples)`)|
|              | JSONL (lower-case keys)       |                                                |
| `svamp`      | JSON list                     | `ID`, `Body`, `Question`, `Answer`             |
| `cot_tsv`    | TSV of the Flan CoT data      | question, answer, rationale (literal `\\n`)    |

Every loader returns `MathExample`s with a canonical answer (`answers.canonicalize_answer`:
`"1,080"` -> `"1080"`, `39.0` -> `"39"`, `"9 (apples)"` -> `"9"`) and a stable id. Malformed
input raises `MathDataError` naming the file and the line (or record) at fault.

Worked example (first GSM8K train row):

    {"question": "Natalia sold clips to 48 ...", "answer": "Natalia sold 48/2 = <<48/2=24>>24
     clips in May.\\n...\\n#### 72"}
    -> MathExample(question="Natalia sold clips to 48 ...", answer="72",
                   rationale="Natalia sold 48/2 = <<48/2=24>>24 clips in May.\\n...",
                   source="gsm8k", id="gsm8k/train-0")

Rationales are kept exactly as written (calculator annotations included); the distillation
formats strip what they need to.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from typing import Any

from flan_jax.data import file_io
from flan_jax.errors import ConfigError, UserError
from flan_jax.evaluation import answers


class MathDataError(UserError, ValueError):
    """A data file that does not have the expected format; the message names file and line."""


@dataclasses.dataclass(frozen=True)
class MathExample:
    """One math word problem, the same shape for every source.

    Attributes:
      question: the full problem text (SVAMP and ASDiv body and question joined).
      answer: the canonical gold answer: a canonical number ("72", "0.5", "8/3") or, for
        non-numeric answers, the answer text ("Mrs. Hilt", "(C)", "yes").
      rationale: the gold step-by-step solution without its final answer line, or None.
      source: the data set, e.g. "gsm8k", "svamp".
      id: unique and stable within the source, e.g. "gsm8k/test-12", "svamp/chal-1".
    """

    question: str
    answer: str
    rationale: str | None
    source: str
    id: str

    @property
    def is_numeric(self) -> bool:
        """Whether the gold answer is a number."""
        return answers.parse_number(self.answer) is not None


def _split_name(path: str) -> str:
    base = os.path.basename(path)
    return base.split(".", 1)[0]


def _read_json_problems(
    path: str, required: tuple[str, ...]
) -> Iterator[tuple[int, dict[str, Any], str]]:
    """(position, problem, where) for each object of a JSON list that has `required` keys."""
    try:
        data = json.loads(file_io.read_text(path, error_type=MathDataError))
    except json.JSONDecodeError as error:
        raise MathDataError(f"{path}:{error.lineno}: not valid JSON ({error.msg}).") from None
    if not isinstance(data, list):
        raise MathDataError(f"{path}: expected a JSON list of problems, got {type(data).__name__}.")
    for position, row in enumerate(data):
        where = f"{path}: problem {position}"
        if not isinstance(row, dict):
            raise MathDataError(f"{where}: expected an object, got {type(row).__name__}.")
        _require(row, required, where)
        yield position, row, where


def _require(row: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [key for key in keys if key not in row]
    if missing:
        raise MathDataError(f"{where}: missing field(s) {missing}; the record has {sorted(row)}.")


def _join_body_question(body: str, question: str) -> str:
    return " ".join(f"{body.strip()} {question.strip()}".split())


def _canonical_number(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise MathDataError(f"{where}: the answer must be a number, got {value!r}.")
    if isinstance(value, float) and not math.isfinite(value):
        raise MathDataError(f"{where}: the answer must be finite, got {value!r}.")
    number = answers.parse_number(repr(value) if isinstance(value, float) else str(value))
    if number is None:
        raise MathDataError(f"{where}: the answer must be a number, got {value!r}.")
    return answers.format_number(number)


def load_gsm8k(path: str | os.PathLike) -> list[MathExample]:
    """GSM8K JSONL: `{"question": ..., "answer": "<solution lines>\\n#### <number>"}`.

    Ids are `gsm8k/<file stem>-<row index>` (e.g. `gsm8k/test-0`).
    """
    path = os.fspath(path)
    split = _split_name(path)
    examples: list[MathExample] = []
    for line_number, row in file_io.read_jsonl_objects(path, error_type=MathDataError):
        where = f"{path}:{line_number}"
        _require(row, ("question", "answer"), where)
        solution, marker, final = str(row["answer"]).rpartition("####")
        if not marker or not final.strip():
            raise MathDataError(
                f"{where}: the answer has no final '#### <number>' line: "
                f"{str(row['answer'])[-80:]!r}."
            )
        examples.append(
            MathExample(
                question=str(row["question"]).strip(),
                answer=_canonical_number(final.strip(), where),
                rationale=solution.strip(),
                source="gsm8k",
                id=f"gsm8k/{split}-{len(examples)}",
            )
        )
    return examples


def load_multiarith(path: str | os.PathLike) -> list[MathExample]:
    """MultiArith JSON: a list of `{"iIndex", "sQuestion", "lSolutions": [x], ...}`."""
    path = os.fspath(path)
    examples = []
    for position, row, where in _read_json_problems(path, ("sQuestion", "lSolutions")):
        solutions = row["lSolutions"]
        if not isinstance(solutions, list) or len(solutions) != 1:
            raise MathDataError(
                f"{where}: lSolutions must hold exactly one value, got {solutions!r}."
            )
        examples.append(
            MathExample(
                question=" ".join(str(row["sQuestion"]).split()),
                answer=_canonical_number(solutions[0], where),
                rationale=None,
                source="multiarith",
                id=f"multiarith/{row.get('iIndex', position)}",
            )
        )
    return examples


def load_svamp(path: str | os.PathLike) -> list[MathExample]:
    """SVAMP JSON: a list of `{"ID", "Body", "Question", "Equation", "Answer", "Type"}`."""
    path = os.fspath(path)
    examples = []
    for position, row, where in _read_json_problems(path, ("Body", "Question", "Answer")):
        examples.append(
            MathExample(
                question=_join_body_question(str(row["Body"]), str(row["Question"])),
                answer=_canonical_number(row["Answer"], where),
                rationale=None,
                source="svamp",
                id=f"svamp/{row.get('ID', position)}",
            )
        )
    return examples


def _asdiv_example(fields: dict[str, Any], where: str, default_id: str) -> MathExample:
    _require(fields, ("body", "question", "answer"), where)
    # "9 (apples)" -> "9"; a non-numeric answer ("Mrs. Hilt", "2:3") keeps its text.
    answer = answers.canonicalize_answer(str(fields["answer"]))
    if not answer:
        raise MathDataError(f"{where}: empty answer.")
    return MathExample(
        question=_join_body_question(str(fields["body"]), str(fields["question"])),
        answer=answer,
        rationale=None,
        source="asdiv",
        id=f"asdiv/{fields.get('id') or default_id}",
    )


def _load_asdiv_xml(path: str) -> list[MathExample]:
    try:
        root = ElementTree.parse(path).getroot()
    except ElementTree.ParseError as error:
        line, column = error.position
        raise MathDataError(f"{path}:{line}:{column}: invalid XML ({error}).") from None
    examples = []
    for position, problem in enumerate(root.iter("Problem")):
        where = f"{path}: Problem {problem.get('ID', position)}"
        # XML child tags are capitalised ("Body", "Solution-Type"); the JSONL form is lower-case.
        fields: dict[str, str | None] = {child.tag.lower(): (child.text or "") for child in problem}
        fields["id"] = problem.get("ID")
        examples.append(_asdiv_example(fields, where, default_id=str(position)))
    if not examples:
        raise MathDataError(f"{path}: no <Problem> elements; is this the ASDiv XML file?")
    return examples


def load_asdiv(path: str | os.PathLike) -> list[MathExample]:
    """ASDiv, either the original XML (`ASDiv.xml`) or its JSONL form, chosen by extension.

    XML: `<Problem ID="nluds-0001" Grade="1"><Body>...</Body><Question>...</Question>
    <Solution-Type>Addition</Solution-Type><Answer>9 (apples)</Answer><Formula>7+2=9</Formula>
    </Problem>`. JSONL: one object per line with keys `id`, `body`, `question`, `answer`, ...
    """
    path = os.fspath(path)
    if path.endswith(".xml"):
        return _load_asdiv_xml(path)
    return [
        _asdiv_example(row, f"{path}:{line_number}", default_id=f"line-{line_number}")
        for line_number, row in file_io.read_jsonl_objects(path, error_type=MathDataError)
    ]


def unescape_tsv_field(text: str) -> str:
    """The Flan CoT TSVs write line breaks and tabs as the two characters `\\n` and `\\t`."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def load_cot_tsv(path: str | os.PathLike, *, source: str | None = None) -> list[MathExample]:
    """A Flan CoT TSV: `question<TAB>answer<TAB>rationale` per line, no header.

    Args:
      path: e.g. `.../flan_cot_data/gsm8k_train.tsv`.
      source: the data set name; defaults to the file name before `_train.tsv`.
    """
    path = os.fspath(path)
    source = source or os.path.basename(path).split("_train", 1)[0].split(".", 1)[0]
    examples = []
    for line_number, line in file_io.read_text_lines(path, error_type=MathDataError):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) != 3:
            raise MathDataError(
                f"{path}:{line_number}: expected 3 tab-separated columns "
                f"(question, answer, rationale), got {len(columns)}."
            )
        question, answer, rationale = (unescape_tsv_field(c).strip() for c in columns)
        if not question or not answer:
            raise MathDataError(f"{path}:{line_number}: empty question or answer.")
        examples.append(
            MathExample(
                question=question,
                answer=answers.canonicalize_answer(answer),
                rationale=rationale or None,
                source=source,
                id=f"{source}/cot-{line_number - 1}",
            )
        )
    return examples


LOADERS: dict[str, Callable[..., list[MathExample]]] = {
    "gsm8k": load_gsm8k,
    "multiarith": load_multiarith,
    "asdiv": load_asdiv,
    "svamp": load_svamp,
    "cot_tsv": load_cot_tsv,
}


def load_math_dataset(name: str, path: str | os.PathLike) -> list[MathExample]:
    """Loads `path` with the loader registered as `name` (see `LOADERS`)."""
    if name not in LOADERS:
        close = difflib.get_close_matches(name, LOADERS, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ConfigError(f"Unknown math data set {name!r}; known: {sorted(LOADERS)}.{hint}")
    return LOADERS[name](path)
