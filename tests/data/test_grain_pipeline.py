"""The grain input pipeline over cached ArrayRecord shards: rates, resume, sharding, content.

The caches are built by `beam_cache.cache_tasks` (`flan-jax data cache --array_record`) on
the DirectRunner. The counting tasks' tokens say which task and which example they are
(`counting_tasks.counting_example`).
"""

import json
import os
import subprocess
import sys
import textwrap

import grain
import numpy as np
import pytest
import seqio

from flan_jax.data import beam_cache, grain_pipeline, packing, pipeline
from flan_jax.errors import UserError
from flan_jax.tasks import demo
from flan_jax.testing import counting_tasks
from flan_jax.testing.tasks import forget_tasks_named

PREFIX = "grain_test_"
# Sizes of at least ~1,000 records: Grain's index shuffle is slow on tiny datasets.
SIZES = {f"{PREFIX}a": 1200, f"{PREFIX}b": 2000, f"{PREFIX}c": 1000}
RATES = {f"{PREFIX}a": 1.0, f"{PREFIX}b": 2.5, f"{PREFIX}c": 0.7}
MIXTURE = f"{PREFIX}mixture"
LENGTHS = {"inputs": 8, "targets": 4}
BUFFER = 8  # examples per packing buffer: a couple of batches


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    saved_dirs = seqio.utils.get_global_cache_dirs()
    directory = str(tmp_path_factory.mktemp("cache"))
    counting_tasks.register_counting_tasks(SIZES, mixture_name=MIXTURE, rates=RATES)
    beam_cache.cache_tasks(list(SIZES), output_dir=directory, array_record=True, num_shards=3)
    seqio.add_global_cache_dirs([directory])
    yield directory
    seqio.set_global_cache_dirs(saved_dirs)
    forget_tasks_named(PREFIX)


def _iterator(**overrides):
    kwargs = dict(
        task_feature_lengths=LENGTHS,
        batch_size=4,
        seed=3,
        buffer_size=BUFFER,
        use_cached=True,
        input_pipeline="grain",
    )
    kwargs.update(overrides)
    return pipeline.make_train_iterator(kwargs.pop("name", MIXTURE), **kwargs)


def test_mixture_shares_match_the_seqio_rates(cache_dir):
    dataset = grain_pipeline.make_mixture_dataset(
        MIXTURE, split="train", task_feature_lengths=LENGTHS, seed=0
    )
    draws = 6000
    tags = np.array([dataset[i]["targets"][0] for i in range(draws)]) - counting_tasks.TASK_OFFSET
    shares = np.bincount(tags, minlength=len(SIZES)) / draws
    mixture = seqio.get_mixture_or_task(MIXTURE)
    rates = np.array([mixture.get_rate(seqio.get_mixture_or_task(n)) for n in SIZES])
    np.testing.assert_allclose(shares, rates / rates.sum(), rtol=0.01)


class CountingRecords(grain.sources.ArrayRecordDataSource):
    """Counts the records read (class-wide, so the pipeline's own instances count too)."""

    reads = 0

    def __getitem__(self, index):
        CountingRecords.reads += 1
        return super().__getitem__(index)

    def __getitems__(self, indices):
        CountingRecords.reads += len(indices)
        return super().__getitems__(indices)


def test_resume_reads_nothing_and_continues_the_exact_batches(cache_dir, monkeypatch):
    monkeypatch.setattr(grain.sources, "ArrayRecordDataSource", CountingRecords)
    straight = _iterator()
    uninterrupted = [next(straight) for _ in range(12)]
    first = _iterator()
    head = [next(first) for _ in range(7)]
    state = json.loads(json.dumps(first.get_state()))
    assert state["input_pipeline"] == "grain" and state["buffer_index"] >= 2

    CountingRecords.reads = 0
    resumed = _iterator(state=state)
    assert CountingRecords.reads == 0  # the restore itself reads no record
    tail = [next(resumed) for _ in range(5)]
    for expected, got in zip(uninterrupted, head + tail, strict=True):
        for name in expected:
            np.testing.assert_array_equal(expected[name], got[name], err_msg=name)
    assert resumed.get_state() == straight.get_state()
    # The first batch after the restore reads only the buffers it serves from.
    assert (
        0
        < CountingRecords.reads
        <= BUFFER * (resumed.get_state()["buffer_index"] - state["buffer_index"] + 1)
    )

    with pytest.raises(ValueError, match="'input_pipeline' is 'grain' but .* 'seqio'"):
        _iterator(input_pipeline="seqio", state=state)


def test_auto_takes_grain_for_cached_tasks_only(cache_dir):
    assert _iterator(input_pipeline="auto").input_pipeline == "grain"
    assert _iterator(input_pipeline="auto", use_cached=False).input_pipeline == "seqio"


_SHARD_SCRIPT = """
import json, sys
import seqio
from flan_jax.data import pipeline
from flan_jax.testing import counting_tasks
cache_dir, name, size, shard = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
counting_tasks.register_counting_tasks({name: size})
seqio.add_global_cache_dirs([cache_dir])
iterator = pipeline.make_train_iterator(
    name, task_feature_lengths={"inputs": 16, "targets": 8}, batch_size=2, seed=7,
    shard_index=shard, num_shards=2, pack=False, num_epochs=1, buffer_size=32,
    input_pipeline="grain")
ids = [int(row[0]) - counting_tasks.ID_OFFSET for batch in iterator
       for row in batch["encoder_input_tokens"]]
print(json.dumps(ids))
"""


