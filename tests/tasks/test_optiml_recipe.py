"""The OPT-IML recipe: the two-level sampler (checked on seqio's own draws), the
pre-training text task, the demonstrations, the held-out exclusion and the run configs."""

import collections
import csv
import dataclasses
import functools
import importlib.util
import math
import sys
import types

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

from flan_jax.cli import gin_flags
from flan_jax.errors import ConfigError
from flan_jax.tasks import demo, mixtures, naming, registry
from flan_jax.tasks.optiml import pretrain_text, recipe, sampling

DRAWS = 100_000
# (task, benchmark, training examples): "big" has far more than the 4,096 cap.
SYNTHETIC_TASKS = (
    ("big", "A", 1_000_000),
    ("at_cap", "A", 4096),
    ("small", "A", 100),
    ("b1", "B", 3000),
    ("b2", "B", 900),
    ("c1", "C", 50_000),
)


def independent_is_held_out(task_name: str, key: str, fraction: float, seed: int) -> bool:
    task_id = naming.parse_task_name(task_name.partition(":")[0])
    salted = f"{seed}/{task_id.source}/{task_id.dataset}/{key}"
    return int(tf.strings.to_hash_bucket_fast(salted, 10_000)) < round(fraction * 10_000)


@pytest.fixture(scope="module")
def demo_tasks():
    return demo.register_demo_tasks(demo.get_demo_vocabulary())


@pytest.fixture(scope="module")
def flan_tasks():
    return registry.register_all(seqio.PassThroughVocabulary(10)).tasks


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("First document.\n\nSecond document,\non two lines.\n", encoding="utf-8")
    return str(path)


def test_worked_example_of_the_docstring():
    tasks = [
        sampling.SampledTask("a1", "A", 10_000),
        sampling.SampledTask("a2", "A", 1_000),
        sampling.SampledTask("b", "B", 3_000),
    ]
    given = sampling.two_level_rates(tasks, shares={"B": 0.5})
    assert given == pytest.approx({"a1": 0.5 * 4096 / 5096, "a2": 0.5 * 1000 / 5096, "b": 0.5})
    plain = sampling.two_level_rates(tasks)
    assert plain == pytest.approx({"a1": 4096 / 8096, "a2": 1000 / 8096, "b": 3000 / 8096})


def test_given_shares_that_leave_nothing_are_an_error():
    tasks = [sampling.SampledTask("a", "A", 10), sampling.SampledTask("b", "B", 10)]
    with pytest.raises(ConfigError, match="leaving nothing for \\['B'\\]"):
        sampling.two_level_rates(tasks, shares={"A": 1.0})
    # Every benchmark given: they are weights, normalised.
    assert sampling.two_level_rates(tasks, shares={"A": 0.3, "B": 0.1}) == pytest.approx(
        {"a": 0.75, "b": 0.25}
    )


def test_shares_file_rows_are_read_and_bad_rows_name_the_line(tmp_path):
    assert sampling.load_benchmark_shares() == {}  # The shipped file gives no share.
    path = tmp_path / "shares.tsv"
    path.write_text("# c\nbenchmark\tshare\tsource\nniv2\t0.4\tours\nt0\t1.5\tours\n")
    with pytest.raises(ConfigError, match=f"{path}:4: share must be a number in \\(0, 1\\]"):
        sampling.load_benchmark_shares(str(path))
    path.write_text("benchmark\tshare\tsource\nniv2\t0.4\tours\n")
    assert sampling.load_benchmark_shares(str(path)) == {"niv2": 0.4}


def _register_synthetic_task(name: str, token: int) -> str:
    def dataset_fn(split, shuffle_files, seed=None):
        del split, shuffle_files, seed
        return tf.data.Dataset.from_tensors({"targets": tf.constant([token], tf.int32)})

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        preprocessors=[],
        output_features={"targets": seqio.Feature(seqio.PassThroughVocabulary(100))},
    )
    return name


