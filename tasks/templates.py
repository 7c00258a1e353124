"""Instruction templates as data, and their seeded, per-example rendering.

A template file is YAML:

    family: nli                      # what the templates are for
    fields: [premise, hypothesis]    # placeholders every example must provide
    templates:
      - type: zs                     # zs | inverted | cot | cot_inverted | dialog ...
        inputs: "{premise}\\nDoes it follow that \\"{hypothesis}\\"?{options_}"
        targets: "{answer}"

Placeholders are `{name}` with `name` an identifier; braces anywhere else are literal, and
values are never re-scanned, so data containing braces renders as is. `{options_}` is
special: in the "with options" variants it becomes an answer-options block whose header,
separator and item style are drawn per example; without options it renders as nothing.
When a lettered item style is drawn, `{answer}` in the targets becomes the answer's
letter label, so the model learns to answer with the label it was shown.

Worked example (`with_options=True`, one possible draw):

    example = {"premise": "A dog runs.", "hypothesis": "An animal moves.",
               "options": ["yes", "no"], "answer": "yes"}
    inputs  -> "A dog runs.\\nDoes it follow that \\"An animal moves.\\"?"
               "\\n\\nPick one:\\n(A) yes\\n(B) no"
    targets -> "(A)"

Randomness comes only from `example_rng(seed, task_name, example_key)`, so the same
example renders the same text in any process, run or resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import yaml

from flan_jax.errors import UserError

OPTIONS_PLACEHOLDER = "options_"
TEMPLATE_TYPES = ("zs", "inverted", "cot", "cot_inverted", "dialog", "dialog_inverted")
_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Answer-options formatting pools. Drawn per example so the model sees many layouts.
OPTION_HEADERS = (
    "OPTIONS:",
    "Options:",
    "Choose from:",
    "Pick one:",
    "Possible answers:",
    "Answer choices:",
    "Select an answer:",
    "Available answers:",
    "Which is it?",
)
OPTION_HEADER_SEPARATORS = ("\n\n", "\n")
# (item format, answer format): "{label}" is the option's letter, "{number}" its 1-based
# position. Lettered styles answer with the label; the others with the option text (None).
OPTION_ITEM_STYLES = (
    ("- {option}", None),
    ("* {option}", None),
    ("{number}. {option}", None),
    ("({label}) {option}", "({label})"),
    ("{label}. {option}", "{label}"),
    ("{label}) {option}", "{label}"),
    ("[{label}] {option}", "[{label}]"),
)


def find_placeholders(text: str) -> frozenset[str]:
    """The names of the `{name}` placeholders in `text`."""
    return frozenset(_PLACEHOLDER_RE.findall(text))


class TemplateError(UserError, ValueError):
    """A template file or a rendering that does not satisfy the template schema."""


@dataclasses.dataclass(frozen=True)
class Template:
    """One instruction template.

    Attributes:
      inputs: the input text with `{field}` placeholders.
      targets: the target text with `{field}` placeholders.
      type: one of TEMPLATE_TYPES; "inverted" templates turn the task around.
      index: position in its file, exported as `_template_idx`.
    """

    inputs: str
    targets: str
    type: str
    index: int

    @property
    def placeholders(self) -> frozenset[str]:
        return find_placeholders(self.inputs + "\n" + self.targets)

    @property
    def uses_options(self) -> bool:
        return OPTIONS_PLACEHOLDER in self.placeholders


@dataclasses.dataclass(frozen=True)
class TemplateSet:
    """The templates of one family, loaded from one file."""

    family: str
    fields: tuple[str, ...]
    templates: tuple[Template, ...]
    path: str

    def of_types(self, types: Sequence[str]) -> tuple[Template, ...]:
        return tuple(t for t in self.templates if t.type in types)


@dataclasses.dataclass(frozen=True)
class Rendered:
    """One rendered example.

    Attributes:
      inputs: the input text.
      targets: the target text.
      template: the template it was rendered with.
      answer_options: the answers the target is chosen from, written as the target writes
        them (the labels "(A)", "(B)"... when a lettered options block was drawn, else the
        option texts); empty when the example has no options or its target is not one of
        them (inverted templates). Rank classification scores each of them as a target.
    """

    inputs: str
    targets: str
    template: Template
    answer_options: tuple[str, ...] = ()


def load_template_set(path: str | os.PathLike) -> TemplateSet:
    """Loads and validates a template YAML file; errors name the file and template."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise TemplateError(f"{path}: cannot read template file: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("templates"), list):
        raise TemplateError(f"{path}: expected a mapping with a 'templates' list.")
    unknown = set(data) - {"family", "fields", "templates", "description"}
    if unknown:
        raise TemplateError(f"{path}: unknown top-level keys {sorted(unknown)}.")
    fields = tuple(data.get("fields") or ())
    templates = []
    for index, entry in enumerate(data["templates"]):
        where = f"{path}: template {index}"
        if not isinstance(entry, dict) or not {"inputs", "targets"} <= set(entry):
            raise TemplateError(f"{where}: needs 'inputs' and 'targets' strings.")
        extra = set(entry) - {"inputs", "targets", "type"}
        if extra:
            raise TemplateError(f"{where}: unknown keys {sorted(extra)}.")
        template_type = entry.get("type", "zs")
        if template_type not in TEMPLATE_TYPES:
            raise TemplateError(
                f"{where}: type must be one of {TEMPLATE_TYPES}, got {template_type!r}."
            )
        template = Template(str(entry["inputs"]), str(entry["targets"]), template_type, index)
        undeclared = template.placeholders - set(fields) - {OPTIONS_PLACEHOLDER, "answer"}
        if undeclared:
            raise TemplateError(
                f"{where}: placeholders {sorted(undeclared)} are not in fields {list(fields)}."
            )
        templates.append(template)
    if not templates:
        raise TemplateError(f"{path}: has no templates.")
    return TemplateSet(
        str(data.get("family", os.path.basename(path))), fields, tuple(templates), path
    )


