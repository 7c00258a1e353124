"""Instruction-augmented corpora and the two pre-training mixers: templates, the per-text
augmented/raw split, chunking, and the mixers' shares on seqio's own draws."""

import collections
import hashlib
import math
import re

import gin
import pytest
import seqio
import tensorflow as tf

from flan_jax.cli import gin_flags
from flan_jax.data import export
from flan_jax.errors import ConfigError
from flan_jax.ipt import corpora, mixers, synth_data, synthesis
from flan_jax.ipt import format as ipt_format
from flan_jax.tasks import demo, mixtures, sources, templates
from flan_jax.testing.tasks import forget_tasks_named

DRAWS = 100_000
PAIRS = (
    ipt_format.Pair("What rises twice a day?", "The tide."),
    ipt_format.Pair("What pulls on the sea?", "The moon."),
    ipt_format.Pair("Name the coast.", "The north coast."),
)
MULTI_PARAGRAPH = "Tides rise and fall.\n\nThe moon pulls the sea.\n\nSailors watch the sky."
ONE_PARAGRAPH = "Tides rise and fall. The moon pulls the sea! Do sailors watch? They do."


def write_synthesis_dir(directory, records, *, per_shard=7):
    """A synthesis output directory in `synthesis.synthesize_corpus`'s layout."""
    directory.mkdir(parents=True, exist_ok=True)
    shards = []
    for index, start in enumerate(range(0, len(records), per_shard)):
        name = synthesis.shard_name(index)
        ipt_format.write_records(directory / name, records[start : start + per_shard])
        shards.append({"file": name})
    export.write_manifest(str(directory), {"shards": shards, "complete": True})
    return str(directory)


def independent_is_augmented(text: str, fraction: float, seed: int) -> bool:
    value = int.from_bytes(hashlib.sha256(f"{seed}\x1f{text}".encode()).digest()[:8], "little")
    return value / 2**64 < fraction


def independent_interleave(parts, pair_texts):
    """Pair j after the first ceil((j + 1) * n / k) parts, computed with floats."""
    pieces, taken = [], 0
    for j, pair_text in enumerate(pair_texts):
        until = math.ceil((j + 1) * len(parts) / len(pair_texts))
        pieces += parts[taken:until] + [pair_text]
        taken = until
    return pieces


# ---------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------
def test_template_file_has_every_layout_and_enough_templates():
    pool = corpora.load_augmented_templates()
    by_layout = collections.Counter(t.layout for t in pool)
    assert set(by_layout) == set(corpora.LAYOUTS)
    assert len(pool) >= 10 and min(by_layout.values()) >= 3
    assert len({(t.document, t.pair) for t in pool}) == len(pool)  # no two alike


@pytest.mark.parametrize("text", [MULTI_PARAGRAPH, ONE_PARAGRAPH])
@pytest.mark.parametrize("num_pairs", [1, 3])
def test_every_template_renders_its_layout_with_no_placeholder_left(text, num_pairs):
    record = ipt_format.SynthesisRecord(text, PAIRS[:num_pairs])
    for template in corpora.load_augmented_templates():
        document = corpora.render_with_template(record, template)
        assert "{" not in document and "}" not in document, (template.index, document)
        pair_texts = [
            template.pair.replace("{instruction}", p.instruction).replace("{response}", p.response)
            for p in record.pairs
        ]
        positions = [document.index(p) for p in pair_texts]
        assert positions == sorted(positions)  # the pairs in their order
        if template.layout == "interleaved":
            parts = corpora.split_text_parts(text)
            body = template.separator.join(independent_interleave(parts, pair_texts))
            assert document == template.document.replace("{body}", body)
            assert document.endswith(pair_texts[-1])
        else:
            pairs = template.separator.join(pair_texts)
            assert document == template.document.replace("{text}", text).replace("{pairs}", pairs)
            if template.layout == "text_then_pairs":
                assert document.index(text) < positions[0]
            else:
                assert document.index(text) > positions[-1]


