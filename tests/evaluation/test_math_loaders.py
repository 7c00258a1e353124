"""Loaders: the real files in their original formats, cross-checks, and malformed input."""

import json
import xml.etree.ElementTree as ElementTree

import pytest

from flan_jax.evaluation import math_datasets
from flan_jax.evaluation.math_datasets import MathDataError
from flan_jax.evaluation.splits import normalise_question
from flan_jax.testing.shared_data import shared_data_path


def test_gsm8k_loader_reads_every_row():
    path = shared_data_path("gsm8k", "test.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    examples = math_datasets.load_gsm8k(path)
    assert len(examples) == len(rows) == 1319
    assert len({e.id for e in examples}) == len(examples)
    assert examples[0].id == "gsm8k/test-0" and examples[0].answer == "18"
    for row, example in zip(rows, examples):
        solution, final = row["answer"].split("\n#### ")
        assert example.question == row["question"].strip()
        assert example.rationale == solution.strip()
        assert example.answer == final.replace(",", "")


def test_gsm8k_cot_tsv_agrees_with_gsm8k_jsonl():
    """Two independent sources of the same problems must give the same answers."""
    jsonl = math_datasets.load_gsm8k(shared_data_path("gsm8k", "train.jsonl"))
    tsv = math_datasets.load_cot_tsv(shared_data_path("flan_cot_data", "gsm8k_train.tsv"))
    assert len(tsv) == len(jsonl) == 7473
    gold = {normalise_question(e.question): e.answer for e in jsonl}
    matched = [
        (gold[key], e.answer) for e in tsv if (key := normalise_question(e.question)) in gold
    ]
    assert len(matched) == len(tsv)
    assert [pair for pair in matched if pair[0] != pair[1]] == []


def test_multiarith_loader():
    path = shared_data_path("math_ood_samples", "MultiArith.sample.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    examples = math_datasets.load_math_dataset("multiarith", path)
    assert len(examples) == len(raw) == 40
    for row, example in zip(raw, examples):
        assert float(example.answer) == row["lSolutions"][0]
        assert example.question == " ".join(row["sQuestion"].split())
        assert example.id == f"multiarith/{row['iIndex']}" and example.source == "multiarith"
    assert examples[0].answer == "39"


def test_svamp_loader():
    path = shared_data_path("math_ood_samples", "SVAMP.sample.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    examples = math_datasets.load_math_dataset("svamp", path)
    assert len(examples) == len(raw) == 40
    for row, example in zip(raw, examples):
        assert float(example.answer) == row["Answer"]
        assert example.question.startswith(" ".join(row["Body"].split()))
        assert example.question.endswith(" ".join(row["Question"].split()))
    assert examples[0].id == "svamp/chal-1" and examples[0].answer == "51"


def _write_asdiv_xml(rows, path):
    """The ASDiv.xml layout: Problem elements with attributes and capitalised children."""
    root = ElementTree.Element("Machine-Reading-Corpus-File")
    problem_set = ElementTree.SubElement(root, "ProblemSet")
    for row in rows:
        problem = ElementTree.SubElement(
            problem_set, "Problem", ID=row["id"], Grade=row["grade"], Source=row["source"]
        )
        for tag, key in [
            ("Body", "body"),
            ("Question", "question"),
            ("Solution-Type", "solution_type"),
            ("Answer", "answer"),
            ("Formula", "formula"),
        ]:
            ElementTree.SubElement(problem, tag).text = row[key]
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def test_asdiv_jsonl_and_xml_forms_agree(tmp_path):
    path = shared_data_path("math_ood_samples", "asdiv.sample.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    from_jsonl = math_datasets.load_asdiv(path)
    _write_asdiv_xml(rows, tmp_path / "ASDiv.xml")
    from_xml = math_datasets.load_asdiv(tmp_path / "ASDiv.xml")
    assert from_xml == from_jsonl
    assert len(from_jsonl) == 40
    by_id = {e.id: e for e in from_jsonl}
    assert by_id["asdiv/nluds-0001"].answer == "9"  # "9 (apples)"
    assert by_id["asdiv/nluds-0001"].question == (
        "Seven red apples and two green apples are in the basket. "
        "How many apples are in the basket?"
    )
    non_numeric = [e for e in from_jsonl if not e.is_numeric]
    assert [e.answer for e in non_numeric] == ["Mrs. Hilt"]


def test_cot_tsv_loader_unescapes_newlines():
    examples = math_datasets.load_cot_tsv(shared_data_path("flan_cot_data", "aqua_train.tsv"))
    assert len(examples) == 2728 and examples[0].source == "aqua"
    assert examples[0].answer == "(C)"
    assert "\n(A) 300\n" in examples[0].question and "\\n" not in examples[0].question
    assert examples[0].rationale.splitlines()[0] == "1/7:1/7:1/14 = 2:2:1"


@pytest.mark.parametrize(
    "loader, content, message",
    [
        (
            math_datasets.load_gsm8k,
            '{"question": "q", "answer": "1 #### 2"}\n{"question": "q"\n',
            r"bad\.jsonl:2: not valid JSON",
        ),
        (math_datasets.load_gsm8k, '{"question": "q", "answer": "x"}\n', r"bad\.jsonl:1: .*####"),
        (
            math_datasets.load_gsm8k,
            '{"question": "q", "answer": "x #### many"}\n',
            r"bad\.jsonl:1: the answer must be a number",
        ),
        (
            math_datasets.load_gsm8k,
            '\n{"answer": "x #### 1"}\n',
            r"bad\.jsonl:2: missing .*question",
        ),
        (
            math_datasets.load_multiarith,
            '[{"sQuestion": "q", "lSolutions": [1, 2]}]',
            r"bad\.jsonl: problem 0: lSolutions must hold exactly one",
        ),
        (
            math_datasets.load_svamp,
            '[{"Body": "b", "Question": "q", "Answer": 1},\n {"Body": "b"}]',
            r"bad\.jsonl: problem 1: missing .*Answer",
        ),
        (math_datasets.load_svamp, '{"Body": "b"}', r"expected a JSON list"),
        (
            math_datasets.load_asdiv,
            '{"body": "b", "question": "q", "answer": ""}\n',
            r"bad\.jsonl:1: empty answer",
        ),
        (math_datasets.load_cot_tsv, "q\t1\tr\nq\t1\n", r"bad\.jsonl:2: expected 3 tab-separated"),
    ],
)
def test_malformed_input_names_file_and_line(tmp_path, loader, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(MathDataError, match=message):
        loader(path)


def test_malformed_asdiv_xml_names_line(tmp_path):
    path = tmp_path / "ASDiv.xml"
    path.write_text("<ProblemSet>\n<Problem ID='a'>\n<Body>x</Body>\n</ProblemSet>\n")
    with pytest.raises(MathDataError, match=r"ASDiv\.xml:4:\d+: invalid XML"):
        math_datasets.load_asdiv(path)


def test_unknown_data_set_suggests_close_names():
    with pytest.raises(ValueError, match=r"Did you mean \['svamp'\]"):
        math_datasets.load_math_dataset("svamq", "x")
