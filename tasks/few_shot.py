"""Few-shot prompts in the two forms of the Flan 2022 collection, from lazily read pools.

FLAN's few-shot tasks (google-research/FLAN flan/v2/tasks.py, few_shot.py,
preprocessors.py) come in two forms, and its `fs_opt` mixtures hold both
(`FS_OPT_TEMPLATES` in flan/v2/mixtures_utils.py), its `fs_noopt` mixtures only the second:

- "template_mix" (`{task}_template_mix_five_shot`): 5 exemplars, each rendered with a
  template drawn for it from the task's templates, then the example. The exemplar
  separator (one, two or three newlines) is chosen once per task; FLAN draws it with
  `random.choice` at import, we draw it from (seed, task name), so runs reproduce.
- "zero_to_ten" (`{task}_template_0to10_x_shot`): 25 candidate exemplars, each with a
  template drawn for it; only those drawn with the example's own template stay (with about
  10 templates, 2.5 on average, hence "0 to 10"), joined with that template's delimiters.

In both forms an exemplar is `inputs + input/target delimiter + targets`, the example
comes last, exemplars are pruned from the END until the prompt fits the budget (FLAN's
`prune_fewshot_examples_by_length` keeps the leading ones), and an example left with no
exemplar is dropped (`filter_zero_shot_in_few_shot`). Everything random is drawn from the
example's generator (`templates.example_rng`).

Each template's own delimiters (FLAN's `FewShotPattern.x_y_delimiter` and
`example_separator`) are derived from its index (`template_delimiters`): our template
files carry no few-shot keys, and the index gives every template a fixed, varied layout
that does not change when a file's wording is edited.

Worked example (template_mix, separator "\\n\\n" for this task, two exemplars kept):

    "Premise A ... Answer:\\nyes" "\\n\\n" "Is B true? ...\\n\\nno" "\\n\\n" "Premise C ... Answer:"

Pools are read on first use, not at registration, so registering thousands of few-shot
tasks does no I/O:

    spec = few_shot.make_few_shot_spec(lambda: load_split("train"), vocabulary,
                                       settings=few_shot.FewShotSettings())
    # nothing read yet; rendering the first few-shot example reads the first 256 rows.
"""

from __future__ import annotations

import collections.abc
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import seqio

from flan_jax.tasks import templates

FEW_SHOT_FORMS = ("template_mix", "zero_to_ten")
# FLAN registers `_template_mix_five_shot` with ShotConfig.FIVE (flan/v2/tasks.py).
TEMPLATE_MIX_SHOTS = 5
# FLAN registers `_template_0to10_x_shot` with num_shots_int = 25 (flan/v2/tasks.py).
ZERO_TO_TEN_CANDIDATES = 25
# The template-mix exemplar separator, one per task (flan/v2/tasks.py).
TEMPLATE_MIX_SEPARATORS = ("\n", "\n\n", "\n\n\n")
# (input/target delimiter, exemplar separator) of template i: TEMPLATE_DELIMITERS[i % 6].
# The pairs are the layouts FLAN's few-shot patterns use most (flan/v2/templates.py).
TEMPLATE_DELIMITERS = (
    ("\n", "\n\n"),
    ("\n\n", "\n\n\n"),
    (" ", "\n\n"),
    ("\n", "\n\n\n"),
    ("\n\n", "\n\n"),
    (" ", "\n"),
)
# The forms a no-options task uses when given both: FLAN's fs_noopt mixtures hold only
# the 0-to-10 tasks (`FS_NOOPT_TEMPLATES` in flan/v2/mixtures_utils.py).
NO_OPTIONS_FORMS = ("zero_to_ten",)

Exemplar = tuple[str, Mapping[str, Any]]


def check_forms(forms: Sequence[str], where: str) -> tuple[str, ...]:
    """`forms` as a tuple; ValueError naming `where` unless a non-empty subset of the forms."""
    forms = tuple(forms)
    if not forms or len(set(forms)) != len(forms) or set(forms) - set(FEW_SHOT_FORMS):
        raise ValueError(
            f"{where}.forms must be distinct names from {FEW_SHOT_FORMS} (at least one), "
            f"got {forms!r}."
        )
    return forms