def example_rng(seed: int, task_name: str, example_key: str) -> np.random.Generator:
    """A generator that depends only on (seed, task, example), never on process state."""
    digest = hashlib.sha256(f"{seed}\x1f{task_name}\x1f{example_key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def option_label(position: int) -> str:
    """0 -> "A", 25 -> "Z", 26 -> "AA" (lists longer than the alphabet stay labelled)."""
    label = ""
    position += 1
    while position:
        position, rem = divmod(position - 1, 26)
        label = chr(ord("A") + rem) + label
    return label


def format_options(
    options: Sequence[str], answer: str | None, rng: np.random.Generator
) -> tuple[str, str | None, tuple[str, ...]]:
    """Renders an options block.

    Returns:
      (block, the answer as the model should write it, every option as the model would
      write it): lettered styles write labels ("(A)", "B"...), the others the option text.
    """
    header = OPTION_HEADERS[rng.integers(len(OPTION_HEADERS))]
    lead = OPTION_HEADER_SEPARATORS[rng.integers(len(OPTION_HEADER_SEPARATORS))]
    item_format, answer_format = OPTION_ITEM_STYLES[rng.integers(len(OPTION_ITEM_STYLES))]
    items = [
        item_format.format(option=option, label=option_label(i), number=i + 1)
        for i, option in enumerate(options)
    ]
    shown_options = tuple(options)
    if answer_format is not None:
        shown_options = tuple(
            answer_format.format(label=option_label(i)) for i in range(len(options))
        )
    shown_answer = answer
    if answer_format is not None and answer is not None and answer in options:
        shown_answer = shown_options[list(options).index(answer)]
    return f"{lead}{header}\n" + "\n".join(items), shown_answer, shown_options


def fill_placeholders(text: str, values: Mapping[str, Any], where: str) -> str:
    """Substitutes `{name}` placeholders; a missing value raises naming `where`."""

    def substitute(match: re.Match) -> str:
        name = match.group(1)
        if name not in values or values[name] is None:
            raise TemplateError(f"{where}: no value for placeholder {{{name}}}.")
        return str(values[name])

    return _PLACEHOLDER_RE.sub(substitute, text)


def render(
    template: Template,
    example: Mapping[str, Any],
    *,
    with_options: bool,
    rng: np.random.Generator,
    where: str = "",
) -> Rendered:
    """Renders one example through one template.

    Args:
      template: the template.
      example: field values; `options` (a list of strings) and `answer` are used by the
        options block and the lettered-answer rule.
      with_options: whether `{options_}` shows the options ("opt" variants).
      rng: the example's generator (see `example_rng`).
      where: a prefix for error messages, e.g. the task name and example key.
    """
    values = dict(example)
    options = [str(o) for o in example.get("options") or ()]
    answer_options = tuple(options)
    values[OPTIONS_PLACEHOLDER] = ""
    if with_options and template.uses_options and options:
        block, shown_answer, answer_options = format_options(options, example.get("answer"), rng)
        values[OPTIONS_PLACEHOLDER] = block
        if shown_answer is not None:
            values["answer"] = shown_answer
    where = f"{where} template {template.index} ({template.type})".strip()
    inputs = fill_placeholders(template.inputs, values, where)
    targets = fill_placeholders(template.targets, values, where)
    if not targets.strip():
        raise TemplateError(f"{where}: rendered an empty target.")
    # Options are the answer space only when the target is one of them (not when inverted).
    return Rendered(inputs, targets, template, answer_options if targets in answer_options else ())
