"""`beam_cache.cache_tasks` and `flan-jax data cache` against seqio's own reading of the tasks.

One DirectRunner build (module fixture) caches the validation split (200 examples) of two
demo tasks, with ArrayRecord shards, into 3 shards so the shards are uneven (66/67/67).
The comparisons are independent of the cache writer: seqio's on-the-fly `get_dataset`
(source -> tokenize -> append_eos_after_trim, shuffle off) against seqio's
`get_dataset(use_cached=True)` (cache -> append_eos_after_trim), matched by the unique
`_example_key` because seqio's cached reader interleaves the shards; and the ArrayRecord
and TFRecord records against each other and the on-the-fly order.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator

import apache_beam as beam
import numpy as np
import pytest
import seqio
import tensorflow as tf
from array_record.python import array_record_module

from flan_jax.cli import main as cli
from flan_jax.data import array_record_cache, beam_cache
from flan_jax.errors import UserError
from flan_jax.tasks import demo
from flan_jax.testing.tasks import forget_tasks_named

TASKS = ("demo__arith__zs_noopt", "demo__nli__zs_opt")
SPLIT = "validation"
NUM_SHARDS = 3


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Iterator[str]:
    demo.register_demo_tasks(demo.get_demo_vocabulary())
    out = str(tmp_path_factory.mktemp("beam_cache"))
    beam_cache.cache_tasks(
        TASKS, output_dir=out, splits=(SPLIT,), array_record=True, num_shards=NUM_SHARDS
    )
    yield out
    # Later modules register the demo tasks with vocabularies of their own.
    forget_tasks_named("demo_")


@pytest.fixture
def reads_the_cache(cache_dir) -> Iterator[None]:
    """seqio's global cache dirs hold `cache_dir` for the test, and only for it."""
    previous = list(seqio.utils.get_global_cache_dirs())
    seqio.add_global_cache_dirs([cache_dir])
    yield
    seqio.set_global_cache_dirs(previous)
    for name in TASKS:  # seqio remembers where it found a task's cache.
        seqio.TaskRegistry.get(name)._cache_dir = None


def on_the_fly(name: str) -> list[dict]:
    task = seqio.TaskRegistry.get(name)
    dataset = task.get_dataset(
        demo.DEMO_TASK_FEATURE_LENGTHS, split=SPLIT, use_cached=False, shuffle=False
    )
    return list(dataset.as_numpy_iterator())


def by_key(examples: list[dict]) -> dict[bytes, dict]:
    keyed = {example["_example_key"]: example for example in examples}
    assert len(keyed) == len(examples), "example keys are not unique"
    return keyed


def read_array_records(task_dir: str) -> tuple[array_record_cache.ArrayRecordIndex, list[bytes]]:
    index = array_record_cache.read_index(task_dir, SPLIT)
    records = []
    for path, shard in zip(index.shard_paths, index.shards, strict=True):
        reader = array_record_module.ArrayRecordReader(path)
        assert reader.num_records() == shard.num_records, path
        records.extend(reader.read_all())
        reader.close()
    return index, records


def read_tfrecords(task_dir: str) -> list[bytes]:
    paths = sorted(glob.glob(seqio.utils.get_cached_tfrecord_prefix(task_dir, SPLIT) + "-*"))
    return [record.numpy() for record in tf.data.TFRecordDataset(paths)]


def example_key(record: bytes) -> bytes:
    return tf.train.Example.FromString(record).features.feature["_example_key"].bytes_list.value[0]


@pytest.mark.parametrize("name", TASKS)
def test_cache_read_by_seqio_equals_on_the_fly_examples(cache_dir, reads_the_cache, name):
    task = seqio.TaskRegistry.get(name)
    assert task.cache_dir == os.path.join(cache_dir, name)
    cached = task.get_dataset(
        demo.DEMO_TASK_FEATURE_LENGTHS, split=SPLIT, use_cached=True, shuffle=False
    )
    expected, got = by_key(on_the_fly(name)), by_key(list(cached.as_numpy_iterator()))
    assert len(expected) == demo.collection.NUM_VALIDATION_EXAMPLES
    assert got.keys() == expected.keys()
    for key, example in expected.items():
        assert got[key].keys() == example.keys(), key
        for feature, value in example.items():
            np.testing.assert_array_equal(got[key][feature], value, err_msg=f"{key} {feature}")


@pytest.mark.parametrize("name", TASKS)
def test_array_records_are_the_tfrecords_in_source_order(cache_dir, name):
    task_dir = os.path.join(cache_dir, name)
    index, array_records = read_array_records(task_dir)
    # Contiguous, near-equal shards; the index counts what the files hold.
    assert [shard.num_records for shard in index.shards] == [66, 67, 67]
    assert index.num_records == len(array_records) == 200
    assert index.features["inputs"] == index.features["targets"] == "int32"
    # Record i is the i-th example seqio yields with shuffling off.
    assert [example_key(r) for r in array_records] == [e["_example_key"] for e in on_the_fly(name)]
    # Both formats hold the same records in the same order.
    assert read_tfrecords(task_dir) == array_records
    tfrecords = {example_key(r): tf.train.Example.FromString(r) for r in read_tfrecords(task_dir)}
    for record in array_records:
        example = tf.train.Example.FromString(record)
        assert example == tfrecords[example_key(record)]
        assert not any(name.startswith("provenance/") for name in example.features.feature)


