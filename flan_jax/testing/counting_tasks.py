"""Cacheable tasks of synthetic token examples, for the cache and input-pipeline tests.

`register_counting_tasks` registers tasks whose tokens say which task and which example
they are (`counting_example`), so tests can count and compare them without a tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import seqio
import tensorflow as tf

# Example `i` of counting task `t`: inputs `[ID_OFFSET + i, ...]`, targets `[TASK_OFFSET + t, ...]`.
ID_OFFSET = 1000
TASK_OFFSET = 10
COUNTING_VOCABULARY = seqio.PassThroughVocabulary(size=1 << 20, eos_id=1)


def counting_example(task_index: int, example_index: int) -> dict[str, np.ndarray]:
    """Example `example_index` of counting task `task_index` (lengths vary with the index)."""
    inputs = np.arange(2 + example_index % 7, dtype=np.int32) + 2
    inputs[0] = ID_OFFSET + example_index
    targets = np.full([1 + example_index % 5], 3, np.int32)
    targets[0] = TASK_OFFSET + task_index
    return {"inputs": inputs, "targets": targets}


def register_counting_tasks(
    sizes: Mapping[str, int],
    *,
    mixture_name: str | None = None,
    rates: Mapping[str, float] | None = None,
) -> None:
    """Registers a cacheable counting task of `sizes[name]` examples per name (in order).

    With `mixture_name`, also a mixture of them at `rates` (default 1.0). Idempotent.
    """
    for task_index, (name, size) in enumerate(sizes.items()):
        if name in seqio.TaskRegistry.names():
            continue
        examples = [counting_example(task_index, i) for i in range(size)]

        def dataset_fn(split, shuffle_files, seed=None, examples=examples):
            del split, shuffle_files, seed
            return tf.data.Dataset.from_generator(
                lambda: iter(examples),
                output_signature={
                    "inputs": tf.TensorSpec([None], tf.int32),
                    "targets": tf.TensorSpec([None], tf.int32),
                },
            )

        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(
                dataset_fn, splits=["train"], num_input_examples={"train": size}
            ),
            preprocessors=[
                seqio.CacheDatasetPlaceholder(),
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features={
                "inputs": seqio.Feature(COUNTING_VOCABULARY, add_eos=True),
                "targets": seqio.Feature(COUNTING_VOCABULARY, add_eos=True),
            },
        )
    if mixture_name and mixture_name not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(mixture_name, [(n, (rates or {}).get(n, 1.0)) for n in sizes])