def test_interleaved_worked_example_of_the_docstring():
    template = corpora.AugmentedTemplate(
        "interleaved", "{body}", "Q: {instruction}\nA: {response}", "\n\n", 0
    )
    record = ipt_format.SynthesisRecord(
        "Tides rise. They fall.", (ipt_format.Pair("Why?", "The moon."),)
    )
    assert corpora.render_with_template(record, template) == (
        "Tides rise.\n\nThey fall.\n\nQ: Why?\nA: The moon."
    )
    assert corpora.split_text_parts(MULTI_PARAGRAPH) == [
        "Tides rise and fall.",
        "The moon pulls the sea.",
        "Sailors watch the sky.",
    ]
    assert corpora.split_text_parts(ONE_PARAGRAPH) == [
        "Tides rise and fall.",
        "The moon pulls the sea!",
        "Do sailors watch?",
        "They do.",
    ]


def test_braces_in_a_text_are_kept_and_a_record_without_pairs_is_its_text():
    record = ipt_format.SynthesisRecord("Set {x} to {pairs}.", PAIRS[:1])
    for template in corpora.load_augmented_templates():
        assert "Set {x} to {pairs}." in corpora.render_with_template(record, template)
    bare = ipt_format.SynthesisRecord("Only text.", ())
    assert corpora.render_augmented(bare, task_name="t") == "Only text."


def test_rendering_is_seeded_per_example_and_deterministic():
    pool = corpora.load_augmented_templates()
    drawn = collections.Counter()
    for i in range(300):
        record = ipt_format.SynthesisRecord(f"Text number {i}. It ends here.", PAIRS[:2])
        first = corpora.render_augmented(record, task_name="task_a", seed=3)
        assert corpora.render_augmented(record, task_name="task_a", seed=3) == first
        # The draw depends on (seed, task, the text's key) only.
        rng = templates.example_rng(3, "task_a", corpora.text_key(record.text))
        template = pool[int(rng.integers(len(pool)))]
        assert first == corpora.render_with_template(record, template)
        drawn[template.layout] += 1
    assert set(drawn) == set(corpora.LAYOUTS)
    record = ipt_format.SynthesisRecord(MULTI_PARAGRAPH, PAIRS)
    others = {corpora.render_augmented(record, task_name="task_a", seed=s) for s in range(20)}
    assert len(others) > 3  # another seed draws other templates


def test_a_malformed_template_file_names_the_template(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "templates:\n"
        "  - {layout: interleaved, document: '{text}', pair: '{instruction} {response}',"
        " separator: ' '}\n"
    )
    with pytest.raises(corpora.AugmentedCorpusError, match=r"bad.yaml: template 0: document"):
        corpora.load_augmented_templates(str(path))


# ---------------------------------------------------------------------------------------
# The augmented / raw split and chunking
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus_texts():
    return [f"Document {i} tells of place {i * 7 % 13}. It has two sentences." for i in range(1000)]


def test_the_split_is_exactly_the_hash_and_disjoint(tmp_path, corpus_texts):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(f'{{"text": "{t}"}}\n' for t in corpus_texts))
    fraction, seed = 0.2, 5
    augmented = list(
        corpora.iterate_corpus_part(str(path), augmented=True, fraction=fraction, seed=seed)
    )
    raw = list(
        corpora.iterate_corpus_part(str(path), augmented=False, fraction=fraction, seed=seed)
    )
    expected = [t for t in corpus_texts if independent_is_augmented(t, fraction, seed)]
    assert augmented == expected
    assert raw == [t for t in corpus_texts if t not in set(expected)]
    assert abs(len(augmented) / len(corpus_texts) - fraction) < 0.04
    assert corpora.is_augmented_text("x", fraction=1.0) and not corpora.is_augmented_text(
        "x", fraction=0.0
    )
    # Another seed splits otherwise.
    assert augmented != list(
        corpora.iterate_corpus_part(str(path), augmented=True, fraction=fraction, seed=6)
    )


def _decoded_targets(task_name, length, vocabulary):
    dataset = seqio.get_mixture_or_task(task_name).get_dataset(
        {"inputs": 4, "targets": length}, split="train", shuffle=False
    )
    return [(ex["inputs"].tolist(), ex["targets"].tolist()) for ex in dataset.as_numpy_iterator()]