def test_seqio_draws_match_the_two_level_rates_and_the_cap():
    """100k draws from seqio's own mixture sampling (tf.data sample_from_datasets, what the
    training pipeline reads), not a numpy re-draw."""
    tasks = [
        sampling.SampledTask(_register_synthetic_task(f"optiml_test_{n}", i), b, count)
        for i, (n, b, count) in enumerate(SYNTHETIC_TASKS)
    ]
    rates = sampling.two_level_rates(tasks, shares={"C": 0.2})
    # Independently: C is given 0.2; A (4096 + 4096 + 100) and B (3000 + 900) split 0.8.
    size_a, size_b = 4096 + 4096 + 100, 3000 + 900
    expected = {
        "big": 0.8 * size_a / (size_a + size_b) * 4096 / size_a,
        "at_cap": 0.8 * size_a / (size_a + size_b) * 4096 / size_a,
        "small": 0.8 * size_a / (size_a + size_b) * 100 / size_a,
        "b1": 0.8 * size_b / (size_a + size_b) * 3000 / size_b,
        "b2": 0.8 * size_b / (size_a + size_b) * 900 / size_b,
        "c1": 0.2,
    }
    assert {k.removeprefix("optiml_test_"): v for k, v in rates.items()} == pytest.approx(expected)
    mixture = mixtures.add_mixture("optiml_test_mixture", list(rates.items()))
    dataset = seqio.get_mixture_or_task(mixture).get_dataset(
        {"targets": 4}, split="train", shuffle=False, seed=0, num_epochs=None
    )
    tokens = np.concatenate(
        [batch["targets"][:, 0] for batch in dataset.take(DRAWS).batch(10_000).as_numpy_iterator()]
    )
    assert tokens.size == DRAWS
    drawn = collections.Counter(tokens.tolist())
    by_benchmark: dict[str, float] = collections.defaultdict(float)
    for index, (name, benchmark, _) in enumerate(SYNTHETIC_TASKS):
        share = drawn[index] / DRAWS
        assert abs(share - expected[name]) < 0.01, (name, share, expected[name])
        by_benchmark[benchmark] += share
    for benchmark in "ABC":
        configured = sum(expected[n] for n, b, _ in SYNTHETIC_TASKS if b == benchmark)
        assert abs(by_benchmark[benchmark] - configured) < 0.01, benchmark
    # The cap: 1,000,000 examples are sampled like 4,096, i.e. 244 times less than uncapped.
    assert abs(drawn[0] - drawn[1]) / DRAWS < 0.01


def _counts_from_table() -> dict[tuple[str, str], int]:
    with open(mixtures.COUNTS_PATH, encoding="utf-8") as f:
        rows = csv.reader((line for line in f if not line.startswith("#")), delimiter="\t")
        next(rows)
        return {(r[0], r[1]): int(r[3]) for r in rows if r[2] == "train" and r[3]}


