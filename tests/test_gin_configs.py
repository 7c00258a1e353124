"""Every shipped gin file parses, and the run configs build valid config objects."""

from __future__ import annotations

import re
import types

import gin
import pytest

from flan_jax.cli import gin_flags
from flan_jax.cli import main as cli
from flan_jax.cli import train as train_cli
from flan_jax.models.config import T5Config
from flan_jax.models.interface import Model
from flan_jax.training import (
    adafactor,
    checkpointing,
    losses,
    metrics,
    partitioning,
    task_eval,
    train_step,
    trainer,
)

SHIPPED = sorted(gin_flags.list_shipped_gin_files())
RUN_STACKS = (
    train_cli.DEMO_GIN_FILES,
    ("models/t5_1_1_small.gin", "runs/finetune.gin"),
    ("models/t5_1_1_base.gin", "runs/finetune.gin", "runs/pretrain.gin"),
    ("models/t5_1_1_tiny.gin", "runs/finetune.gin", "runs/lora.gin"),
)
CONFIG_CLASSES = (
    trainer.DataConfig,
    trainer.PartitioningConfig,
    partitioning.MeshConfig,
    adafactor.AdafactorConfig,
    losses.LossConfig,
    train_step.TrainStepConfig,
    checkpointing.CheckpointConfig,
    task_eval.EvalConfig,
    metrics.MetricsConfig,
)


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_the_run_configs_are_shipped():
    for name in ("finetune", "pretrain", "infer", "demo_cpu"):
        assert f"runs/{name}.gin" in SHIPPED


# The decoder-only run stacks: the OPT-IML recipe and Instruction Pre-Training.
DECODER_RUN_STACKS = (
    ("models/decoder_tiny.gin", "runs/optiml.gin"),
    ("models/decoder_tiny.gin", "runs/optiml.gin", "runs/optiml_demo_cpu.gin"),
    ("models/mistral_7b.gin", "runs/ipt_synthesizer.gin"),
    ("models/decoder_tiny.gin", "runs/ipt_synthesizer.gin", "runs/ipt_synthesizer_cpu.gin"),
    ("models/decoder_tiny.gin", "runs/ipt_pretrain.gin"),
    ("models/decoder_tiny.gin", "runs/ipt_pretrain.gin", "runs/ipt_pretrain_demo_cpu.gin"),
    ("models/llama3_8b.gin", "runs/ipt_continual.gin"),
)


def _stack_of(path: str) -> list[str]:
    """The files a shipped file is parsed with: its run stack when it ends one, else alone."""
    for stack in RUN_STACKS + DECODER_RUN_STACKS:
        if stack[-1] == path:
            return list(stack)
    return [path]


@pytest.mark.parametrize("path", SHIPPED)
def test_every_shipped_gin_file_parses(path):
    gin_flags.parse_gin(_stack_of(path), [])


@pytest.mark.parametrize("files", RUN_STACKS, ids="+".join)
def test_run_configs_build_valid_objects(files):
    gin_flags.parse_gin(list(files), ["MODEL_DIR = '/tmp/run'", "MIXTURE_OR_TASK_NAME = 'x'"])
    model = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    assert isinstance(model, T5Config)
    trained = gin.query_parameter("trainer.train.model").scoped_configurable_fn()
    assert isinstance(trained, Model) and trained.config == model  # MODEL is a T5Model of it
    for cls in CONFIG_CLASSES:  # __post_init__ validates every bound field.
        gin.get_configurable(cls)()
    assert gin.query_parameter("trainer.train.model_dir") is not None
    entry = gin.query_parameter("train_cli.run.entry_point")
    assert entry is not None


def test_demo_config_matches_the_demo_collection():
    from flan_jax.tasks import demo

    gin_flags.parse_gin(list(train_cli.DEMO_GIN_FILES), [])
    model = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    assert model.vocab_size % 128 == 0 and model.dtype == "float32"
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == demo.DEMO_MIXTURE
    tasks = gin.query_parameter("task_eval.EvalConfig.tasks")
    unseen = {t["unseen"] for t in demo.demo_eval_tasks().values()}
    assert set(tasks) == unseen


def test_unknown_gin_name_is_one_clear_error(capsys):
    code = cli.main(
        ["train"]
        + [f"--gin_file={f}" for f in train_cli.DEMO_GIN_FILES]
        + ["--gin.trainer.train.bogus=1"]
    )
    assert code == 2
    assert "bogus" in capsys.readouterr().err


def test_missing_model_dir_is_one_clear_error(capsys):
    code = cli.main(
        [
            "train",
            "--gin_file=models/t5_1_1_tiny.gin",
            "--gin_file=runs/finetune.gin",
            "--gin.MIXTURE_OR_TASK_NAME=demo_mixture",
        ]
    )
    assert code == 2
    assert "--gin.MODEL_DIR" in capsys.readouterr().err


# The run configs that register the task catalog, and where they bind it.
CATALOG_CONFIGS = (
    pytest.param(
        ("models/t5_1_1_small.gin", "runs/finetune.gin"),
        "trainer.train.register_tasks",
        id="finetune",
    ),
)


