"""The training entry point: ``train(...)``, keyword-only and bound by gin from the outside.

A run is a sequence of named phases, each a function below:

1. :func:`initialize_distributed_run`: ``jax.distributed`` when a coordinator is configured;
2. :func:`build_run`: mesh, logical rules, model, Adafactor, train-state shardings and the
   jitted sharded train step;
3. :func:`restore_or_init`: the latest checkpoint of ``model_dir`` if there is one (train
   state and data position), else the initial checkpoint's parameters, else fresh ones;
4. :func:`run_train_loop`: batches from the resumable iterator, train steps, metrics every
   ``log_period`` steps, evaluation every ``eval_period`` steps, a checkpoint every
   ``period`` steps and after the last one.

The gin run configs (``gin_configs/runs/*.gin``) bind ``train``'s arguments with the t5x
macro names (``MODEL_DIR``, ``MIXTURE_OR_TASK_NAME``, ...). The same files drive a laptop
CPU and a TPU pod; only the mesh sizes and the distributed flags change.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import optax
import seqio

from flan_jax.data import pipeline
from flan_jax.models import t5
from flan_jax.models.config import T5Config
from flan_jax.training import (
    adafactor,
    checkpointing,
    losses,
    partitioning,
    task_eval,
    train_state,
    train_step,
)
from flan_jax.training import metrics as metrics_lib


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What a run trains on and for how long (the t5x macros).

    Attributes:
        model_dir: the checkpoint directory (``MODEL_DIR``); resumed if it has steps.
        mixture_or_task_name: a registered seqio task or mixture (``MIXTURE_OR_TASK_NAME``).
        task_feature_lengths: ``{"inputs": N, "targets": M}`` (``TASK_FEATURE_LENGTHS``).
        train_steps: the total number of steps, counted from step 0 of the run
            (``TRAIN_STEPS``).
        batch_size: global rows per step (``BATCH_SIZE``).
        initial_checkpoint_path: parameters to start from when ``model_dir`` is empty
            (``INITIAL_CHECKPOINT_PATH``), e.g. a converted HF checkpoint.
        use_cached_tasks: read the tasks' offline seqio caches (``USE_CACHED_TASKS``).
        seed: parameter-initialisation and data-shuffling seed.
    """

    model_dir: str
    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]
    train_steps: int
    batch_size: int
    initial_checkpoint_path: str | None = None
    use_cached_tasks: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("model_dir", "mixture_or_task_name"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(
                    f"train: {name} must be a non-empty string; got {value!r}. Set the gin "
                    f"macro with --gin.{name.upper()}=..."
                )
        lengths = dict(self.task_feature_lengths or {})
        if set(lengths) != {"inputs", "targets"} or not all(
            isinstance(v, int) and v > 0 for v in lengths.values()
        ):
            raise ValueError(
                "train: task_feature_lengths (TASK_FEATURE_LENGTHS) must be "
                f"{{'inputs': positive int, 'targets': positive int}}; got {self.task_feature_lengths!r}"
            )
        for name in ("train_steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"train: {name} ({name.upper()}) must be a positive int; got {value!r}"
                )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Input-pipeline options beyond the t5x macros.

    Attributes:
        pack: best-fit pack examples into rows (segment ids and positions).
        buffer_size: examples per packing buffer.
        split: the training split.
    """

    pack: bool = True
    buffer_size: int = 1024
    split: str = "train"

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ValueError(f"DataConfig.buffer_size must be >= 1; got {self.buffer_size}")


@dataclasses.dataclass(frozen=True)
class PartitioningConfig:
    """Mesh, sharding rules and multi-host settings.

    Attributes:
        mesh: sizes of the ``(data, fsdp, model)`` mesh.
        rules: a logical-axis rules preset (``"1d"``, ``"2d"``/``"fsdp"``).
        coordinator_address: ``host:port`` of process 0 for ``jax.distributed``; None for
            one process (on Cloud TPU, ``"auto"`` lets JAX discover the pod).
        num_processes: processes in the run (with a coordinator).
        process_id: this process's index (with a coordinator).
    """

    mesh: partitioning.MeshConfig = partitioning.MeshConfig()
    rules: str = "1d"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def __post_init__(self) -> None:
        partitioning.get_logical_axis_rules(self.rules)  # Raises for an unknown preset.


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        state: the final train state.
        step: the final step.
        train_metrics: the last logged training scalars.
        eval_metrics: the last evaluation's scalars (empty without evaluation).
        model_dir: where the checkpoints are.
        packing_efficiency: share of real tokens in the batches served by this process.
    """

    state: train_state.TrainState
    step: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    model_dir: str
    packing_efficiency: float


@dataclasses.dataclass
class _Run:
    """Everything built once per run (phase 2)."""

    config: RunConfig
    model_config: T5Config
    vocabulary: seqio.SentencePieceVocabulary
    mesh: jax.sharding.Mesh
    rules: partitioning.LogicalRules
    optimizer: train_state.Optimizer
    abstract_state: train_state.TrainState
    shardings: train_state.TrainState
    step_fn: train_step.TrainStep


def initialize_distributed_run(config: PartitioningConfig) -> None:
    """Phase 1: starts ``jax.distributed`` when a coordinator is configured."""
    if config.coordinator_address == "auto":
        jax.distributed.initialize()
        return
    partitioning.initialize_distributed(
        config.coordinator_address, config.num_processes, config.process_id
    )


def get_task_vocabulary(mixture_or_task_name: str) -> seqio.SentencePieceVocabulary:
    """The SentencePiece vocabulary of a task's ``targets`` feature (copied into MODEL_DIR)."""
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
    vocabulary = provider.output_features["targets"].vocabulary
    if not isinstance(vocabulary, seqio.SentencePieceVocabulary):
        raise ValueError(
            f"{mixture_or_task_name}: training needs a SentencePiece vocabulary (it is stored "
            f"in the checkpoint); the task uses {type(vocabulary).__name__}"
        )
    return vocabulary


def _check_vocab_fits(model_config: T5Config, vocabulary: seqio.Vocabulary, name: str) -> None:
    if vocabulary.vocab_size > model_config.vocab_size:
        raise ValueError(
            f"the vocabulary of {name} has {vocabulary.vocab_size} ids but the model's "
            f"vocab_size is {model_config.vocab_size}; set T5Config.vocab_size to at least "
            f"{vocabulary.vocab_size} (a multiple of 128 is fastest)"
        )


def build_run(
    config: RunConfig,
    model_config: T5Config,
    *,
    learning_rate: float | optax.Schedule,
    optimizer_config: adafactor.AdafactorConfig,
    loss_config: losses.LossConfig,
    step_config: train_step.TrainStepConfig,
    partitioning_config: PartitioningConfig,
) -> _Run:
    """Phase 2: the mesh, optimizer, shardings and the compiled-on-first-call train step."""
    vocabulary = get_task_vocabulary(config.mixture_or_task_name)
    _check_vocab_fits(model_config, vocabulary, config.mixture_or_task_name)
    mesh = partitioning.make_mesh(partitioning_config.mesh)
    rules = partitioning.get_logical_axis_rules(partitioning_config.rules)
    param_axes = t5.param_logical_axes(model_config)
    optimizer = adafactor.make_adafactor(
        learning_rate, param_axes=param_axes, config=optimizer_config
    )
    abstract_params = t5.abstract_params(model_config)
    shardings = train_state.get_train_state_shardings(
        abstract_params, param_axes, optimizer, mesh, rules
    )
    abstract_state = jax.eval_shape(
        lambda p: train_state.create_train_state(p, optimizer), abstract_params
    )
    step_fn = train_step.make_train_step(
        forward=train_step.make_encoder_decoder_forward(t5.EncoderDecoder(model_config)),
        output_kernel_fn=t5.output_kernel,
        optimizer=optimizer,
        loss_config=loss_config,
        mesh=mesh,
        rules=rules,
        state_shardings=shardings,
        config=step_config,
    )
    return _Run(config, model_config, vocabulary, mesh, rules, optimizer, abstract_state,
                shardings, step_fn)


def _init_state(run: _Run, params: Any | None) -> train_state.TrainState:
    """A step-0 state, sharded; fresh parameters from the seed when ``params`` is None."""
    if params is None:
        key = jax.random.key(run.config.seed)
        params = jax.jit(
            lambda: t5.init_params(run.model_config, key), out_shardings=run.shardings.params
        )()
    create = jax.jit(
        lambda p: train_state.create_train_state(p, run.optimizer),
        in_shardings=(run.shardings.params,),
        out_shardings=run.shardings,
    )
    return create(params)


def restore_or_init(
    run: _Run, manager: checkpointing.TrainCheckpointManager
) -> tuple[train_state.TrainState, dict[str, Any] | None]:
    """Phase 3: the train state and the data state to continue from.

    Returns:
        ``(state, data_state)``; ``data_state`` is None when the run starts fresh.
    """
    if manager.latest_step() is not None:
        restored = manager.restore(run.abstract_state, run.shardings)
        logging.info("resumed %s at step %d", manager.model_dir, restored.step)
        return restored.state, restored.data_state
    params = None
    if run.config.initial_checkpoint_path:
        params = checkpointing.load_initial_params(
            run.config.initial_checkpoint_path,
            model_config=run.model_config,
            abstract_params=run.abstract_state.params,
            shardings=run.shardings.params,
        )
        logging.info("initial parameters from %s", run.config.initial_checkpoint_path)
    return _init_state(run, params), None


def make_data_iterator(run: _Run, data_config: DataConfig,
                       data_state: Mapping[str, Any] | None) -> pipeline.TrainIterator:
    """This process's shard of the training batches, positioned at ``data_state``."""
    return pipeline.make_train_iterator(
        run.config.mixture_or_task_name,
        task_feature_lengths=run.config.task_feature_lengths,
        batch_size=run.config.batch_size,
        seed=run.config.seed,
        shard_index=jax.process_index(),
        num_shards=jax.process_count(),
        pack=data_config.pack,
        use_cached=run.config.use_cached_tasks,
        buffer_size=data_config.buffer_size,
        split=data_config.split,
        state=data_state,
    )


@dataclasses.dataclass
class _LoopServices:
    """The side services of the train loop (checkpoints, metrics, evaluation)."""

    manager: checkpointing.TrainCheckpointManager
    writer: metrics_lib.MetricsWriter
    meter: metrics_lib.ThroughputMeter
    metrics_config: metrics_lib.MetricsConfig
    eval_period: int
    evaluator: task_eval.Evaluator | None


def _run_eval(services: _LoopServices, state: train_state.TrainState, step: int) -> dict:
    if services.evaluator is None:
        return {}
    scalars = services.evaluator(state.params)
    services.writer.write_scalars(step, scalars)
    logging.info("step %d eval: %s", step,
                 ", ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items())))
    return scalars


def run_train_loop(
    run: _Run,
    state: train_state.TrainState,
    iterator: pipeline.TrainIterator,
    services: _LoopServices,
) -> TrainResult:
    """Phase 4: trains until ``train_steps``, logging, evaluating and checkpointing."""
    start, last = int(state.step), run.config.train_steps
    progress = metrics_lib.ProgressBar(start=start, total=last,
                                       enabled=services.metrics_config.progress_bar)
    train_scalars: dict[str, float] = {}
    eval_scalars: dict[str, float] = {}
    pending: list[dict[str, jax.Array]] = []
    services.meter.reset()
    for step in range(start + 1, last + 1):
        local = next(iterator)
        batch = partitioning.make_global_batch(local, run.mesh, run.rules)
        state, step_metrics = run.step_fn(state, batch)
        pending.append(step_metrics)
        if step % services.metrics_config.log_period == 0 or step == last:
            for item in pending:  # Fetching here, not every step, keeps the device busy.
                services.meter.update(item)
            pending.clear()
            train_scalars = services.meter.summarize()
            train_scalars["train/packing_efficiency"] = iterator.packing_efficiency
            services.writer.write_scalars(step, train_scalars)
        progress.update(train_scalars if step % services.metrics_config.log_period == 0
                        else None)
        if services.manager.should_save(step, last_step=last):
            services.manager.save(state, iterator.get_state())
        if services.eval_period and step % services.eval_period == 0 and step != last:
            eval_scalars = _run_eval(services, state, step)
    progress.close()
    eval_scalars = _run_eval(services, state, last)
    services.manager.wait_until_finished()
    return TrainResult(state, last, train_scalars, eval_scalars,
                       str(services.manager.model_dir), iterator.packing_efficiency)


def _make_evaluator(run: _Run, eval_config: task_eval.EvalConfig) -> task_eval.Evaluator | None:
    if not (eval_config.teacher_forced or eval_config.inference):
        return None
    names = eval_config.tasks or (run.config.mixture_or_task_name,)
    if not task_eval.list_eval_tasks(names, eval_config.split):
        logging.info("no task of %s has split %r: no evaluation", names, eval_config.split)
        return None
    return task_eval.Evaluator(run.model_config, run.vocabulary, names,
                               run.config.task_feature_lengths, eval_config)


def train(
    *,
    model_dir: str,
    model_config: T5Config,
    mixture_or_task_name: str,
    task_feature_lengths: Mapping[str, int],
    train_steps: int,
    batch_size: int,
    learning_rate: float | optax.Schedule = 1e-3,
    dropout_rate: float | None = None,
    initial_checkpoint_path: str | None = None,
    use_cached_tasks: bool = False,
    seed: int = 0,
    register_tasks: Sequence[Callable[[], Any]] = (),
    data_config: DataConfig = DataConfig(),
    optimizer_config: adafactor.AdafactorConfig = adafactor.AdafactorConfig(),
    loss_config: losses.LossConfig = losses.LossConfig(),
    step_config: train_step.TrainStepConfig = train_step.TrainStepConfig(),
    partitioning_config: PartitioningConfig = PartitioningConfig(),
    checkpoint_config: checkpointing.CheckpointConfig = checkpointing.CheckpointConfig(),
    eval_config: task_eval.EvalConfig = task_eval.EvalConfig(),
    metrics_config: metrics_lib.MetricsConfig = metrics_lib.MetricsConfig(),
) -> TrainResult:
    """Trains a T5 encoder-decoder on a seqio task or mixture; resumes ``model_dir``.

    Args:
        model_dir: ``MODEL_DIR``.
        model_config: the architecture (from ``gin_configs/models/*.gin``).
        mixture_or_task_name: ``MIXTURE_OR_TASK_NAME``.
        task_feature_lengths: ``TASK_FEATURE_LENGTHS``.
        train_steps: ``TRAIN_STEPS`` (total, including steps of a resumed run).
        batch_size: ``BATCH_SIZE`` (global rows).
        learning_rate: ``LEARNING_RATE``: a constant or a schedule from
            :mod:`flan_jax.training.schedules`.
        dropout_rate: ``DROPOUT_RATE``; overrides ``model_config.dropout_rate`` if set.
        initial_checkpoint_path: ``INITIAL_CHECKPOINT_PATH``.
        use_cached_tasks: ``USE_CACHED_TASKS``.
        seed: initialisation and data seed.
        register_tasks: callables that register the seqio tasks the run reads (for
            example the demo collection's), called first.
        data_config, optimizer_config, loss_config, step_config, partitioning_config,
        checkpoint_config, eval_config, metrics_config: the other knobs, by topic.

    Returns:
        A :class:`TrainResult`.
    """
    config = RunConfig(model_dir, mixture_or_task_name, dict(task_feature_lengths or {}),
                       train_steps, batch_size, initial_checkpoint_path, use_cached_tasks, seed)
    if dropout_rate is not None:
        model_config = model_config.replace(dropout_rate=float(dropout_rate))
    initialize_distributed_run(partitioning_config)
    for register in register_tasks:
        register()
    run = build_run(config, model_config, learning_rate=learning_rate,
                    optimizer_config=optimizer_config, loss_config=loss_config,
                    step_config=step_config, partitioning_config=partitioning_config)
    manager = checkpointing.TrainCheckpointManager(
        model_dir, checkpoint_config, model_config=model_config,
        vocab_path=run.vocabulary.sentencepiece_model_file,
        extra_ids=run.vocabulary.extra_ids)
    writer = metrics_lib.MetricsWriter(model_dir, tensorboard=metrics_config.tensorboard)
    try:
        state, data_state = restore_or_init(run, manager)
        iterator = make_data_iterator(run, data_config, data_state)
        flops = metrics_lib.estimate_train_flops_per_step(
            model_config, batch_size=batch_size,
            inputs_length=config.task_feature_lengths["inputs"],
            targets_length=config.task_feature_lengths["targets"])
        peak = metrics_config.peak_flops_per_device
        services = _LoopServices(
            manager, writer,
            metrics_lib.ThroughputMeter(flops, peak * jax.device_count() if peak else None),
            metrics_config, eval_config.eval_period, _make_evaluator(run, eval_config))
        return run_train_loop(run, state, iterator, services)
    finally:
        writer.close()
        manager.close()