def test_flan_recipe_excludes_every_held_out_level_and_caps_big_tasks(flan_tasks, corpus):
    del flan_tasks
    mixture = recipe.register_optiml_recipe(config=recipe.RecipeConfig(pretrain_text_path=corpus))
    protocol = mixture.protocol
    held_out = set(protocol.split.category_datasets) | set(protocol.split.task_datasets)
    assert held_out
    rates = seqio.get_mixture_or_task(mixture.name).rate_per_task_name
    assert rates == pytest.approx(mixture.rates) and math.isclose(sum(rates.values()), 1.0)
    by_benchmark: dict[str, float] = collections.defaultdict(float)
    for name, rate in rates.items():
        by_benchmark[mixture.benchmarks[name]] += rate
        if name.endswith(recipe.PRETRAINING_TEXT):
            continue
        task_id = naming.parse_task_name(name.partition(":")[0])
        assert (task_id.source, task_id.dataset) not in held_out, name
        assert task_id.source != "dialog", name  # Dialogue is not trained on.
        # Held-out instances: every member is the seen-instances copy.
        assert name.endswith(":seen_instances_s0_b1000"), name
    assert by_benchmark["pretraining_text"] == pytest.approx(0.05)
    assert by_benchmark["reasoning"] == pytest.approx(0.01)
    assert set(by_benchmark) == {"flan2021", "t0", "niv2", "reasoning", "pretraining_text"}
    # The biggest seen flan2021 task (far above the cap) is rated flan2021's share times
    # 4,096 / flan2021's capped size.
    counts = _counts_from_table()
    flan2021 = [n for n in rates if mixture.benchmarks[n] == "flan2021"]
    size = sum(
        min(4096, counts[("flan2021", naming.parse_task_name(n.partition(":")[0]).dataset)])
        for n in flan2021
    )
    biggest = max(
        flan2021,
        key=lambda n: counts[("flan2021", naming.parse_task_name(n[: n.index(":")]).dataset)],
    )
    assert (
        counts[("flan2021", naming.parse_task_name(biggest[: biggest.index(":")]).dataset)]
        > 50 * 4096
    )
    assert rates[biggest] == pytest.approx(by_benchmark["flan2021"] * 4096 / size)
    # The remaining 94% goes to the three benchmarks by capped size (no shares given);
    # a dataset without a count samples at the cap.
    sizes: dict[str, int] = collections.defaultdict(int)
    for name in rates:
        if mixture.benchmarks[name] in ("flan2021", "t0", "niv2"):
            task_id = naming.parse_task_name(name.partition(":")[0])
            sizes[mixture.benchmarks[name]] += min(
                4096, counts.get((task_id.source, task_id.dataset), 4096)
            )
    for benchmark, size in sizes.items():
        assert by_benchmark[benchmark] == pytest.approx(0.94 * size / sum(sizes.values()))


def test_demo_recipe_keeps_held_out_templates_out(demo_tasks, corpus):
    del demo_tasks
    config = recipe.RecipeConfig(
        demo=True, held_out="templates", benchmark="category", pretrain_text_path=corpus
    )
    mixture = recipe.register_optiml_recipe(config=config)
    seen = [t.name for t in demo.list_demo_tasks() if not t.held_out_templates]
    arith = [n for n in seen if naming.parse_task_name(n).dataset == "arith"]
    others = [n for n in seen if n not in arith]
    # Every demo task has 5,000 > 4,096 examples: within a benchmark they are equal, and the
    # free benchmarks share 94% by task count.
    expected = {n: 0.94 / len(others) for n in others}
    expected.update({n: 0.01 / len(arith) for n in arith})
    expected[f"{mixture.name}:pretraining_text"] = 0.05
    assert dict(mixture.rates) == pytest.approx(expected)
    assert all(".unseen" not in name for name in mixture.rates)
    assert {mixture.benchmarks[n] for n in others} == {
        "classification",
        "question answering",
        "text manipulation",
    }


def test_demo_recipe_with_demonstrations_trains_on_no_held_out_instance(demo_tasks, corpus):
    del demo_tasks
    config = recipe.RecipeConfig(
        demo=True, pretrain_text_path=corpus, num_demonstrations=2, name="optiml_test_k2"
    )
    mixture = recipe.register_optiml_recipe(config=config)
    split = mixture.protocol.split
    excluded = set(split.category_datasets) | set(split.task_datasets)
    for name in mixture.rates:
        if name.endswith("pretraining_text"):
            continue
        task_id = naming.parse_task_name(name.partition(":")[0])
        assert ("demo", task_id.dataset) not in excluded
        assert ":demonstrations_k2:seen_instances_s0_b1000" in name
        source = seqio.get_mixture_or_task(name).source
        examples = list(source.get_dataset("train", shuffle=False).take(30).as_numpy_iterator())
        assert len(examples) == 30
        for example in examples:
            key = example["_example_key"].decode()
            assert not independent_is_held_out(name, key, 0.1, 0), (name, key)
        # The exemplars come from the same task's seen train examples only.
        copy = seqio.get_mixture_or_task(name.rsplit(":", 1)[0])
        pool = copy.source.render_spec.few_shot.pool
        assert len(pool) == 256
        assert not any(independent_is_held_out(name, key, 0.1, 0) for key, _ in pool)
        if task_id.dataset == "arith" and not task_id.inverted:
            # Two chain-of-thought exemplars precede the question: two answers in the input.
            for example in examples:
                assert example["inputs"].decode().count("So the answer is") == 2


