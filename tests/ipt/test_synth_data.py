"""The instruction synthesizer's training data: format, budget, no mixing, and training.

Real items: two NIv2 task files of ../shared/data (task1149, task062: the only complete NIv2
tasks there; neither is context-based, so they go through the catalog's NIv2 field mapping
by hand) and the demo collection's reading generator. The Flan 2021 and T0 sources have no
local data on these machines, so no golden test reads them; their catalog rows are checked
against the families' field names instead.
"""

from __future__ import annotations

import dataclasses
import json
import string

import gin
import numpy as np
import pytest
import seqio

from flan_jax.cli import gin_flags
from flan_jax.data import packing, pipeline, vocabularies
from flan_jax.errors import ConfigError
from flan_jax.ipt import format as ipt_format
from flan_jax.ipt import synth_data
from flan_jax.models.decoder import DecoderModel
from flan_jax.tasks import data_paths, demo
from flan_jax.tasks.flan2021 import catalog as flan2021_catalog
from flan_jax.testing import hf_decoders, shared_data
from flan_jax.testing.tasks import forget_tasks_named
from flan_jax.training import checkpointing, metrics, task_eval, trainer

DEMO = synth_data.SynthesizerDataConfig(
    sources=("demo",), max_tokens=160, start_token_id=0, mixture_name="ipt_synthesizer_demo_test"
)


@pytest.fixture(scope="module")
def demo_data():
    # Another test module may have registered the same tasks with another budget.
    forget_tasks_named("ipt_synthesizer")
    return synth_data.register_synthesizer_data(config=DEMO)


@pytest.fixture(scope="module")
def demo_vocabulary():
    return demo.get_demo_vocabulary()


def _catalog_entry(source, dataset=None):
    for entry in synth_data.load_context_datasets(sources=[source]):
        if dataset is None or entry.dataset == dataset:
            return entry
    raise AssertionError(f"{source}/{dataset} not in the catalog")


def _segments(row, *, bos_id=0):
    """Splits a concatenation into its (tokens, mask) one-shot examples, the first one's BOS
    (which the model's start token supplies) put back."""
    tokens = np.concatenate([[bos_id], row["targets"]])
    mask = np.concatenate([[0], row["targets_loss_mask"]])
    ends = [
        i + 1
        for i in range(len(tokens))
        if mask[i] == 1 and (i + 1 == len(tokens) or mask[i + 1] == 0)
    ]
    starts = [0, *ends[:-1]]
    assert ends[-1] == len(tokens)
    return [(tokens[s:e], mask[s:e]) for s, e in zip(starts, ends)]


def _check_one_shot(tokens, mask, vocabulary, *, bos_id, text, pair_text):
    """BOS, text, blank line, "Q: ..", blank line, "A: ..", EOS; mask 1 on the pair and EOS."""
    context = vocabulary.encode(text + "\n\n")
    pairs = vocabulary.encode(pair_text)
    np.testing.assert_array_equal(tokens, [bos_id, *context, *pairs, vocabulary.eos_id])
    np.testing.assert_array_equal(mask, [0] * (1 + len(context)) + [1] * (len(pairs) + 1))


def test_golden_demo_reading_example(demo_data, demo_vocabulary):
    task = seqio.get_mixture_or_task("ipt_synthesizer__demo__reading")
    first = next(
        task.get_dataset(sequence_length=None, split="train", shuffle=False).as_numpy_iterator()
    )
    assert len(first["inputs"]) == 0
    tokens, mask = _segments(first)[0]
    # The first train example of tasks/demo/generators.py's reading generator (seed 0).
    text = "Quinn lives in Madrid and works as a farmer. Omar lives in Oslo and works as a painter."
    _check_one_shot(
        tokens,
        mask,
        demo_vocabulary,
        bos_id=0,
        text=text,
        pair_text="Q: What is Omar's job?\n\nA: painter",
    )
    # The demo vocabulary turns blank lines into spaces; the markers keep the pair parseable.
    assert demo_vocabulary.decode(tokens[mask == 1].tolist()) == "Q: What is Omar's job? A: painter"