@pytest.mark.parametrize("files, parameter", CATALOG_CONFIGS)
def test_run_configs_without_vocabulary_fail_naming_the_macro(files, parameter):
    from flan_jax.tasks import registry

    gin_flags.parse_gin(list(files), [])
    [register] = gin.query_parameter(parameter)
    assert register.configurable.wrapped is registry.register_catalog
    with pytest.raises(
        ValueError,
        match=r"gin macro VOCABULARY_PATH.*"
        r"--gin\.VOCABULARY_PATH=/path/spiece\.model",
    ):
        register.scoped_configurable_fn()


@pytest.mark.parametrize("files, parameter", CATALOG_CONFIGS)
def test_run_configs_pass_the_vocabulary_macros_to_the_catalog(files, parameter, monkeypatch):
    from flan_jax.tasks import registry

    received = {}

    def record_vocabulary(**kwargs):
        received.update(kwargs)
        return "vocabulary"

    def record_registration(vocabulary, **kwargs):
        received.update(kwargs, vocabulary=vocabulary)
        raise StopIteration  # Recorded; registering the whole catalog is not the point.

    monkeypatch.setattr(registry, "get_catalog_vocabulary", record_vocabulary)
    monkeypatch.setattr(registry, "register_all", record_registration)
    no_demo = types.SimpleNamespace(register=lambda vocabulary: [])
    monkeypatch.setattr(
        registry, "demo", types.SimpleNamespace(FAMILY=no_demo, get_demo_vocabulary=lambda: None)
    )
    gin_flags.parse_gin(
        list(files),
        [
            "VOCABULARY_PATH = '/ckpt/spiece.model'",
            "ALLOW_DEMO_VOCABULARY = True",
            "FLAN_TASK_NAMES = True",
        ],
    )
    [register] = gin.query_parameter(parameter)
    with pytest.raises(StopIteration):
        register.scoped_configurable_fn()
    assert received == {
        "vocabulary_path": "/ckpt/spiece.model",
        "extra_ids": 100,
        "allow_demo_vocabulary": True,
        "vocabulary": "vocabulary",
        "flan_task_names": True,
    }


def test_the_demo_config_registers_only_the_demo_collection():
    from flan_jax.tasks import demo

    gin_flags.parse_gin(list(train_cli.DEMO_GIN_FILES), [])
    [register] = gin.query_parameter("trainer.train.register_tasks")
    assert register.configurable.wrapped is demo.register_demo_tasks


# Every command's shipped stack, with the macros its docs say to set: they pass the checks
# `flan-jax` runs before any work (no unread macro, no unset macro, values of the right type).
COMMAND_STACKS = (
    pytest.param(train_cli.DEMO_GIN_FILES, [], (), id="train-demo"),
    pytest.param(
        ("models/t5_1_1_small.gin", "runs/finetune.gin"),
        ["MODEL_DIR = '/tmp/run'", "MIXTURE_OR_TASK_NAME = 'x'"],
        (),
        id="train-finetune",
    ),
    pytest.param(
        ("models/t5_1_1_base.gin", "runs/finetune.gin", "runs/pretrain.gin"),
        ["MODEL_DIR = '/tmp/run'", "MIXTURE_OR_TASK_NAME = 'x'"],
        (),
        id="train-pretrain",
    ),
    pytest.param(
        ("models/t5_1_1_tiny.gin", "runs/finetune.gin", "runs/lora.gin"),
        ["MODEL_DIR = '/tmp/run'", "MIXTURE_OR_TASK_NAME = 'x'"],
        (),
        id="train-lora",
    ),
    pytest.param(
        ("runs/distill.gin",),
        ["STORE = '/s'", "STUDENT = '/c'", "MODEL_DIR = '/m'", "TRAIN_DATA = '/t'"],
        (),
        id="distill",
    ),
)


@pytest.mark.parametrize("files, bindings, used", COMMAND_STACKS)
def test_command_stacks_pass_the_checks(files, bindings, used):
    gin_flags.parse_and_check_gin(list(files), bindings, used_macros=used)


def test_infer_gin_macros_are_read_by_the_command():
    from flan_jax.cli import infer as infer_cli

    gin_flags.parse_and_check_gin(["runs/infer.gin"], [], used_macros=infer_cli.GIN_MACRO_FLAGS)


@pytest.mark.parametrize(
    "binding, message",
    [
        ("TRAIN_STPES = 5", "unknown gin macro TRAIN_STPES (set by --gin.TRAIN_STPES)"),
        ("TRAIN_STEPS = 'abc'", "train_steps expects int, got 'abc'"),
        ("BATCH_SIZE = True", "batch_size expects int, got True"),
        ("trainer.train.batch_size = %NOPE", "gin macro NOPE is used by"),
        ("TASK_FEATURE_LENGTHS = {'inputs': 'long'}", "task_feature_lengths expects"),
    ],
)
def test_checks_name_the_macro_and_what_was_expected(binding, message):
    with pytest.raises(gin_flags.ConfigError, match=re.escape(message)):
        gin_flags.parse_and_check_gin(list(train_cli.DEMO_GIN_FILES), [binding])


def test_a_macro_of_an_overridden_binding_is_not_unknown():
    # demo_cpu.gin rebinds EvalConfig.eval_period, which finetune.gin read from EVAL_PERIOD.
    gin_flags.parse_and_check_gin(list(train_cli.DEMO_GIN_FILES), ["EVAL_PERIOD = 5"])
