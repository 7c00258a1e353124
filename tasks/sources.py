"""SeqIO data sources whose examples are rendered through our templates in Python.

Rendering happens in Python (not in TF graph code) because it needs string formatting and
a per-example generator; the rendered strings then enter `tf.data` through
`from_generator`, and the rest of the task (tokenization, EOS, caching, feature
conversion) is ordinary seqio.

Every rendered example carries its provenance so it survives `get_dataset` and exports:

    {"inputs": "...", "targets": "...",
     "_task_name": "demo__arith__zs_opt", "_task_source": "demo",
     "_template_idx": 3, "_template_type": "inverted", "_example_key": "train:17"}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from flan_jax import errors
from flan_jax.tasks import naming, templates

# (example key, field values): the key must be stable across runs (e.g. "train:17").
RawExample = tuple[str, Mapping[str, Any]]
LoadSplitFn = Callable[[str], Iterable[RawExample]]

METADATA_FEATURES = {
    "_task_name": tf.TensorSpec([], tf.string),
    "_task_source": tf.TensorSpec([], tf.string),
    "_template_idx": tf.TensorSpec([], tf.int32),
    "_template_type": tf.TensorSpec([], tf.string),
    "_example_key": tf.TensorSpec([], tf.string),
}
RENDERED_SIGNATURE = {
    "inputs": tf.TensorSpec([], tf.string),
    "targets": tf.TensorSpec([], tf.string),
    **METADATA_FEATURES,
}


@dataclasses.dataclass(frozen=True)
class FewShotSpec:
    """How few-shot variants build their prompts.

    Exemplars come from `pool` (train-split examples; keep it bounded, a few hundred is
    plenty), are rendered with the same template as the example, and are dropped from the
    front until the prompt fits `max_input_tokens` by `count_tokens`.

    Attributes:
      pool: (key, fields) train examples to draw exemplars from.
      num_shots: how many exemplars to draw before pruning.
      max_input_tokens: the input budget (1920 in the Flan 2022 collection).
      count_tokens: counts the tokens of a string (a vocabulary's encode length).
    """

    pool: Sequence[RawExample]
    num_shots: int
    max_input_tokens: int
    count_tokens: Callable[[str], int]


# Separators between an exemplar's input and target, and between exemplars; drawn per
# example (never at import time) so the model sees several layouts.
FEW_SHOT_TARGET_SEPARATORS = ("\n", "\n\n", " ")
FEW_SHOT_EXEMPLAR_SEPARATORS = ("\n\n", "\n\n\n", "\n")


@dataclasses.dataclass(frozen=True)
class RenderSpec:
    """How one task renders its raw examples.

    Attributes:
      task_id: the task's structured identity (gives the name and the variant).
      templates: the templates an example may be rendered with; one is drawn per example.
      seed: the rendering seed; the example's generator also depends on task and key.
      few_shot: required by few-shot variants, absent otherwise.
    """

    task_id: naming.TaskId
    templates: tuple[templates.Template, ...]
    seed: int = 0
    few_shot: FewShotSpec | None = None

    def __post_init__(self):
        if not self.templates:
            raise ValueError(f"RenderSpec for {self.task_name} has no templates.")
        if self.task_id.few_shot != (self.few_shot is not None):
            raise ValueError(
                f"RenderSpec for {self.task_name}: few_shot must be given exactly for "
                f"few-shot variants (variant {self.task_id.variant!r})."
            )

    @property
    def task_name(self) -> str:
        return naming.make_task_name(self.task_id)


def render_example(spec: RenderSpec, key: str, example: Mapping[str, Any]) -> dict[str, Any]:
    """Renders one raw example with the template drawn for it; returns a feature dict."""
    rng = templates.example_rng(spec.seed, spec.task_name, key)
    template = spec.templates[int(rng.integers(len(spec.templates)))]
    where = f"{spec.task_name} example {key}:"
    rendered = templates.render(
        template, example, with_options=spec.task_id.with_options, rng=rng, where=where
    )
    inputs = rendered.inputs
    if spec.few_shot is not None:
        inputs = _prepend_exemplars(spec, template, key, inputs, rng, where)
    return {
        "inputs": inputs,
        "targets": rendered.targets,
        "_task_name": spec.task_name,
        "_task_source": spec.task_id.source,
        "_template_idx": template.index,
        "_template_type": template.type,
        "_example_key": key,
    }


def _prepend_exemplars(
    spec: RenderSpec,
    template: templates.Template,
    key: str,
    inputs: str,
    rng,
    where: str,
) -> str:
    """Few-shot prompt: exemplars (same template) then the example, pruned to the budget."""
    few_shot = spec.few_shot
    assert few_shot is not None  # render_example calls this only for few-shot specs
    candidates = [i for i, (pool_key, _) in enumerate(few_shot.pool) if pool_key != key]
    chosen = (
        rng.choice(candidates, size=min(few_shot.num_shots, len(candidates)), replace=False)
        if candidates
        else []
    )
    target_sep = FEW_SHOT_TARGET_SEPARATORS[rng.integers(len(FEW_SHOT_TARGET_SEPARATORS))]
    exemplar_sep = FEW_SHOT_EXEMPLAR_SEPARATORS[rng.integers(len(FEW_SHOT_EXEMPLAR_SEPARATORS))]
    shots = []
    for index in chosen:
        pool_key, fields = few_shot.pool[int(index)]
        shot = templates.render(
            template,
            fields,
            with_options=spec.task_id.with_options,
            rng=rng,
            where=f"{where} exemplar {pool_key}",
        )
        shots.append(shot.inputs + target_sep + shot.targets)
    # Drop the earliest exemplars first: the example itself is never cut.
    while shots and few_shot.count_tokens(exemplar_sep.join(shots + [inputs])) > (
        few_shot.max_input_tokens
    ):
        shots.pop(0)
    return exemplar_sep.join(shots + [inputs])


def iterate_rendered(spec: RenderSpec, raw_examples: Iterable[RawExample]) -> Iterator[dict]:
    for key, example in raw_examples:
        yield render_example(spec, key, example)


class RenderedSource(seqio.FunctionDataSource):
    """A function source that also exposes its `RenderSpec` (templates, variant, seed)."""

    def __init__(self, render_spec: RenderSpec, dataset_fn, **kwargs):
        super().__init__(dataset_fn, **kwargs)
        self.render_spec = render_spec


def make_rendered_source(
    spec: RenderSpec,
    load_split: LoadSplitFn,
    *,
    splits: Sequence[str],
    num_input_examples: Mapping[str, int] | None = None,
) -> seqio.DataSource:
    """A seqio source yielding `load_split(split)` rendered through `spec`."""

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        # Rendering is seeded per example; shuffling happens downstream, seeded by the pipeline.
        del shuffle_files, seed
        # A user error raised while reading (missing data) reaches the caller wrapped by
        # TensorFlow; carry_user_errors lets the CLI report the original.
        return tf.data.Dataset.from_generator(
            lambda: errors.carry_user_errors(lambda: iterate_rendered(spec, load_split(split))),
            output_signature=RENDERED_SIGNATURE,
        )

    return RenderedSource(
        spec, dataset_fn, splits=list(splits), num_input_examples=num_input_examples
    )


def make_output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    return {
        "inputs": seqio.Feature(vocabulary, add_eos=True, required=False),
        "targets": seqio.Feature(vocabulary, add_eos=True),
    }


def register_rendered_task(
    spec: RenderSpec,
    load_split: LoadSplitFn,
    *,
    vocabulary: seqio.Vocabulary,
    splits: Sequence[str],
    num_input_examples: Mapping[str, int] | None = None,
    metric_fns: Sequence[Callable] = (),
    postprocess_fn: Callable | None = None,
) -> seqio.Task:
    """Registers (or returns the already registered) seqio task for `spec`.

    Idempotent: registering the same name twice returns the existing task, so entry
    points and gin imports can both call the `register_*` functions safely.
    """
    name = spec.task_name
    if name in seqio.TaskRegistry.names():
        return seqio.TaskRegistry.get(name)
    return seqio.TaskRegistry.add(
        name,
        source=make_rendered_source(
            spec, load_split, splits=splits, num_input_examples=num_input_examples
        ),
        preprocessors=[
            seqio.preprocessors.tokenize,
            seqio.CacheDatasetPlaceholder(),
            seqio.preprocessors.append_eos_after_trim,
        ],
        output_features=make_output_features(vocabulary),
        postprocess_fn=postprocess_fn,
        metric_fns=list(metric_fns),
    )