def test_the_tasks_hold_exactly_their_part_and_never_the_other(tmp_path, corpus_texts):
    texts = corpus_texts[:120]
    records = [ipt_format.SynthesisRecord(t, PAIRS[:2]) for t in texts]
    synthesis_dir = write_synthesis_dir(tmp_path / "synth", records)
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(f'{{"text": "{t}"}}\n' for t in texts))
    vocabulary = seqio.ByteVocabulary()
    augmented = corpora.register_augmented_task(
        "ipt_test_augmented_part",
        synthesis_dir=synthesis_dir,
        vocabulary=vocabulary,
        fraction=0.25,
        seed=1,
    )
    raw = corpora.register_raw_part_task(
        "ipt_test_raw_part", path=str(path), vocabulary=vocabulary, fraction=0.25, seed=1
    )
    eos = [vocabulary.eos_id]
    got_augmented = _decoded_targets(augmented, 4096, vocabulary)
    got_raw = _decoded_targets(raw, 4096, vocabulary)
    in_part = [r for r in records if independent_is_augmented(r.text, 0.25, 1)]
    assert got_augmented == [
        ([], vocabulary.encode(corpora.render_augmented(r, task_name=augmented, seed=1)) + eos)
        for r in in_part
    ]
    assert got_raw == [
        ([], vocabulary.encode(t) + eos) for t in texts if not independent_is_augmented(t, 0.25, 1)
    ]
    assert len(got_augmented) + len(got_raw) == len(texts)


def test_augmented_documents_are_chunked_to_the_target_length(tmp_path):
    vocabulary = demo.get_demo_vocabulary()
    records = [
        ipt_format.SynthesisRecord(MULTI_PARAGRAPH, PAIRS),
        ipt_format.SynthesisRecord("A short one.", PAIRS[1:2]),
        ipt_format.SynthesisRecord("No pairs at all.", ()),
    ]
    synthesis_dir = write_synthesis_dir(tmp_path / "synth", records, per_shard=2)
    name = corpora.register_augmented_task(
        "ipt_test_chunks", synthesis_dir=synthesis_dir, vocabulary=vocabulary
    )
    length = 8
    expected = []
    for record in records:
        document = corpora.render_augmented(record, task_name=name)
        tokens = list(vocabulary.encode(document)) + [vocabulary.eos_id]
        expected += [([], tokens[i : i + length]) for i in range(0, len(tokens), length)]
    got = _decoded_targets(name, length, vocabulary)
    assert got == expected
    assert len(got) > len(records)  # documents longer than a chunk were cut
    assert sum(t.count(vocabulary.eos_id) for _, t in got) == len(records)


def _register_token_task(name, rows, vocabulary, *, inputs=()):
    """A task whose examples are the token rows given (targets; optional fixed inputs)."""

    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_tensor_slices(
            {
                "inputs": tf.constant(
                    [list(inputs)] * len(rows), tf.int32, [len(rows), len(inputs)]
                ),
                "targets": tf.ragged.constant(rows, tf.int32),
            }
        ).map(lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"]})

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        preprocessors=[],
        output_features=sources.make_output_features(vocabulary),
    )
    return name


def test_the_all_tokens_view_chunks_without_adding_eos():
    vocabulary = seqio.ByteVocabulary()
    rows = [[200, 5, 6, 7, 8, 1, 200, 9, 1], [201, 4, 1]]
    name = _register_token_task("ipt_test_tokens", rows, vocabulary)
    view = mixers.register_all_tokens_view(name)
    assert view == "ipt_test_tokens:all_tokens"
    length = 4
    expected = [([], row[i : i + length]) for row in rows for i in range(0, len(row), length)]
    assert _decoded_targets(view, length, vocabulary) == expected