@pytest.mark.parametrize(
    "task_file,first_input,first_output",
    [
        ("task1149_item_check_edible", "sink", "2"),
        ("task062_bigbench_repeat_copy_logic", None, None),
    ],
)
def test_golden_niv2_examples(tmp_path, task_file, first_input, first_output):
    root = shared_data.shared_data_path("super_natural_instructions")
    # NIv2 files hold bare NaN (see ../shared/data/README.md): Python's json reads them.
    raw = json.loads((root / "tasks" / f"{task_file}.json").read_text())
    instance = raw["Instances"][0]
    definition = "\n".join(d.strip() for d in raw["Definition"]).strip()
    output = instance["output"][0] if isinstance(instance["output"], list) else instance["output"]
    if first_input is not None:
        assert (instance["input"], output) == (first_input, first_output)
    # The catalog's NIv2 mapping (input -> text, definition -> instruction, answer ->
    # response) applied to this task; a byte-level BPE vocabulary decodes exactly, blank
    # lines included, and has an EOS (2) that is not the start token (0).
    entry = dataclasses.replace(_catalog_entry("niv2"), dataset=task_file)
    vocabulary = vocabularies.get_vocabulary(str(hf_decoders.write_test_tokenizer(tmp_path)))
    config = dataclasses.replace(DEMO, sources=("niv2",), max_tokens=4096)
    paths = data_paths.DataPaths(source_dirs={"niv2": str(root)})
    rows = synth_data.iterate_task_examples(
        entry, vocabulary, split="train", config=config, paths=paths
    )
    first = next(rows)
    tokens, mask = _segments(first)[0]
    pair_text = f"Q: {definition}\n\nA: {output.strip()}"
    _check_one_shot(
        tokens, mask, vocabulary, bos_id=0, text=instance["input"].strip(), pair_text=pair_text
    )
    assert vocabulary.eos_id == 2
    assert vocabulary.decode(tokens[mask == 1][:-1].tolist()) == pair_text
    assert (
        vocabulary.decode(tokens[1 : np.argmax(mask)].tolist())
        == instance["input"].strip() + "\n\n"
    )
    assert len(first["targets"]) <= 4096


@pytest.mark.parametrize("dataset", ["reading", "nli", "sentiment"])
def test_budget_and_no_mixing_over_many_examples(demo_data, demo_vocabulary, dataset):
    entry = _catalog_entry("demo", dataset)
    rows = list(
        synth_data.iterate_task_examples(entry, demo_vocabulary, split="train", config=DEMO)
    )
    # Independently: every record of the dataset, encoded one by one, in source order.
    expected = []
    for key, fields in demo.load_demo_split(dataset, split="train"):
        record = synth_data.make_record(entry, fields, key=key)
        assert record is not None
        expected.append(ipt_format.encode_example(demo_vocabulary, record, bos_id=0))
    assert len(rows) > 100
    segments = [segment for row in rows for segment in _segments(row)]
    # The rows hold exactly this dataset's examples, in order (nothing mixed, lost or cut) ...
    assert len(segments) == len(expected)
    for (tokens, mask), (want_tokens, want_mask) in zip(segments, expected):
        np.testing.assert_array_equal(tokens, want_tokens)
        np.testing.assert_array_equal(mask, want_mask)
    # ... within the budget, each row closed only when the next example did not fit.
    lengths = [len(row["targets"]) + 1 for row in rows]  # + the first BOS, the start token
    assert max(lengths) <= DEMO.max_tokens
    first_of_next = [len(_segments(row)[0][0]) for row in rows[1:]]
    assert all(n + f > DEMO.max_tokens for n, f in zip(lengths, first_of_next))
    assert all(len(row["targets_loss_mask"]) == n - 1 for row, n in zip(rows, lengths))


def test_concatenation_skips_examples_over_budget():
    def example(n):
        return np.full(n, n, np.int32), np.ones(n, np.int32)

    rows = list(synth_data.concatenate_examples(map(example, [3, 4, 9, 2, 5, 7]), max_tokens=7))
    # Each row without its first token (the first example's BOS, here its first token).
    assert [row["targets"].tolist() for row in rows] == [
        [3, 3, 4, 4, 4, 4],
        [2, 5, 5, 5, 5, 5],
        [7] * 6,
    ]


def test_task_names_round_trip():
    for source, dataset in [("t0", "adversarial_qa/dbert"), ("t0", "quoref"), ("demo", "nli")]:
        name = synth_data.make_task_name(source, dataset)
        assert synth_data.parse_task_name(name) == (source, dataset)


def test_catalog_rows_use_the_families_field_names():
    entries = synth_data.load_context_datasets()
    assert {e.source for e in entries} == set(synth_data.SOURCES)
    flan_fields = {}
    for d in flan2021_catalog.load_catalog():
        flan_fields[d.name] = {*d.fields, *d.constants, "answer", "options"}
    for entry in entries:
        names = {
            f[1].split("[")[0].split(".")[0]
            for s in (entry.text, entry.instruction, entry.response)
            for f in string.Formatter().parse(s)
            if f[1]
        }
        if entry.source == "flan2021":
            assert names <= flan_fields[entry.dataset], entry
        elif entry.source == "niv2":
            assert names == {"input", "definition", "answer"}
        elif entry.source == "demo":
            fields = next(iter(demo.load_demo_split(entry.dataset, split="train")))[1]
            assert names <= set(fields), entry
    niv2 = [e for e in entries if e.source == "niv2"]
    assert len(niv2) > 50  # the category selection, English train-split tasks only