def test_pretraining_text_is_chunked_to_the_target_length(demo_tasks, tmp_path):
    del demo_tasks
    vocabulary = demo.get_demo_vocabulary()
    documents = ["Ana grows apples in her garden every year.", "Omar rides his bicycle."]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(f'{{"text": "{d}", "id": {i}}}\n' for i, d in enumerate(documents)))
    name = pretrain_text.register_pretrain_text_task(
        "optiml_test_text", path=str(path), vocabulary=vocabulary
    )
    length = 4
    got = [
        (ex["inputs"].tolist(), ex["targets"].tolist())
        for ex in seqio.get_mixture_or_task(name)
        .get_dataset({"inputs": 8, "targets": length}, split="train", shuffle=False)
        .as_numpy_iterator()
    ]
    expected = []
    for document in documents:
        tokens = list(vocabulary.encode(document)) + [vocabulary.eos_id]
        expected += [([], tokens[i : i + length]) for i in range(0, len(tokens), length)]
    assert got == expected
    assert sum(t.count(vocabulary.eos_id) for _, t in got) == len(documents)


def test_text_corpus_documents_are_paragraphs_or_lines(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("one\ntwo\n\n\nthree\n")
    assert list(pretrain_text.iterate_documents(str(path))) == [(1, "one\ntwo"), (5, "three")]
    lines = pretrain_text.iterate_documents(str(path), documents="lines")
    assert list(lines) == [(1, "one"), (2, "two"), (5, "three")]


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "fine"}\n{"text": oops}\n', r"corpus\.jsonl:2: not valid JSON"),
        ('{"text": "fine"}\n{"body": "x"}\n', r"corpus\.jsonl:2: expected a string field 'text'"),
        ("\n\n", r"corpus\.jsonl: the pre-training text corpus holds no document"),
    ],
)
def test_malformed_corpus_is_one_error_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "corpus.jsonl"
    path.write_text(content)
    with pytest.raises(pretrain_text.CorpusError, match=message):
        list(pretrain_text.iterate_documents(str(path)))
    task = pretrain_text.register_pretrain_text_task(
        "optiml_test_bad", path=str(path), vocabulary=seqio.PassThroughVocabulary(10)
    )
    # Through tf.data the error still names the file and line.
    with pytest.raises(Exception, match=message):
        list(seqio.get_mixture_or_task(task).source.get_dataset("train").as_numpy_iterator())


def test_missing_corpus_names_the_macro(tmp_path):
    with pytest.raises(pretrain_text.CorpusError, match="gin macro PRETRAIN_TEXT_PATH"):
        pretrain_text.check_corpus_path(None)
    with pytest.raises(pretrain_text.CorpusError, match="nope.txt: pre-training text corpus not"):
        pretrain_text.check_corpus_path(str(tmp_path / "nope.txt"))


@functools.cache
def _stand_in(name: str, base: type | None = None) -> type:
    """One class per name for the whole session: gin rejects a second one under a name."""
    fields = {
        "AdamWConfig": [("b1", float, 0.9), ("b2", float, 0.999), ("eps", float, 1e-8)]
        + [("weight_decay", float, 0.0), ("clip_norm", float | None, None)],
        "DataConfig": [("loss_on_inputs", bool, False)],
        "DecoderConfig": [("vocab_size", int, 0)],
    }[name]
    return dataclasses.make_dataclass(name, fields, bases=(base,) if base else (), frozen=True)