# ---------------------------------------------------------------------------------------
# The mixers: configured shares vs seqio's own draws
# ---------------------------------------------------------------------------------------
def test_part_rates_follow_the_formulas():
    config = mixers.PretrainMixtureConfig(synthesizer_data="x", synthesizer_share=0.1)
    assert mixers.part_rates(config) == pytest.approx(
        {"augmented": 0.9 * 0.2, "raw_text": 0.9 * 0.8, "synthesizer_data": 0.1}
    )
    no_data = mixers.PretrainMixtureConfig(synthesizer_share=0.0, augmented_fraction=1.0)
    assert mixers.part_rates(no_data) == {"augmented": 1.0}
    continual = mixers.ContinualMixtureConfig()
    assert mixers.part_rates(continual) == {"augmented": 0.5, "instructions": 0.5}
    with pytest.raises(ConfigError, match="synthesizer_data is not set"):
        mixers.PretrainMixtureConfig(synthesizer_share=0.2)
    with pytest.raises(ConfigError, match="augmented_fraction must be in"):
        mixers.PretrainMixtureConfig(augmented_fraction=1.5, synthesizer_share=0.0)


def _draw_origins(mixture, classify, *, length=512):
    dataset = seqio.get_mixture_or_task(mixture).get_dataset(
        {"inputs": 8, "targets": length}, split="train", shuffle=False, seed=0, num_epochs=None
    )
    counts = collections.Counter()
    for batch in dataset.take(DRAWS).padded_batch(10_000).as_numpy_iterator():
        for inputs, targets in zip(batch["inputs"], batch["targets"], strict=True):
            counts[classify(inputs[inputs != 0], targets[targets != 0])] += 1
    assert sum(counts.values()) == DRAWS
    return {origin: count / DRAWS for origin, count in counts.items()}


@pytest.fixture
def mixer_inputs(tmp_path):
    """A corpus of 400 texts, the synthesis output of all of them, and a byte vocabulary."""
    texts = [f"<{i}> Text {i} of the corpus. It is short." for i in range(400)]
    records = [ipt_format.SynthesisRecord(t, PAIRS[:2]) for t in texts]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(f'{{"text": "{t}"}}\n' for t in texts))
    synthesis_dir = write_synthesis_dir(tmp_path / "synth", records, per_shard=100)
    return str(path), synthesis_dir, seqio.ByteVocabulary()


@pytest.mark.slow
def test_from_scratch_mixer_shares_match_seqio_draws(mixer_inputs):
    path, synthesis_dir, vocabulary = mixer_inputs
    # The synthesizer data: a mixture of two token tasks (ids >= 200: no ASCII byte).
    first = _register_token_task("ipt_test_synth_a", [[200, 7, 1]], vocabulary)
    second = _register_token_task("ipt_test_synth_b", [[201, 7, 1]], vocabulary)
    mixtures.add_mixture("ipt_test_synth", [(first, 3.0), (second, 1.0)])
    config = mixers.PretrainMixtureConfig(
        synthesis_dir=synthesis_dir,
        raw_text_path=path,
        augmented_fraction=0.2,
        synthesizer_data="ipt_test_synth",
        synthesizer_share=0.1,
        name="ipt_test_pretrain",
    )
    mixture = mixers.register_pretrain_mixture(config=config)
    # Independently: the synthesizer data's 0.1 splits 3:1; the rest 1:4.
    expected = {
        "augmented": 0.9 * 0.2,
        "raw_text": 0.9 * 0.8,
        "synth_a": 0.1 * 0.75,
        "synth_b": 0.1 * 0.25,
    }
    assert sum(mixture.rates.values()) == pytest.approx(1.0)
    assert seqio.get_mixture_or_task(mixture.name).rate_per_task_name == pytest.approx(
        {
            "ipt_test_pretrain:augmented": expected["augmented"],
            "ipt_test_pretrain:raw_text": expected["raw_text"],
            "ipt_test_synth_a:all_tokens": expected["synth_a"],
            "ipt_test_synth_b:all_tokens": expected["synth_b"],
        }
    )

    def classify(inputs, targets):
        assert not inputs.size  # every part is targets only
        if targets[0] >= 200:
            return "synth_a" if targets[0] == 200 else "synth_b"
        # A raw chunk is its text ("<i> Text ..."); an augmented document adds pairs.
        text = vocabulary.decode(targets.tolist())
        assert "Text" in text
        return "augmented" if "The tide." in text else "raw_text"

    shares = _draw_origins(mixture.name, classify)
    for origin, share in expected.items():
        assert abs(shares[origin] - share) < 0.01, (origin, shares[origin], share)


