"""SeqIO data sources whose examples are rendered through our templates in Python.

Rendering happens in Python (not in TF graph code) because it needs string formatting and
a per-example generator; the rendered strings then enter `tf.data` through
`from_generator`, and the rest of the task (tokenization, EOS, caching, feature
conversion) is ordinary seqio.

Every rendered example carries its provenance so it survives `get_dataset` and exports:

    {"inputs": "...", "targets": "...",
     "_task_name": "demo__arith__zs_opt", "_task_source": "demo",
     "_template_idx": 3, "_template_type": "zs", "_example_key": "train:17",
     "_answer_options": "(A)\x1f(B)\x1f(C)"}

`_answer_options` lists the answers the target is one of, as the target writes them
(`templates.Rendered.answer_options`), joined by `ANSWER_OPTIONS_SEPARATOR` (U+001F, the
ASCII unit separator, which no text of the collection contains); it is "" when the example
has none. Evaluation reads it back with `split_answer_options` for rank classification.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import seqio
import tensorflow as tf

from flan_jax import errors
from flan_jax.tasks import few_shot as few_shot_lib
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
    "_answer_options": tf.TensorSpec([], tf.string),
}
ANSWER_OPTIONS_SEPARATOR = "\x1f"
RENDERED_SIGNATURE = {
    "inputs": tf.TensorSpec([], tf.string),
    "targets": tf.TensorSpec([], tf.string),
    **METADATA_FEATURES,
}


@dataclasses.dataclass(frozen=True)
class RenderSpec:
    """How one task renders its raw examples.

    Attributes:
      task_id: the task's structured identity (gives the name and the variant).
      templates: the templates an example may be rendered with; one is drawn per example.
      seed: the rendering seed; the example's generator also depends on task and key.
      few_shot: required by few-shot variants, absent otherwise: builds the prompt
        (`few_shot.FewShotSpec` for FLAN's two forms; NIv2 has its own builder).
      registered_name: the seqio name when it is not `task_name` (FLAN's names of a task,
        `flan_names`); rendering still draws from `task_name`, so a task registered under
        FLAN's name renders the same text as ours.
    """

    task_id: naming.TaskId
    templates: tuple[templates.Template, ...]
    seed: int = 0
    few_shot: few_shot_lib.FewShotBuilder | None = None
    registered_name: str | None = None

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

    @property
    def name(self) -> str:
        """The name the task is registered and exported under."""
        return self.registered_name or self.task_name


def join_answer_options(options: Sequence[str], *, where: str = "") -> str:
    """`("yes", "no")` -> `"yes\x1fno"`; `()` -> `""`."""
    for option in options:
        if ANSWER_OPTIONS_SEPARATOR in option:
            raise ValueError(
                f"{where} answer option {option!r} contains the options separator U+001F; "
                "remove it from the data."
            )
    return ANSWER_OPTIONS_SEPARATOR.join(options)


def split_answer_options(joined: str | bytes) -> list[str]:
    """The inverse of `join_answer_options` (an exported or `get_dataset` value, bytes or
    str): `b"yes\x1fno"` -> `["yes", "no"]`; `""` -> `[]`."""
    text = joined.decode("utf-8") if isinstance(joined, bytes) else joined
    return text.split(ANSWER_OPTIONS_SEPARATOR) if text else []


def render_example(spec: RenderSpec, key: str, example: Mapping[str, Any]) -> dict[str, Any] | None:
    """Renders one raw example with the template drawn for it; returns a feature dict.

    Few-shot variants return None for an example left with no exemplar (it is dropped,
    as FLAN's `filter_zero_shot_in_few_shot` does).
    """
    rng = templates.example_rng(spec.seed, spec.task_name, key)
    where = f"{spec.task_name} example {key}:"
    if spec.few_shot is None:
        template = spec.templates[int(rng.integers(len(spec.templates)))]
        rendered = templates.render(
            template, example, with_options=spec.task_id.with_options, rng=rng, where=where
        )
    else:
        rendered = spec.few_shot.render(
            spec.templates,
            key,
            example,
            task_name=spec.task_name,
            seed=spec.seed,
            with_options=spec.task_id.with_options,
            rng=rng,
            where=where,
        )
        if rendered is None:
            return None
    return {
        "inputs": rendered.inputs,
        "targets": rendered.targets,
        "_task_name": spec.name,
        "_task_source": spec.task_id.source,
        "_template_idx": rendered.template.index,
        "_template_type": rendered.template.type,
        "_example_key": key,
        "_answer_options": join_answer_options(rendered.answer_options, where=where),
    }


def iterate_rendered(spec: RenderSpec, raw_examples: Iterable[RawExample]) -> Iterator[dict]:
    """The rendered examples of `raw_examples`, without the dropped few-shot ones."""
    for key, example in raw_examples:
        rendered = render_example(spec, key, example)
        if rendered is not None:
            yield rendered


class RenderedSource(seqio.FunctionDataSource):
    """A function source that also exposes its `RenderSpec` and its raw-example loader."""

    def __init__(self, render_spec: RenderSpec, load_split: LoadSplitFn, dataset_fn, **kwargs):
        super().__init__(dataset_fn, **kwargs)
        self.render_spec = render_spec
        self.load_split = load_split


def make_rendered_source(
    spec: RenderSpec,
    load_split: LoadSplitFn,
    *,
    splits: Sequence[str],
    num_input_examples: Mapping[str, int] | None = None,
) -> seqio.DataSource:
    """A seqio source yielding `load_split(split)` rendered through `spec`.

    Few-shot sources claim no `num_input_examples`: dropping the examples left with no
    exemplar makes their count unknown until the data is read.
    """
    if spec.few_shot is not None:
        num_input_examples = None

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
        spec, load_split, dataset_fn, splits=list(splits), num_input_examples=num_input_examples
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
    name = spec.name
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


def register_rendered_copy(task: seqio.Task, spec: RenderSpec) -> seqio.Task:
    """Registers `task` again under `spec.name`, rendered through `spec` instead.

    The copy reads the same raw examples and keeps the splits, counts, vocabulary,
    postprocessor and metrics of `task` (a `register_rendered_task` task).
    """
    source = task.source
    if not isinstance(source, RenderedSource):
        raise TypeError(f"Task {task.name!r} is not rendered through our templates.")
    counts = {split: source.num_input_examples(split) for split in source.splits}
    return register_rendered_task(
        spec,
        source.load_split,
        vocabulary=task.output_features["targets"].vocabulary,
        splits=list(source.splits),
        num_input_examples=None if None in counts.values() else counts,
        metric_fns=task.metric_fns,
        postprocess_fn=task.postprocessor,
    )