@pytest.fixture
def decoder_stand_ins(monkeypatch):
    """Issue 12's other parts, under the design's names, until they are merged here.

    `flan_jax.training.optimizers.AdamWConfig`, `trainer.DataConfig.loss_on_inputs` and
    `config.DecoderConfig` come from the decoder and LoRA branches; where they exist, the
    real ones are used and nothing is stood in for.
    """
    from flan_jax import training
    from flan_jax.models import config as model_config
    from flan_jax.training import trainer

    if importlib.util.find_spec("flan_jax.training.optimizers") is None:
        module = types.ModuleType("flan_jax.training.optimizers")
        module.AdamWConfig = _stand_in("AdamWConfig")
        monkeypatch.setitem(sys.modules, module.__name__, module)
        monkeypatch.setattr(training, "optimizers", module, raising=False)
    if "loss_on_inputs" not in {f.name for f in dataclasses.fields(trainer.DataConfig)}:
        monkeypatch.setattr(trainer, "DataConfig", _stand_in("DataConfig", trainer.DataConfig))
    if not hasattr(model_config, "DecoderConfig"):
        monkeypatch.setattr(
            model_config, "DecoderConfig", _stand_in("DecoderConfig"), raising=False
        )
    gin.clear_config()
    yield
    gin.clear_config()


def test_optiml_gin_binds_the_papers_numbers(decoder_stand_ins):
    gin_flags.parse_gin(["runs/optiml.gin"], ["MODEL = None", "MODEL_DIR = '/tmp/r'"])
    adamw = gin.query_parameter("trainer.train.optimizer_config").scoped_configurable_fn()
    assert (adamw.b1, adamw.b2, adamw.clip_norm) == (0.9, 0.95, 1.0)
    data = gin.query_parameter("trainer.train.data_config").scoped_configurable_fn()
    assert data.pack and not data.loss_on_inputs
    schedule = gin.query_parameter("%LEARNING_RATE").scoped_configurable_fn()
    steps = gin.query_parameter("%TRAIN_STEPS")
    lr = [float(schedule(s)) for s in (0, 30, 60, (60 + steps) // 2, steps)]
    assert lr == pytest.approx([0.0, 2.5e-5, 5e-5, 2.5e-5, 0.0], abs=1e-9)
    config = gin.query_parameter(
        "optiml_recipe.register_optiml_recipe.config"
    ).scoped_configurable_fn()
    assert config == recipe.RecipeConfig(pretrain_text_path=None)  # The defaults are the paper's.
    assert (config.cap, config.pretrain_share, config.reasoning_share) == (4096, 0.05, 0.01)
    assert config.mixture_name == gin.query_parameter("%MIXTURE_OR_TASK_NAME")
    assert sum(gin.query_parameter("%TASK_FEATURE_LENGTHS").values()) == 2048


def test_optiml_demo_gin_registers_the_demo_recipe(decoder_stand_ins):
    gin_flags.parse_gin(["runs/optiml.gin", "runs/optiml_demo_cpu.gin"], ["MODEL = None"])
    for register in gin.query_parameter("trainer.train.register_tasks"):
        registered = register.scoped_configurable_fn()
    assert isinstance(registered, recipe.RecipeMixture)
    assert registered.name == gin.query_parameter("%MIXTURE_OR_TASK_NAME")
    assert registered.protocol is None and all(".unseen" not in n for n in registered.rates)
    assert registered.rates[f"{registered.name}:pretraining_text"] == pytest.approx(0.05)
    unseen = {t["unseen"] for t in demo.demo_eval_tasks().values()}
    assert set(gin.query_parameter("task_eval.EvalConfig.tasks")) == unseen