@dataclasses.dataclass(frozen=True)
class FewShotSettings:
    """How a family builds its few-shot prompts.

    Attributes:
      num_shots: template-mix exemplars per example before pruning (FLAN: 5).
      max_input_tokens: the input budget (1920 in the Flan 2022 collection).
      pool_size: how many leading train examples exemplars are drawn from.
      num_candidates: zero-to-ten candidates per example, before keeping those with the
        example's template (FLAN: 25; NIv2: the positive examples shown).
      forms: the few-shot forms a task's examples are split between, each example drawing
        one; a no-options task given both uses `NO_OPTIONS_FORMS`, as FLAN's mixtures do.
    """

    num_shots: int = TEMPLATE_MIX_SHOTS
    max_input_tokens: int = 1920
    pool_size: int = 256
    num_candidates: int = ZERO_TO_TEN_CANDIDATES
    forms: tuple[str, ...] = FEW_SHOT_FORMS

    def __post_init__(self):
        for field in ("num_shots", "max_input_tokens", "pool_size", "num_candidates"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"FewShotSettings.{field} must be a non-negative integer, got {value!r}."
                )
        object.__setattr__(self, "forms", check_forms(self.forms, "FewShotSettings"))


def template_delimiters(template: templates.Template) -> tuple[str, str]:
    """(input/target delimiter, exemplar separator) of `template`, fixed by its index."""
    return TEMPLATE_DELIMITERS[template.index % len(TEMPLATE_DELIMITERS)]


def task_separator(seed: int, task_name: str) -> str:
    """The template-mix exemplar separator of a task: one draw per (seed, task)."""
    rng = templates.example_rng(seed, task_name, "few_shot:template_mix_separator")
    return TEMPLATE_MIX_SEPARATORS[int(rng.integers(len(TEMPLATE_MIX_SEPARATORS)))]


def forms_for_task(forms: Sequence[str], *, with_options: bool) -> tuple[str, ...]:
    """The forms a task uses: a no-options task given both keeps `NO_OPTIONS_FORMS`."""
    if not with_options and set(forms) == set(FEW_SHOT_FORMS):
        return NO_OPTIONS_FORMS
    return tuple(forms)


def draw_form(forms: Sequence[str], rng: np.random.Generator) -> str:
    return forms[0] if len(forms) == 1 else forms[int(rng.integers(len(forms)))]


def keep_leading_within_budget(
    head: Sequence[str],
    shots: Sequence[str],
    query: str,
    *,
    separator: str,
    max_tokens: int,
    count_tokens: Callable[[str], int],
) -> list[str]:
    """The longest leading run of `shots` such that `head + shots + [query]`, joined by
    `separator`, fits `max_tokens`; later exemplars are the ones dropped."""
    kept = list(shots)
    if count_tokens(separator.join([*head, *kept, query])) <= max_tokens:
        return kept  # The common case: one count.
    kept = []
    for shot in shots:
        if count_tokens(separator.join([*head, *kept, shot, query])) > max_tokens:
            break
        kept.append(shot)
    return kept


class FewShotBuilder(Protocol):
    """Builds one few-shot example: `sources.RenderSpec.few_shot` holds one.

    `render` draws the example's template (and form) from `rng`, renders the example with
    its exemplars and returns it, or returns None when no exemplar is left (the example is
    then dropped).
    """

    def render(
        self,
        task_templates: Sequence[templates.Template],
        key: str,
        example: Mapping[str, Any],
        *,
        task_name: str,
        seed: int,
        with_options: bool,
        rng: np.random.Generator,
        where: str,
    ) -> templates.Rendered | None: ...


