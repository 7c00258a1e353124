"""Reads promptsource-format `templates.yaml` files and renders their prompts in a sandbox.

A promptsource template tree has one `templates.yaml` per dataset (or dataset/subset):

    promptsource/templates/adversarial_qa/dbert/templates.yaml
      dataset: adversarial_qa
      subset: dbert
      templates:
        3b2459cc-...: !Template
          name: tell_what_it_is
          jinja: 'I know the answer to "{{question}}" is in "{{context}}". What is it? |||
            {{answers.text | choice}}'
          answer_choices: null            # or Jinja such as 'No ||| Yes'
          metadata: !TemplateMetadata {original_task: true, choices_in_prompt: false, ...}

The Jinja text renders to the input and the target separated by `|||`; `answer_choices`,
when present, is itself Jinja that renders to the choices separated by `|||`, and the
prompt may use the list as `answer_choices`. Rendering uses a sandboxed Jinja environment
(templates are data, not code we trust) and a per-example generator for `choice`, so the
same example renders the same text in every run. An example for which the template
renders no target (templates guard themselves with `{% if ... %}`) is skipped.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import jinja2.sandbox
import numpy as np
import yaml

from flan_jax.errors import UserError

SEPARATOR = "|||"
# The context variable through which the `choice` filter reaches the example's generator.
_RNG_VARIABLE = "flan_jax_example_rng"


class PromptTemplateError(UserError, ValueError):
    """A promptsource file or template that cannot be read or rendered."""


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """One promptsource prompt.

    Attributes:
      dataset: the dataset it belongs to.
      subset: the dataset's subset (configuration), or "" when none.
      name: the prompt's name, unique within (dataset, subset).
      template_id: promptsource's id (a UUID).
      jinja: the prompt; input and target separated by `|||`.
      answer_choices: Jinja for the `|||`-separated choices, or None.
      original_task: whether the prompt asks for the dataset's original task.
      choices_in_prompt: whether the prompt itself lists the answer choices.
      path: the file it was read from.
    """

    dataset: str
    subset: str
    name: str
    template_id: str
    jinja: str
    answer_choices: str | None
    original_task: bool
    choices_in_prompt: bool
    path: str


@dataclasses.dataclass(frozen=True)
class RenderedPrompt:
    """A rendered prompt: input, target and (when the template has them) the choices."""

    inputs: str
    targets: str
    answer_choices: tuple[str, ...]


class _PromptsourceLoader(yaml.SafeLoader):
    """SafeLoader that reads promptsource's `!Template` tags as plain mappings."""


def _construct_tagged_mapping(loader: yaml.SafeLoader, node: yaml.Node) -> dict:
    return loader.construct_mapping(node, deep=True)


for _tag in ("!Template", "!TemplateMetadata"):
    _PromptsourceLoader.add_constructor(_tag, _construct_tagged_mapping)


def read_templates_file(path: str) -> list[PromptTemplate]:
    """Reads one templates.yaml; errors name the file and the offending template."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_PromptsourceLoader)  # noqa: S506 (safe subclass)
    except (OSError, yaml.YAMLError) as e:
        raise PromptTemplateError(f"{path}: cannot read promptsource templates: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("templates"), dict):
        raise PromptTemplateError(f"{path}: expected 'dataset' and a 'templates' mapping.")
    prompts = []
    for key, entry in data["templates"].items():
        where = f"{path}: template {key}"
        if not isinstance(entry, dict) or not isinstance(entry.get("jinja"), str):
            raise PromptTemplateError(f"{where}: needs a 'jinja' string.")
        if not isinstance(entry.get("name"), str):
            raise PromptTemplateError(f"{where}: needs a 'name' string.")
        metadata = entry.get("metadata") or {}
        prompts.append(
            PromptTemplate(
                dataset=str(data.get("dataset", "")),
                subset=str(data.get("subset") or ""),
                name=entry["name"],
                template_id=str(entry.get("id", key)),
                jinja=entry["jinja"],
                answer_choices=entry.get("answer_choices"),
                original_task=bool(metadata.get("original_task", False)),
                choices_in_prompt=bool(metadata.get("choices_in_prompt", False)),
                path=path,
            )
        )
    return prompts


def read_template_tree(root: str) -> dict[tuple[str, str], list[PromptTemplate]]:
    """All prompts under a promptsource tree, keyed by (dataset, subset)."""
    files = sorted(glob.glob(os.path.join(root, "**", "templates.yaml"), recursive=True))
    if not files:
        raise PromptTemplateError(f"{root}: no templates.yaml files found under it.")
    tree: dict[tuple[str, str], list[PromptTemplate]] = collections.defaultdict(list)
    for path in files:
        for prompt in read_templates_file(path):
            tree[(prompt.dataset, prompt.subset)].append(prompt)
    return dict(tree)


def _most_frequent(items: Sequence[Any]) -> Any:
    counts = collections.Counter(items)
    return max(counts, key=lambda item: counts[item]) if counts else ""


def _zip(*sequences: Sequence[Any]) -> list[tuple]:
    return list(zip(*sequences))


@jinja2.pass_context
def _choice(context: jinja2.runtime.Context, items: Sequence[Any]) -> Any:
    """promptsource's random `choice`, drawn from the example's generator."""
    items = list(items)
    rng = context[_RNG_VARIABLE]
    return items[int(rng.integers(len(items)))] if items else ""


@functools.cache
def _environment() -> jinja2.sandbox.SandboxedEnvironment:
    # Undefined names render as empty strings, as promptsource's own environment does.
    env = jinja2.sandbox.SandboxedEnvironment(undefined=jinja2.Undefined)
    env.filters["choice"] = _choice
    env.filters["most_frequent"] = _most_frequent
    env.filters["zip"] = _zip
    env.globals["zip"] = _zip
    return env


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def _render_text(
    source: str, values: Mapping[str, Any], rng: np.random.Generator, where: str
) -> str:
    try:
        return _compile(source).render(dict(values, **{_RNG_VARIABLE: rng}))
    # Template code is data: whatever it raises (Jinja errors, or Python errors of the
    # operations it calls) is reported against the file and prompt.
    except Exception as e:  # noqa: BLE001
        raise PromptTemplateError(f"{where}: {type(e).__name__}: {e}") from e


def render_prompt(
    prompt: PromptTemplate, example: Mapping[str, Any], rng: np.random.Generator
) -> RenderedPrompt | None:
    """Renders `example` through `prompt`; None when the template yields no target.

    Args:
      prompt: the promptsource prompt.
      example: the dataset row, with the fields the prompt refers to.
      rng: the example's generator (used by the `choice` filter).
    """
    where = f"{prompt.path}: prompt {prompt.name!r}"
    choices: tuple[str, ...] = ()
    if prompt.answer_choices:
        text = _render_text(prompt.answer_choices, example, rng, f"{where} answer_choices")
        choices = tuple(c.strip() for c in text.split(SEPARATOR))
    values = dict(example, answer_choices=list(choices))
    parts = [p.strip() for p in _render_text(prompt.jinja, values, rng, where).split(SEPARATOR)]
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return None
    return RenderedPrompt(inputs=parts[0], targets=parts[1], answer_choices=choices)