def test_array_record_decodes_to_the_tokens_seqio_caches(cache_dir):
    task_dir = os.path.join(cache_dir, TASKS[0])
    index, records = read_array_records(task_dir)
    first = array_record_cache.decode_example(records[0], index.features)
    vocabulary = seqio.TaskRegistry.get(TASKS[0]).output_features["inputs"].vocabulary
    expected = on_the_fly(TASKS[0])[0]
    # The cache holds the tokens before append_eos_after_trim: no EOS yet.
    np.testing.assert_array_equal(
        first["inputs"], vocabulary.encode(expected["inputs_pretokenized"])
    )
    np.testing.assert_array_equal(
        np.append(first["targets"], vocabulary.eos_id), expected["targets"]
    )


def test_a_mixture_stands_for_its_tasks_and_missing_splits_are_refused(cache_dir):
    mixture = seqio.MixtureRegistry.get(demo.DEMO_MIXTURE)
    tasks = beam_cache.resolve_cache_tasks([demo.DEMO_MIXTURE, TASKS[0]], ["train"])
    assert sorted(task.name for task in tasks) == sorted(task.name for task in mixture.tasks)
    with pytest.raises(UserError, match=r"demo__arith\.unseen__zs_noopt have none of the splits"):
        beam_cache.resolve_cache_tasks(["demo__arith.unseen__zs_noopt"], ["train"])


def test_a_task_without_a_cache_placeholder_is_refused(cache_dir):
    name = "beam_cache_test__uncacheable"
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            lambda split, shuffle_files: tf.data.Dataset.from_tensors({"targets": "x"}),
            splits=["train"],
        ),
        preprocessors=[],
        output_features={},
    )
    try:
        with pytest.raises(UserError, match=f"cannot be cached: {name}.*CacheDatasetPlaceholder"):
            beam_cache.resolve_cache_tasks([name], ["train"])
    finally:
        seqio.TaskRegistry.remove(name)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_builds_the_same_records_and_refuses_bad_input(cache_dir, capsys, tmp_path):
    out = str(tmp_path / "cli")
    argv = ("data", "cache", "--tasks", TASKS[0], "--output_dir", out, "--split", SPLIT)
    argv += ("--array_record", "--num_shards", str(NUM_SHARDS))
    code, stdout, stderr = run_cli(capsys, *argv, "--", "--runner=DirectRunner")
    assert code == 0, stderr
    assert "cached 200 examples of 1 task(s)" in stdout
    # A second build (through the CLI's worker registration) writes the same records.
    _, first = read_array_records(os.path.join(cache_dir, TASKS[0]))
    _, second = read_array_records(os.path.join(out, TASKS[0]))
    assert second == first

    files = {path: os.path.getmtime(path) for path in glob.glob(f"{out}/*/*")}
    bad = [
        (argv, "already holds a complete cache; pass --overwrite"),
        (("data", "cache", "--tasks", "demo__arith__zs_nopt", "--output_dir", out), "Did you mean"),
        ((*argv, "--", "--no_such_option=1"), "Unknown Beam pipeline options ['no_such_option']"),
        (("data", "export", "--mixture", TASKS[0], "--out", out, "--", "--x"), "no Beam pipeline"),
    ]
    for bad_argv, message in bad:
        code, stdout, stderr = run_cli(capsys, *bad_argv)
        assert code == 2 and message in stderr and "Traceback" not in stderr, bad_argv
    assert {path: os.path.getmtime(path) for path in glob.glob(f"{out}/*/*")} == files


def test_the_pipeline_graph_does_not_grow_with_the_task_count(cache_dir, tmp_path):
    """The tasks are data (keyed elements), not transforms: 2 and 6 tasks build the same graph."""
    names = sorted(task.name for task in seqio.MixtureRegistry.get(demo.DEMO_MIXTURE).tasks)
    assert len(names) >= 6

    def graph(num_tasks: int) -> tuple[list[str], int]:
        pipeline = beam.Pipeline()
        beam_cache.add_cache_transforms(
            pipeline,
            beam_cache.resolve_cache_tasks(names[:num_tasks], ["train"]),
            output_dir=str(tmp_path),
            splits=("train",),
            array_record=True,
            num_shards=None,
            setup_fn=lambda: None,
            modules_to_import=(),
        )
        proto = pipeline.to_runner_api()
        labels = sorted(t.unique_name for t in proto.components.transforms.values())
        return labels, proto.ByteSize()

    (labels_2, size_2), (labels_6, size_6) = graph(2), graph(6)
    assert labels_2 == labels_6
    assert "read_source_shards" in labels_2 and not any(names[0] in label for label in labels_2)
    # Only beam.Create's payload grows: a few hundred bytes per source shard.
    assert size_6 - size_2 < 4 * 1000, (size_2, size_6)