@dataclasses.dataclass(frozen=True)
class FewShotSpec:
    """FLAN's two forms over a pool of train examples (see the module docstring).

    Attributes:
      pool: (key, fields) train examples exemplars are drawn from (bounded; never the
        example itself).
      count_tokens: counts the tokens of a string (a vocabulary's encode length).
      num_shots: template-mix exemplars before pruning.
      num_candidates: zero-to-ten candidates before keeping the same-template ones.
      max_input_tokens: the input budget (1920 in the Flan 2022 collection).
      forms: the forms this task's examples are split between.
    """

    pool: Sequence[Exemplar]
    count_tokens: Callable[[str], int]
    num_shots: int = TEMPLATE_MIX_SHOTS
    num_candidates: int = ZERO_TO_TEN_CANDIDATES
    max_input_tokens: int = 1920
    forms: tuple[str, ...] = FEW_SHOT_FORMS

    def __post_init__(self):
        object.__setattr__(self, "forms", check_forms(self.forms, "FewShotSpec"))

    def render(
        self,
        task_templates: Sequence[templates.Template],
        key: str,
        example: Mapping[str, Any],
        *,
        task_name: str,
        seed: int,
        with_options: bool,
        rng: np.random.Generator,
        where: str,
    ) -> templates.Rendered | None:
        template = task_templates[int(rng.integers(len(task_templates)))]
        query = templates.render(template, example, with_options=with_options, rng=rng, where=where)
        form = draw_form(forms_for_task(self.forms, with_options=with_options), rng)
        others = [i for i, (pool_key, _) in enumerate(self.pool) if pool_key != key]
        count = self.num_shots if form == "template_mix" else self.num_candidates
        chosen: Sequence[int] | np.ndarray = (
            rng.choice(others, size=min(count, len(others)), replace=False) if others else []
        )
        shots = []
        for index in chosen:
            pool_key, fields = self.pool[int(index)]
            shot_template = task_templates[int(rng.integers(len(task_templates)))]
            if form == "zero_to_ten" and shot_template.index != template.index:
                continue
            shot = templates.render(
                shot_template,
                fields,
                with_options=with_options,
                rng=rng,
                where=f"{where} exemplar {pool_key}",
            )
            shots.append(shot.inputs + template_delimiters(shot_template)[0] + shot.targets)
        if form == "template_mix":
            separator = task_separator(seed, task_name)
        else:
            separator = template_delimiters(template)[1]
        kept = keep_leading_within_budget(
            (),
            shots,
            query.inputs,
            separator=separator,
            max_tokens=self.max_input_tokens,
            count_tokens=self.count_tokens,
        )
        if not kept:
            return None
        return dataclasses.replace(query, inputs=separator.join([*kept, query.inputs]))


class LazyExemplarPool(collections.abc.Sequence):
    """Few-shot exemplars read from the train split on first use, not at registration.

    `FewShotSpec.pool` is indexed and iterated; this sequence defers the read. At most
    `max_size` examples are kept (the first ones of the split, so the pool is the same in
    every process).
    """

    def __init__(self, load_examples: Callable[[], Iterator[Exemplar]], max_size: int = 256):
        self._load_examples = load_examples
        self._max_size = max_size
        self._examples: Sequence[Exemplar] | None = None

    def _materialize(self) -> Sequence[Exemplar]:
        if self._examples is None:
            examples: list[Exemplar] = []
            for item in self._load_examples():
                if len(examples) >= self._max_size:
                    break
                examples.append(item)
            self._examples = tuple(examples)
        return self._examples

    def __getitem__(self, index):
        return self._materialize()[index]

    def __len__(self) -> int:
        return len(self._materialize())


def make_few_shot_spec(
    load_examples: Callable[[], Iterator[Exemplar]],
    vocabulary: seqio.Vocabulary,
    *,
    settings: FewShotSettings,
) -> FewShotSpec:
    """A few-shot spec over a lazily read train split, pruned by `vocabulary`'s token count.

    Args:
      load_examples: yields (key, fields) train examples; called on first use only.
      vocabulary: counts prompt tokens for the input budget.
      settings: shots, candidates, forms, input budget and pool size.
    """
    return FewShotSpec(
        pool=LazyExemplarPool(load_examples, max_size=settings.pool_size),
        count_tokens=lambda text: len(vocabulary.encode(text)),
        num_shots=settings.num_shots,
        num_candidates=settings.num_candidates,
        max_input_tokens=settings.max_input_tokens,
        forms=settings.forms,
    )