@pytest.mark.slow
def test_continual_mixer_is_all_augmented_one_to_one_with_instructions(mixer_inputs):
    _, synthesis_dir, vocabulary = mixer_inputs
    first = _register_token_task("ipt_test_instr_a", [[210, 1]], vocabulary, inputs=[70, 1])
    second = _register_token_task("ipt_test_instr_b", [[211, 1]], vocabulary, inputs=[71, 1])
    mixtures.add_mixture("ipt_test_instructions", [(first, 1.0), (second, 1.0)])
    config = mixers.ContinualMixtureConfig(
        synthesis_dir=synthesis_dir,
        instruction_mixture="ipt_test_instructions",
        name="ipt_test_continual",
    )
    mixture = mixers.register_continual_mixture(config=config)
    assert mixture.rates == {"ipt_test_continual:augmented": 0.5, "ipt_test_instructions": 0.5}
    augmented_texts = collections.Counter()

    def classify(inputs, targets):
        if inputs.size:
            return "instructions"
        text = vocabulary.decode(targets.tolist())
        augmented_texts[re.match(r".*?<(\d+)>", text, re.S).group(1)] += 1
        return "augmented"

    shares = _draw_origins(mixture.name, classify)
    assert abs(shares["augmented"] - 0.5) < 0.01 and abs(shares["instructions"] - 0.5) < 0.01
    assert len(augmented_texts) == 400  # every text augmented (fraction 1)


def test_mixers_name_what_is_missing(tmp_path, mixer_inputs):
    path, synthesis_dir, _ = mixer_inputs
    with pytest.raises(corpora.AugmentedCorpusError, match="gin macro SYNTHESIS_DIR"):
        mixers.register_continual_mixture(config=mixers.ContinualMixtureConfig())
    with pytest.raises(corpora.AugmentedCorpusError, match="no manifest.json"):
        corpora.check_synthesis_dir(str(tmp_path))
    config = mixers.ContinualMixtureConfig(
        synthesis_dir=synthesis_dir, instruction_mixture="ipt_test_nowhere"
    )
    with pytest.raises(ConfigError, match="'ipt_test_nowhere' is not a registered"):
        mixers.register_continual_mixture(config=config)
    config = mixers.PretrainMixtureConfig(
        synthesis_dir=synthesis_dir, raw_text_path=path, synthesizer_share=0.0
    )
    with pytest.raises(ConfigError, match="needs a vocabulary"):
        mixers.register_pretrain_mixture(config=config)


def test_an_augmented_part_with_no_record_is_an_error_not_an_endless_epoch(tmp_path):
    synthesis_dir = write_synthesis_dir(
        tmp_path / "synth", [ipt_format.SynthesisRecord("one", PAIRS[:1])]
    )
    name = corpora.register_augmented_task(
        "ipt_test_empty",
        synthesis_dir=synthesis_dir,
        vocabulary=seqio.ByteVocabulary(),
        fraction=0.0,
    )
    with pytest.raises(Exception, match="holds no text"):
        list(seqio.get_mixture_or_task(name).source.get_dataset("train").as_numpy_iterator())


def test_the_vanilla_baseline_needs_no_synthesis_output(mixer_inputs):
    path, _, vocabulary = mixer_inputs
    data = _register_token_task("ipt_test_vocab_only", [[200, 1]], vocabulary)
    config = mixers.PretrainMixtureConfig(
        raw_text_path=path,
        augmented_fraction=0.0,
        synthesizer_data=data,
        synthesizer_share=0.0,
        name="ipt_test_vanilla",
    )
    mixture = mixers.register_pretrain_mixture(config=config)
    assert mixture.rates == {"ipt_test_vanilla:raw_text": 1.0}
    texts = [
        vocabulary.decode(t[:-1])
        for _, t in _decoded_targets("ipt_test_vanilla:raw_text", 512, vocabulary)
    ]
    assert len(texts) == 400 and texts[0].startswith("<0> Text 0")


