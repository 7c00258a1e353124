"""From a TFDS example of a Flan 2021 dataset to the fields of its template family.

Most datasets need only the catalog's declarations (field renames, label-name lookups,
an answer picked by index); the few that need more have a small named function here,
referenced by name from `datasets.yaml`. Worked example (super_glue/rte, catalog entry
`fields: {premise: premise, hypothesis: hypothesis}`, `label: {feature: label, names:
["yes", "no"]}`):

    raw    = {"premise": b"A dog runs.", "hypothesis": b"An animal moves.",
              "label": 0, "idx": 7}
    fields = {"premise": "A dog runs.", "hypothesis": "An animal moves.",
              "answer": "yes", "options": ["yes", "no"]}

`make_fields` returns None for examples that cannot be rendered (unlabeled test rows,
questions without an answer), which the loader skips.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from flan_jax.tasks.flan2021 import catalog

Fields = dict[str, Any]
_PATH_PART_RE = re.compile(r"^([^\[\]]+)((?:\[\d+\])*)$")


def decode_value(value: Any) -> Any:
    """TFDS numpy values as plain Python: bytes -> str, arrays -> lists, scalars -> items."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, Mapping):
        return {str(k): decode_value(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [decode_value(v) for v in value] if value.ndim else decode_value(value.item())
    if isinstance(value, (list, tuple)):
        return [decode_value(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def lookup_feature(example: Mapping[str, Any], path: str, where: str) -> Any:
    """Reads a feature path such as "answers.text[0]" from a decoded example."""
    value: Any = example
    for part in path.split("."):
        match = _PATH_PART_RE.match(part)
        if match is None:
            raise catalog.CatalogError(f"{where}: malformed feature path {path!r}.")
        name, indices = match.groups()
        if not isinstance(value, Mapping) or name not in value:
            raise catalog.CatalogError(
                f"{where}: feature {name!r} of path {path!r} is not in the example "
                f"(has {sorted(value) if isinstance(value, Mapping) else type(value)})."
            )
        value = value[name]
        for index in re.findall(r"\d+", indices):
            if int(index) >= len(value):
                return None  # e.g. an unanswerable question: no first answer.
            value = value[int(index)]
    return value


def make_fields(entry: catalog.DatasetEntry, raw: Mapping[str, Any]) -> Fields | None:
    """The template fields of one TFDS example, or None when it is to be skipped.

    Args:
      entry: the dataset's catalog entry.
      raw: the TFDS example as numpy values (bytes or str both work).
    """
    where = f"Flan 2021 dataset {entry.name!r}"
    example = decode_value(raw)
    fields: Fields = dict(entry.constants)
    for name, path in entry.fields.items():
        if isinstance(path, tuple):
            fields[name] = [lookup_feature(example, p, where) for p in path]
        else:
            fields[name] = lookup_feature(example, path, where)
    if entry.label is not None:
        index = lookup_feature(example, entry.label.feature, where)
        if index not in entry.label.names:
            return None  # Unlabeled (test splits use -1).
        fields["answer"] = entry.label.names[index]
        fields["options"] = list(dict.fromkeys(entry.label.names.values()))
    if entry.answer_index is not None:
        index = lookup_feature(example, entry.answer_index, where)
        options = fields.get("options") or []
        if not 0 <= index < len(options):
            return None
        fields["answer"] = options[index]
    if entry.preprocessor is not None:
        if entry.preprocessor not in PREPROCESSORS:
            raise catalog.CatalogError(
                f"{where}: unknown preprocessor {entry.preprocessor!r}; known: "
                f"{sorted(PREPROCESSORS)}."
            )
        extra = PREPROCESSORS[entry.preprocessor](example)
        if extra is None:
            return None
        fields.update(extra)
    if any(v is None or v == "" for v in fields.values()):
        return None  # A required text is missing from this row.
    return fields


def _numbered(lines: list[str]) -> str:
    return "\n".join(f"{i}. {line}" for i, line in enumerate(lines, start=1))


def arc_choices(example: Fields) -> Fields | None:
    """ARC: the answer key is a choice label, which need not equal the choice position."""
    labels = list(example["choices"]["label"])
    if example["answerKey"] not in labels:
        return None
    options = list(example["choices"]["text"])
    return {
        "question": example["question"],
        "options": options,
        "answer": options[labels.index(example["answerKey"])],
    }


def record_cloze(example: Fields) -> Fields | None:
    """ReCoRD: the query's "@placeholder" becomes a visible blank; entities are options."""
    if not example["answers"]:
        return None
    passage = example["passage"].replace("@highlight\n", "- ")
    return {
        "passage": passage,
        "query": example["query"].replace("@placeholder", "___"),
        "options": sorted(set(example["entities"])),
        "answer": example["answers"][0],
    }


def coqa_conversation(example: Fields) -> Fields | None:
    """CoQA: all questions of a story numbered in one input, all answers in the target."""
    questions = list(example["questions"])
    answers = list(example["answers"]["input_text"])
    if not questions or len(questions) != len(answers):
        return None
    return {
        "story": example["story"],
        "questions": _numbered(questions),
        "answers": _numbered(answers),
    }


def squad_v2_answer(example: Fields) -> Fields:
    """SQuAD 2.0: a question without an answer in the passage is answered "unanswerable"."""
    texts = example["answers"]["text"]
    return {"answer": texts[0] if texts else "unanswerable"}


def quac_answer(example: Fields) -> Fields | None:
    """QuAC: the background and section text are the context; unanswerable rows skipped."""
    answer = example["orig_answer"]["text"]
    if not answer or answer == "CANNOTANSWER":
        return None
    context = (
        f"{example['title']}: {example['section_title']}\n{example['background']}\n\n"
        f"{example['context']}".replace("CANNOTANSWER", "").strip()
    )
    return {"context": context, "question": example["question"], "answer": answer}


def story_cloze_ending(example: Fields) -> Fields | None:
    """Story Cloze: TFDS numbers the right ending 1 or 2 (-1 when unlabeled)."""
    endings = list(example["endings"])
    if not 1 <= example["label"] <= len(endings):
        return None
    return {
        "context": example["context"],
        "options": endings,
        "answer": endings[example["label"] - 1],
    }


def wsc_spans(example: Fields) -> Fields:
    """WSC: the pronoun (span 2) and the candidate noun phrase (span 1)."""
    return {
        "text": example["text"],
        "pronoun": example["span2_text"],
        "noun": example["span1_text"],
    }


def stsb_score(example: Fields) -> Fields:
    """STS-B: the 0-5 similarity rounded to a whole number, offered as options 0..5."""
    return {
        "answer": str(int(round(float(example["label"])))),
        "options": [str(i) for i in range(6)],
    }


def join_triples(example: Fields) -> Fields:
    """DART: "subject | relation | object" triples, one per line."""
    return {"data": "\n".join(example["tripleset"]), "text": example["target"]}


def join_webnlg_triples(example: Fields) -> Fields:
    """WebNLG: triples, one per line (the TFDS feature is already "s | r | o")."""
    return {"data": "\n".join(example["input"]), "text": example["target"]}


def join_concepts(example: Fields) -> Fields:
    """CommonGen: the concept set as a comma-separated list."""
    return {"concepts": ", ".join(example["concepts"]), "text": example["target"]}


def idebate_argument(example: Fields) -> Fields:
    """idebate: the argument's sentences (in order) as the document, the claim as summary."""
    sentences = example["_argument_sentences"]["value"]
    return {"document": " ".join(sentences), "summary": example["_claim"]}


def rotten_tomatoes_consensus(example: Fields) -> Fields:
    """Rotten Tomatoes: the critics' snippets as the document, the consensus as summary."""
    critics = example["_critics"]["value"]
    return {
        "document": "\n".join(f"- {c}" for c in critics),
        "summary": example["_critic_consensus"],
    }


def _normalize_spaces(text: str) -> str:
    return " ".join(text.split())


def lambada_last_word(example: Fields) -> Fields | None:
    """LAMBADA: the passage without its last word, and that word."""
    head, _, last = _normalize_spaces(example["passage"]).rpartition(" ")
    if not head:
        return None
    return {"context": head, "answer": last.strip(string.punctuation) or last}


_PUNCTUATION_TABLE = str.maketrans("", "", string.punctuation)


# fix_punct, true_case and word_segment read the English side ("en") of para_crawl/enda.


def strip_punctuation(example: Fields) -> Fields | None:
    """fix_punct: a sentence with its punctuation removed; restore it."""
    text = _normalize_spaces(example["en"])
    corrupted = _normalize_spaces(text.translate(_PUNCTUATION_TABLE))
    return None if corrupted == text or not corrupted else {"corrupted": corrupted, "text": text}


def lowercase_text(example: Fields) -> Fields | None:
    """true_case: a sentence in lower case; restore the casing."""
    text = _normalize_spaces(example["en"])
    return None if text.lower() == text else {"corrupted": text.lower(), "text": text}


def remove_spaces(example: Fields) -> Fields | None:
    """word_segment: a sentence with its spaces removed; put them back."""
    text = _normalize_spaces(example["en"])
    return None if " " not in text else {"corrupted": text.replace(" ", ""), "text": text}


PREPROCESSORS: dict[str, Callable[[Fields], Fields | None]] = {
    f.__name__: f
    for f in (
        arc_choices,
        record_cloze,
        coqa_conversation,
        squad_v2_answer,
        quac_answer,
        story_cloze_ending,
        wsc_spans,
        stsb_score,
        join_triples,
        join_webnlg_triples,
        join_concepts,
        idebate_argument,
        rotten_tomatoes_consensus,
        lambada_last_word,
        strip_punctuation,
        lowercase_text,
        remove_spaces,
    )
}