def test_two_processes_read_disjoint_shards_covering_the_data(cache_dir):
    # A task of its own, with an odd size, so the two shards differ in length.
    name, size = f"{PREFIX}sharded", 1001
    counting_tasks.register_counting_tasks({name: size})
    beam_cache.cache_tasks([name], output_dir=cache_dir, array_record=True, num_shards=4)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_SHARD_SCRIPT), cache_dir, name, str(size)]
            + [str(shard)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for shard in (0, 1)
    ]
    outputs = [child.communicate(timeout=300) for child in children]
    for child, (_, stderr) in zip(children, outputs):
        assert child.returncode == 0, stderr[-3000:]
    shards = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert sorted(len(ids) for ids in shards) == [500, 501]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(size))


@pytest.fixture(scope="module")
def demo_vocabulary(tmp_path_factory):
    vocabulary = demo.get_demo_vocabulary(str(tmp_path_factory.mktemp("vocab")))
    demo.register_demo_tasks(vocabulary)
    yield vocabulary
    # Later modules register the demo tasks with vocabularies of their own.
    forget_tasks_named("demo_")


def test_grain_examples_equal_seqio_cached_examples(cache_dir, demo_vocabulary):
    vocabulary = demo_vocabulary
    name, lengths = "demo__nli__zs_opt", {"inputs": 24, "targets": 6}
    beam_cache.cache_tasks([name], output_dir=cache_dir, splits=["validation"], array_record=True)
    grain_examples = grain_pipeline.make_mixture_dataset(
        name, split="validation", task_feature_lengths=lengths, seed=0, num_epochs=1
    )
    seqio_examples = seqio.get_mixture_or_task(name).get_dataset(
        lengths, split="validation", use_cached=True, shuffle=False, num_epochs=1
    )

    def key(example):
        return tuple(example["inputs"].tolist()), tuple(example["targets"].tolist())

    ours = sorted(key(grain_examples[i]) for i in range(len(grain_examples)))
    reference = sorted(key(ex) for ex in seqio_examples.as_numpy_iterator())
    assert len(ours) == 200 and ours == reference
    # The post-cache steps were exercised: some inputs were cut and all end with EOS.
    assert any(len(inputs) == lengths["inputs"] for inputs, _ in ours)
    assert all(inputs[-1] == vocabulary.eos_id for inputs, _ in ours)


def test_trainer_data_config_adds_cache_dirs_and_picks_grain(cache_dir, tmp_path):
    from flan_jax.errors import ConfigError
    from flan_jax.training import trainer

    with pytest.raises(ConfigError, match="input_pipeline must be one of"):
        trainer.DataConfig(input_pipeline="tf.data")
    # A task whose cache seqio has not looked for yet (seqio remembers a found cache).
    name = f"{PREFIX}trainer"
    counting_tasks.register_counting_tasks({name: 1000})
    beam_cache.cache_tasks([name], output_dir=str(tmp_path), array_record=True)
    run = trainer.RunConfig("unused", name, LENGTHS, 1, 4, use_cached_tasks=True)
    assert (
        trainer.make_data_iterator(
            run, trainer.DataConfig(), feature_format=packing.EncoderDecoderFormat()
        ).input_pipeline
        == "seqio"
    )
    data = trainer.DataConfig(buffer_size=BUFFER, cache_dirs=[str(tmp_path)])
    iterator = trainer.make_data_iterator(run, data, feature_format=packing.EncoderDecoderFormat())
    assert iterator.input_pipeline == "grain"
    assert next(iterator)["encoder_input_tokens"].shape == (4, LENGTHS["inputs"])


def test_grain_reads_an_arrayrecord_export_as_seqio_tokenizes_it(demo_vocabulary, tmp_path_factory):
    from flan_jax.data import export

    name, lengths = "demo__words__zs_opt", {"inputs": 20, "targets": 5}
    out_dir = str(tmp_path_factory.mktemp("export"))
    config = export.ExportConfig(
        name=name, out_dir=out_dir, format="arrayrecord", max_examples=120, examples_per_shard=50
    )
    export.export_mixture(config)
    ours = grain_pipeline.make_export_dataset(
        out_dir,
        mixture_or_task_name=name,
        split="train",
        task_feature_lengths=lengths,
        seed=0,
        num_epochs=1,
    )
    # The export of one task is its first 120 examples in order; seqio tokenizes them itself.
    reference = (
        seqio.get_mixture_or_task(name)
        .get_dataset(lengths, split="train", shuffle=False, num_epochs=1)
        .take(120)
    )

    def key(example):
        return tuple(example["inputs"].tolist()), tuple(example["targets"].tolist())

    assert sorted(key(ours[i]) for i in range(len(ours))) == sorted(
        key(ex) for ex in reference.as_numpy_iterator()
    )
    assert len(ours) == 120
    iterator = pipeline.make_train_iterator(
        name,
        task_feature_lengths=lengths,
        batch_size=4,
        seed=0,
        buffer_size=16,
        export_dir=out_dir,
        input_pipeline="auto",
    )
    assert iterator.input_pipeline == "grain-export"
    next(iterator)
    with pytest.raises(UserError, match="manifest.json: name is"):
        grain_pipeline.make_export_dataset(
            out_dir,
            mixture_or_task_name="demo_mixture",
            split="train",
            task_feature_lengths=lengths,
            seed=0,
        )