# ---------------------------------------------------------------------------------------
# The synthesizer's real (demo) training data inside the mixture, and the run configs
# ---------------------------------------------------------------------------------------
def test_the_view_of_the_demo_synthesizer_data_is_its_tokens_without_the_loss_mask():
    forget_tasks_named("ipt_synthesizer")  # registered elsewhere with another budget
    data = synth_data.register_synthesizer_data(
        config=synth_data.SynthesizerDataConfig(
            sources=("demo",), max_tokens=256, start_token_id=0, mixture_name="ipt_synthesizer_demo"
        )
    )
    task = data.tasks[0]
    originals = [
        ex
        for ex in seqio.get_mixture_or_task(task)
        .get_dataset(None, split="train", shuffle=False)
        .take(20)
        .as_numpy_iterator()
    ]
    assert "targets_loss_mask" in originals[0]  # what the view leaves out
    view = mixers.register_all_tokens_view(task)
    length = 64
    chunks = list(
        seqio.get_mixture_or_task(view)
        .get_dataset({"inputs": 1, "targets": length}, split="train", shuffle=False)
        .take(200)
        .as_numpy_iterator()
    )
    assert all(set(c) == {"inputs", "targets"} and not c["inputs"].size for c in chunks)
    expected = [
        ex["targets"][i : i + length].tolist()
        for ex in originals
        for i in range(0, len(ex["targets"]), length)
    ]
    assert [c["targets"].tolist() for c in chunks[: len(expected)]] == expected


@pytest.fixture
def ipt_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_run_configs_bind_the_papers_numbers(ipt_gin):
    gin_flags.parse_gin(
        ["models/decoder_tiny.gin", "runs/ipt_pretrain.gin"], ["MODEL_DIR = '/tmp/r'"]
    )
    config = gin.query_parameter(
        "ipt_mixers.register_pretrain_mixture.config"
    ).scoped_configurable_fn()
    assert config.augmented_fraction == 0.2  # 1/5 of the texts (REFERENCE.md)
    assert config.name == gin.query_parameter("%MIXTURE_OR_TASK_NAME")
    data = gin.query_parameter("synth_data.register_synthesizer_data.config")
    assert data.scoped_configurable_fn().max_tokens == 4096  # REFERENCE.md
    assert config.synthesizer_data == data.scoped_configurable_fn().mixture_name
    loaded = gin.query_parameter("trainer.train.data_config").scoped_configurable_fn()
    assert loaded.loss_on_inputs  # next-token loss on every token
    gin.clear_config()
    gin_flags.parse_gin(
        ["models/decoder_tiny.gin", "runs/ipt_continual.gin"], ["MODEL_DIR = '/tmp/r'"]
    )
    config = gin.query_parameter(
        "ipt_mixers.register_continual_mixture.config"
    ).scoped_configurable_fn()
    assert config.instruction_share == 0.5  # 1:1 (REFERENCE.md)
    assert config.instruction_mixture == "flan2022_submix"
    assert config.name == gin.query_parameter("%MIXTURE_OR_TASK_NAME")
    assert gin.query_parameter("trainer.train.data_config").scoped_configurable_fn().loss_on_inputs


def test_demo_run_config_registers_the_mixture_over_real_demo_data(ipt_gin, mixer_inputs):
    path, synthesis_dir, _ = mixer_inputs
    gin_flags.parse_gin(
        ["models/decoder_tiny.gin", "runs/ipt_pretrain.gin", "runs/ipt_pretrain_demo_cpu.gin"],
        [f"RAW_TEXT_PATH = '{path}'", f"SYNTHESIS_DIR = '{synthesis_dir}'"],
    )
    for register in gin.query_parameter("trainer.train.register_tasks"):
        registered = register.scoped_configurable_fn()
    assert isinstance(registered, mixers.IptMixture)
    lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
    mixture = seqio.get_mixture_or_task(registered.name)
    by_part = collections.defaultdict(float)
    for name, rate in mixtures.iter_mixture_rates(registered.name):
        part = name.split(":")[-1] if name.startswith(registered.name) else "synthesizer_data"
        by_part[part] += rate
    assert dict(by_part) == pytest.approx(
        {"augmented": 0.18, "raw_text": 0.72, "synthesizer_data": 0.1}
    )
    examples = list(
        mixture.get_dataset(lengths, split="train", shuffle=True, seed=0)
        .take(50)
        .as_numpy_iterator()
    )
    assert all(not ex["inputs"].size and 0 < len(ex["targets"]) <= 127 for ex in examples)