def test_bad_catalog_row_names_file_and_entry(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text(
        "datasets:\n"
        "  - {source: demo, dataset: reading, text: '{context}', instruction: '{question}',"
        " response: '{answer}'}\n"
        "  - {source: demo, dataset: nli, text: '{premise', instruction: 'x', response: 'y'}\n"
    )
    with pytest.raises(ConfigError, match=r"catalog.yaml: datasets\[1\].text"):
        synth_data.load_context_datasets(str(path))


def test_unknown_field_is_a_clear_error(demo_vocabulary):
    entry = dataclasses.replace(_catalog_entry("demo", "reading"), instruction="{query}")
    with pytest.raises(ConfigError, match=r"instruction: example train:0 .* no field 'query'"):
        next(synth_data.iterate_task_examples(entry, demo_vocabulary, split="train", config=DEMO))


def _tiny_decoder() -> DecoderModel:
    gin.clear_config()
    try:
        gin_flags.parse_gin(
            ["models/decoder_tiny.gin"],
            ['ACTIVATION_DTYPE = "float32"', "model_config.DecoderConfig.vocab_size = 1024"],
        )
        model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    finally:
        gin.clear_config()
    return model


def test_trainer_batches_weigh_exactly_the_pair_tokens(
    tmp_path, monkeypatch, demo_data, demo_vocabulary
):
    served = []
    original_next = pipeline.TrainIterator.__next__

    def recording_next(self):
        batch = original_next(self)
        served.append(batch)
        return batch

    monkeypatch.setattr(pipeline.TrainIterator, "__next__", recording_next)
    model = _tiny_decoder()
    assert model.feature_format == packing.DecoderOnlyFormat(start_token_id=0)
    result = trainer.train(
        model_dir=str(tmp_path / "run"),
        model=model,
        mixture_or_task_name=demo_data.mixture,
        task_feature_lengths={"inputs": 1, "targets": DEMO.max_tokens},
        train_steps=3,
        batch_size=4,
        register_tasks=[lambda: synth_data.register_synthesizer_data(config=DEMO)],
        data_config=trainer.DataConfig(buffer_size=8),
        checkpoint_config=checkpointing.CheckpointConfig(period=3, keep=1, async_save=False),
        eval_config=task_eval.EvalConfig(eval_period=0, tasks=(), inference=False, max_examples=2),
        metrics_config=metrics.MetricsConfig(log_period=1, tensorboard=False, progress_bar=False),
    )
    assert result.step == 3 and np.isfinite(result.train_metrics["train/loss"])
    # Every concatenation of the three datasets, by its tokens -> its mask.
    masks = {}
    for task in demo_data.tasks:
        entry = _catalog_entry("demo", synth_data.parse_task_name(task)[1])
        for row in synth_data.iterate_task_examples(
            entry, demo_vocabulary, split="train", config=DEMO
        ):
            masks[row["targets"].tobytes()] = row["targets_loss_mask"]
    assert len(served) >= 3
    checked = 0
    for batch in served:
        for r, segment_ids in enumerate(batch["decoder_segment_ids"]):
            for segment in set(segment_ids[segment_ids > 0].tolist()):
                where = segment_ids == segment
                targets = batch["decoder_target_tokens"][r][where]
                np.testing.assert_array_equal(
                    batch["decoder_loss_weights"][r][where], masks[targets.tobytes()]
                )
                checked += 1
            assert not batch["decoder_loss_weights"][r][segment_ids == 0].any()
    assert checked >= 12


CPU_STACK = ["models/decoder_tiny.gin", "runs/ipt_synthesizer.gin", "runs/ipt_synthesizer_cpu.gin"]
PAPER_STACK = ["models/mistral_7b.gin", "runs/ipt_synthesizer.gin"]


@pytest.mark.parametrize("stack,start", [(CPU_STACK, 0), (PAPER_STACK, 1)], ids=["cpu", "paper"])
def test_run_configs_take_the_models_start_token_and_fit_the_budget(stack, start):
    gin.clear_config()
    try:
        gin_flags.parse_gin(stack, ["MODEL_DIR = '/tmp/run'"])
        register = gin.query_parameter("synth_data.register_synthesizer_data.config")
        config = register.scoped_configurable_fn()
        model = gin.query_parameter("%MODEL").scoped_configurable_fn()
        lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
        mixture = gin.query_parameter("trainer.train.mixture_or_task_name")
    finally:
        gin.clear_config()
    assert config.start_token_id is None  # taken from the model at registration
    assert synth_data._resolve_start_token(config, model).start_token_id == start
    assert lengths["targets"] == config.max_tokens and config.mixture_name == mixture
    if stack is PAPER_STACK:
        assert config.max_tokens == synth_data.PAPER_MAX_TOKENS
        assert config.sources == synth_data.COLLECTION_SOURCES
    else:
        assert config.sources == ("demo",)
    with pytest.raises(ConfigError, match="but the model starts from"):
        synth_data._resolve_start_token(
            dataclasses.replace(config, start_token_id=start + 5), model
        )
