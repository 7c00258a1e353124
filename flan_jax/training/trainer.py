"""The one training loop (:func:`fit`) and the seqio entry point (:func:`train`).

:func:`fit` trains any model behind :class:`flan_jax.models.interface.Model` on any
:class:`flan_jax.data.batch_source.BatchSource` with any registered token loss
(:mod:`flan_jax.training.losses`). ``flan-jax train`` (:func:`train`: a seqio task or
mixture, the T5 encoder-decoder) and ``flan-jax distill train``
(:func:`flan_jax.distill.train_student.train_student`: teacher top-k batches) are thin entry
points that build the three and call it. A run is a sequence of named phases:

1. :func:`initialize_distributed_run`: ``jax.distributed`` when a coordinator is configured
   (called by the entry points, before the batch source asks for its process index);
2. :func:`build_run`: mesh, logical rules, the optimizer (Adafactor or AdamW,
   :mod:`flan_jax.training.optimizers`, over the model's trainable parameters: all of
   them, or a LoRA model's adapters), train-state shardings and the jitted sharded step;
3. :func:`restore_or_init`: the latest checkpoint of ``model_dir`` if there is one (train
   state and data position), else the initial parameters, else fresh ones;
4. :func:`run_train_loop`: train steps, metrics every ``log_period`` steps, evaluation every
   ``eval_period`` steps, a checkpoint every ``period`` steps and after the last one.
   Between those events nothing is read back from the devices.

The gin run configs (``gin_configs/runs/*.gin``) bind ``train``'s arguments with the t5x
macro names (``MODEL_DIR``, ``MIXTURE_OR_TASK_NAME``, ...). The same files drive a laptop
CPU and a TPU pod; only the mesh sizes and the distributed flags change.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import optax
import seqio

from flan_jax.data import packing, pipeline, vocabularies
from flan_jax.data.batch_source import PACKING_EFFICIENCY, BatchSource
from flan_jax.errors import ConfigError, UserError
from flan_jax.evaluation import task_suite
from flan_jax.models import interface
from flan_jax.models.interface import Model
from flan_jax.training import (
    adafactor,
    checkpointing,
    losses,
    optimizers,
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
                raise ConfigError(
                    f"train: {name} must be a non-empty string; got {value!r}. Set the gin "
                    f"macro with --gin.{name.upper()}=..."
                )
        lengths = dict(self.task_feature_lengths or {})
        if set(lengths) != {"inputs", "targets"} or not all(
            isinstance(v, int) and v > 0 for v in lengths.values()
        ):
            raise ConfigError(
                "train: task_feature_lengths (TASK_FEATURE_LENGTHS) must be "
                "{'inputs': positive int, 'targets': positive int}; "
                f"got {self.task_feature_lengths!r}"
            )
        for name in ("train_steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(
                    f"train: {name} ({name.upper()}) must be a positive int; got {value!r}"
                )


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Input-pipeline options beyond the t5x macros.

    Attributes:
        pack: best-fit pack examples into rows (segment ids and positions).
        buffer_size: examples per packing buffer.
        split: the training split.
        loss_on_inputs: decoder-only models: put the loss on every real token (inputs
            too, as for pre-training text) instead of on the targets only (OPT-IML);
            an encoder-decoder model rejects it.
        input_pipeline: ``"seqio"`` (``tf.data``; resuming replays the stream),
            ``"grain"`` (the tasks' cached ArrayRecord shards, read by index; resuming
            reads nothing) or ``"auto"``: grain when ``USE_CACHED_TASKS`` is set and every
            task has ArrayRecord shards for the split, else seqio. A run resumes only with
            the pipeline it started with.
        cache_dirs: directories of offline task caches (``flan-jax data cache``) added to
            seqio's global cache dirs before the data is opened.
        export_dir: train on an ArrayRecord export of the mixture (``flan-jax data export
            --format arrayrecord``) through grain, instead of on its tasks.
    """

    pack: bool = True
    buffer_size: int = 1024
    split: str = "train"
    loss_on_inputs: bool = False
    input_pipeline: str = "auto"
    cache_dirs: Sequence[str] = ()
    export_dir: str | None = None

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise ConfigError(f"DataConfig.buffer_size must be >= 1; got {self.buffer_size}")
        if self.input_pipeline not in pipeline.INPUT_PIPELINES:
            raise ConfigError(
                f"DataConfig.input_pipeline must be one of {pipeline.INPUT_PIPELINES}; "
                f"got {self.input_pipeline!r}"
            )
        if isinstance(self.cache_dirs, str):
            raise ConfigError(
                f"DataConfig.cache_dirs must be a list of directories; got the string "
                f"{self.cache_dirs!r} (write [{self.cache_dirs!r}])"
            )


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
    """What :func:`fit` (and :func:`train`) return.

    Attributes:
        state: the final train state.
        step: the final step.
        train_metrics: the last logged training scalars.
        eval_metrics: the last evaluation's scalars (empty without evaluation).
        eval_history: ``(step, scalars)`` of every evaluation of this call, in order.
        model_dir: where the checkpoints are.
        packing_efficiency: share of real tokens in the batches served by this process
            (1.0 for batch sources that do not pack).
    """

    state: train_state.TrainState
    step: int
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    eval_history: list[tuple[int, dict[str, float]]]
    model_dir: str
    packing_efficiency: float


class NonFiniteError(UserError, FloatingPointError):
    """The run stopped at a step whose loss or gradient was not finite.

    Raised with ``TrainStepConfig.on_nonfinite="raise"``; the message names the step, its
    loss and gradient norm, the last checkpoint and the settings to change.
    """


EvalHook = Callable[[Any], Mapping[str, float]]
"""``params -> scalars``: an evaluation hook the loop calls every ``eval_period`` steps."""

InitialParams = interface.InitialParams
"""``(abstract_params, param_shardings) -> params``: where a fresh run's parameters come
from (e.g. a converted checkpoint); without one they are initialised from the seed."""


@dataclasses.dataclass
class _Run:
    """Everything built once per run (phase 2)."""

    model: Model
    mesh: jax.sharding.Mesh
    rules: partitioning.LogicalRules
    loss_config: losses.LossConfig
    optimizer: train_state.Optimizer
    abstract_state: train_state.TrainState
    shardings: train_state.TrainState
    step_fn: train_step.TrainStep


def initialize_distributed_run(config: PartitioningConfig) -> None:
    """Phase 1: starts ``jax.distributed`` when a coordinator is configured.

    Entry points call it before anything asks JAX for devices (batch sources do).
    """
    if config.coordinator_address == "auto":
        jax.distributed.initialize()
        return
    partitioning.initialize_distributed(
        config.coordinator_address, config.num_processes, config.process_id
    )


def get_task_vocabulary(mixture_or_task_name: str) -> seqio.Vocabulary:
    """The vocabulary of a task's ``targets`` feature (its file is copied into MODEL_DIR).

    A SentencePiece model or a Hugging Face ``tokenizer.json`` (``vocabularies.get_vocabulary``).
    """
    provider = seqio.get_mixture_or_task(mixture_or_task_name)
    vocabulary = provider.output_features["targets"].vocabulary
    try:
        vocabularies.vocabulary_file(vocabulary)
    except TypeError as error:
        raise ConfigError(f"{mixture_or_task_name}: {error}") from error
    return vocabulary


def check_vocab_fits(model: Model, vocabulary: seqio.Vocabulary, name: str) -> None:
    """Raises when the vocabulary has more ids than the model's output dimension."""
    if vocabulary.vocab_size > model.vocab_size:
        raise ConfigError(
            f"the vocabulary of {name} has {vocabulary.vocab_size} ids but the model's "
            f"vocab_size is {model.vocab_size}; set the model config's vocab_size to at "
            f"least {vocabulary.vocab_size} (a multiple of 128 is fastest)"
        )


def build_run(
    model: Model,
    *,
    learning_rate: float | optax.Schedule,
    optimizer_config: optimizers.OptimizerConfig,
    loss_config: losses.LossConfig,
    step_config: train_step.TrainStepConfig,
    partitioning_config: PartitioningConfig,
) -> _Run:
    """Phase 2: the mesh, optimizer, shardings and the compiled-on-first-call train step.

    The optimizer updates the model's trainable parameters
    (:func:`flan_jax.models.interface.get_trainable_mask`: all, or a LoRA model's
    adapters); the frozen ones stay in the state, placed and checkpointed like the rest.
    """
    mesh = partitioning.make_mesh(partitioning_config.mesh)
    rules = partitioning.get_logical_axis_rules(partitioning_config.rules)
    param_axes = model.param_logical_axes()
    optimizer = optimizers.make_optimizer(
        learning_rate,
        param_axes=param_axes,
        config=optimizer_config,
        trainable=interface.get_trainable_mask(model),
    )
    abstract_params = model.abstract_params()
    shardings = train_state.get_train_state_shardings(
        abstract_params, param_axes, optimizer, mesh, rules
    )
    abstract_state = jax.eval_shape(
        lambda p: train_state.create_train_state(p, optimizer), abstract_params
    )
    step_fn = train_step.make_train_step(
        model=model,
        optimizer=optimizer,
        loss_config=loss_config,
        mesh=mesh,
        rules=rules,
        state_shardings=shardings,
        config=step_config,
    )
    return _Run(model, mesh, rules, loss_config, optimizer, abstract_state, shardings, step_fn)


def _init_state(run: _Run, params: Any | None, seed: int) -> train_state.TrainState:
    """A step-0 state, sharded; fresh parameters from the seed when ``params`` is None."""
    if params is None:
        key = jax.random.key(seed)
        params = jax.jit(lambda: run.model.init_params(key), out_shardings=run.shardings.params)()
    create = jax.jit(
        lambda p: train_state.create_train_state(p, run.optimizer),
        in_shardings=(run.shardings.params,),
        out_shardings=run.shardings,
    )
    return create(params)


def _tell_user(message: str, level: int = logging.INFO) -> None:
    """Logs ``message``; process 0 also prints it to stderr when logging would hide it.

    The CLI leaves Python logging at WARNING, where a resume would otherwise go unsaid.
    """
    logging.log(level, message)
    if jax.process_index() == 0 and not logging.getLogger().isEnabledFor(level):
        print(message, file=sys.stderr, flush=True)


def restore_or_init(
    run: _Run,
    manager: checkpointing.TrainCheckpointManager,
    *,
    seed: int,
    initial_params: InitialParams | None = None,
) -> tuple[train_state.TrainState, dict[str, Any] | None]:
    """Phase 3: the train state and the data state to continue from.

    Resumes from the newest checkpoint step that can be read; newer unreadable steps are
    reported (and left on disk).

    Returns:
        ``(state, data_state)``; ``data_state`` is None when the run starts fresh.

    Raises:
        checkpointing.CheckpointError: if ``model_dir`` has steps but none can be read.
    """
    restored = manager.restore_newest_readable(run.abstract_state, run.shardings)
    if restored is not None:
        for error in restored.unreadable:
            _tell_user(f"{error}; resuming from step {restored.step}", logging.WARNING)
        checkpoint = manager.model_dir / str(restored.step)
        _tell_user(f"resuming from step {restored.step} (checkpoint {checkpoint})")
        return restored.state, restored.data_state
    params = None
    if initial_params is not None:
        params = initial_params(run.abstract_state.params, run.shardings.params)
    return _init_state(run, params, seed), None


@dataclasses.dataclass
class _LoopServices:
    """The side services of the train loop (checkpoints, metrics, evaluation)."""

    manager: checkpointing.TrainCheckpointManager
    writer: metrics_lib.MetricsWriter
    meter: metrics_lib.ThroughputMeter
    metrics_config: metrics_lib.MetricsConfig
    eval_period: int
    evaluator: EvalHook | None


def _run_eval(
    services: _LoopServices, state: train_state.TrainState, step: int
) -> dict[str, float]:
    if services.evaluator is None:
        return {}
    scalars = {k: float(v) for k, v in services.evaluator(state.params).items()}
    services.writer.write_scalars(step, scalars)
    logging.info(
        "step %d eval: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items()))
    )
    return scalars


def _format_steps(steps: Sequence[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"``."""
    ranges: list[list[int]] = []
    for step in steps:
        if ranges and step == ranges[-1][1] + 1:
            ranges[-1][1] = step
        else:
            ranges.append([step, step])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def _check_nonfinite(
    steps: Sequence[int],
    fetched: Sequence[Mapping[str, Any]],
    *,
    mode: str,
    manager: checkpointing.TrainCheckpointManager,
    loss_config: losses.LossConfig,
) -> None:
    """Acts on the steps whose loss or gradient was not finite (their updates were dropped).

    Raises:
        NonFiniteError: in ``"raise"`` mode, naming the first such step and what to change.
    """
    bad = [(step, m) for step, m in zip(steps, fetched) if int(m["nonfinite"])]
    if not bad:
        return
    span = f"of steps {steps[0]}-{steps[-1]}"
    if mode == "skip":
        logging.warning(
            "non-finite loss or gradient at step(s) %s (%s); their updates were not applied; "
            "skipping them (TrainStepConfig.on_nonfinite='skip')",
            _format_steps([step for step, _ in bad]),
            span,
        )
        return
    step, metrics = bad[0]
    others = f" (and at {_format_steps([s for s, _ in bad[1:]])})" if len(bad) > 1 else ""
    last = manager.latest_step()
    last_checkpoint = (
        f"step {last} ({manager.model_dir / str(last)})"
        if last is not None
        else f"none yet in {manager.model_dir}"
    )
    raise NonFiniteError(
        f"training diverged: the loss or gradient was not finite at step {step}{others} "
        f"(loss {float(metrics['loss']):.4g}, grad norm {float(metrics['grad_norm']):.4g}, "
        f"learning rate {float(metrics['learning_rate']):.3g}); those updates were not "
        f"applied and the run stopped at step {steps[-1]} ({span}). Last checkpoint: "
        f"{last_checkpoint}; a rerun resumes from it but diverges again unless a setting "
        "changes. Lower the learning rate (--gin.LEARNING_RATE), warm up longer (the "
        "schedule's warmup_steps), keep the z-loss on (losses.LossConfig.z_loss, now "
        f"{loss_config.z_loss:g}; t5x uses 1e-4), compute in float32 (the model's dtype), "
        "check the batches for rows without targets, or skip such steps with "
        "--gin.train_step.TrainStepConfig.on_nonfinite=skip."
    )


def advance(
    run: _Run, state: train_state.TrainState, source: BatchSource, num_steps: int
) -> tuple[train_state.TrainState, list[dict[str, jax.Array]]]:
    """Runs ``num_steps`` steps without reading anything back from the devices.

    Returns:
        The new state and the steps' metrics, still on device.
    """
    pending = []
    for _ in range(num_steps):
        batch = partitioning.make_global_batch(next(source), run.mesh, run.rules)
        state, step_metrics = run.step_fn(state, batch)
        pending.append(step_metrics)
    return state, pending


def _next_event(step: int, last: int, services: _LoopServices) -> int:
    """The next step after ``step`` at which the loop logs, saves or evaluates."""
    periods = [services.metrics_config.log_period, services.manager.config.period]
    if services.eval_period and services.evaluator is not None:
        periods.append(services.eval_period)
    return min([last] + [(step // p + 1) * p for p in periods])


def run_train_loop(
    run: _Run,
    state: train_state.TrainState,
    source: BatchSource,
    services: _LoopServices,
    *,
    train_steps: int,
) -> TrainResult:
    """Phase 4: trains until ``train_steps``, logging, evaluating and checkpointing.

    Between two events (a logging, checkpoint or evaluation step) the loop only dispatches
    steps (:func:`advance`); the metrics of those steps are fetched together at the next
    logging step, where non-finite steps are reported.
    """
    step, last = int(state.step), train_steps
    progress = metrics_lib.ProgressBar(
        start=step, total=last, enabled=services.metrics_config.progress_bar
    )
    train_scalars: dict[str, float] = {}
    eval_scalars: dict[str, float] = {}
    eval_history: list[tuple[int, dict[str, float]]] = []
    pending: list[dict[str, jax.Array]] = []
    services.meter.reset()
    log_period = services.metrics_config.log_period
    while step < last:
        target = _next_event(step, last, services)
        state, new_metrics = advance(run, state, source, target - step)
        pending += new_metrics
        logged = target % log_period == 0 or target == last
        if logged:
            fetched = jax.device_get(pending)
            _check_nonfinite(
                range(target - len(fetched) + 1, target + 1),
                fetched,
                mode=run.step_fn.config.on_nonfinite,
                manager=services.manager,
                loss_config=run.loss_config,
            )
            for item in fetched:
                services.meter.update(item)
            pending.clear()
            train_scalars = {**services.meter.summarize(), **source.log_scalars()}
            services.writer.write_scalars(target, train_scalars)
        progress.update(target - step, train_scalars if logged else None)
        step = target
        if services.manager.should_save(step, last_step=last):
            services.manager.save(state, source.get_state())
        if (
            services.eval_period
            and step % services.eval_period == 0
            and step != last
            and services.evaluator is not None
        ):
            eval_scalars = _run_eval(services, state, step)
            eval_history.append((step, eval_scalars))
    progress.close()
    if services.evaluator is not None:
        eval_scalars = _run_eval(services, state, last)
        eval_history.append((last, eval_scalars))
    services.manager.wait_until_finished()
    efficiency = source.log_scalars().get(PACKING_EFFICIENCY, 1.0)
    return TrainResult(
        state,
        last,
        train_scalars,
        eval_scalars,
        eval_history,
        str(services.manager.model_dir),
        efficiency,
    )


def fit(
    *,
    model: Model,
    batch_source: BatchSource,
    vocabulary: seqio.Vocabulary,
    model_dir: str,
    train_steps: int,
    batch_size: int,
    feature_lengths: Mapping[str, int],
    learning_rate: float | optax.Schedule = 1e-3,
    initial_params: InitialParams | None = None,
    seed: int = 0,
    optimizer_config: optimizers.OptimizerConfig = adafactor.AdafactorConfig(),
    loss_config: losses.LossConfig = losses.LossConfig(),
    step_config: train_step.TrainStepConfig = train_step.TrainStepConfig(),
    partitioning_config: PartitioningConfig = PartitioningConfig(),
    checkpoint_config: checkpointing.CheckpointConfig = checkpointing.CheckpointConfig(),
    metrics_config: metrics_lib.MetricsConfig = metrics_lib.MetricsConfig(),
    eval_period: int = 0,
    evaluator: EvalHook | None = None,
) -> TrainResult:
    """The one training loop: any :class:`Model`, any :class:`BatchSource`, any loss.

    Resumes ``model_dir`` (train state and data position) when it has checkpoints. Callers
    start ``jax.distributed`` first (:func:`initialize_distributed_run`).

    Args:
        model: the model (:mod:`flan_jax.models.interface`).
        batch_source: this process's rows of every global batch; positioned by the
            restored data state on resume.
        vocabulary: copied into ``model_dir`` so it is a self-contained checkpoint.
        model_dir: the checkpoint, metrics and TensorBoard directory.
        train_steps: the total number of steps (including those of a resumed run).
        batch_size: global rows per step (for throughput and MFU).
        feature_lengths: ``{"inputs": N, "targets": M}`` (for MFU).
        learning_rate: a constant or a schedule (:mod:`flan_jax.training.schedules`).
        initial_params: where a fresh run's parameters come from; None: from ``seed``.
        seed: parameter-initialisation seed.
        optimizer_config, loss_config, step_config, partitioning_config, checkpoint_config,
        metrics_config: the knobs, by topic.
        eval_period: evaluate every this many steps (0: only after the last step).
        evaluator: the evaluation hook; None: no evaluation.

    Returns:
        A :class:`TrainResult`.
    """
    run = build_run(
        model,
        learning_rate=learning_rate,
        optimizer_config=optimizer_config,
        loss_config=loss_config,
        step_config=step_config,
        partitioning_config=partitioning_config,
    )
    manager = checkpointing.TrainCheckpointManager(
        model_dir,
        checkpoint_config,
        model_config=model.config,
        vocab_path=vocabularies.vocabulary_file(vocabulary),
        extra_ids=vocabulary.extra_ids,
    )
    writer = metrics_lib.MetricsWriter(model_dir, tensorboard=metrics_config.tensorboard)
    try:
        state, data_state = restore_or_init(run, manager, seed=seed, initial_params=initial_params)
        if data_state is not None:
            batch_source.set_state(data_state)
        flops = model.train_flops_per_step(batch_size=batch_size, feature_lengths=feature_lengths)
        peak = metrics_config.peak_flops_per_device
        services = _LoopServices(
            manager,
            writer,
            metrics_lib.ThroughputMeter(flops, peak * jax.device_count() if peak else None),
            metrics_config,
            eval_period,
            evaluator,
        )
        return run_train_loop(run, state, batch_source, services, train_steps=train_steps)
    finally:
        writer.close()
        manager.close()


def make_data_iterator(
    config: RunConfig, data_config: DataConfig, *, feature_format: packing.FeatureFormat
) -> pipeline.TrainIterator:
    """This process's shard of a seqio task's or mixture's training batches.

    ``feature_format`` is the model's (``Model.feature_format``). Adds
    ``data_config.cache_dirs`` to seqio's global cache dirs first.
    """
    if data_config.cache_dirs:
        seqio.add_global_cache_dirs(list(data_config.cache_dirs))
    return pipeline.make_train_iterator(
        config.mixture_or_task_name,
        task_feature_lengths=config.task_feature_lengths,
        batch_size=config.batch_size,
        seed=config.seed,
        shard_index=jax.process_index(),
        num_shards=jax.process_count(),
        pack=data_config.pack,
        use_cached=config.use_cached_tasks,
        buffer_size=data_config.buffer_size,
        split=data_config.split,
        feature_format=feature_format,
        loss_on_inputs=data_config.loss_on_inputs,
        input_pipeline=data_config.input_pipeline,
        export_dir=data_config.export_dir,
    )


def _make_evaluator(
    model: Model,
    vocabulary: seqio.Vocabulary,
    config: RunConfig,
    eval_config: task_eval.EvalConfig,
) -> task_eval.Evaluator | None:
    if not (eval_config.teacher_forced or eval_config.inference):
        return None
    names = eval_config.tasks or (config.mixture_or_task_name,)
    if not task_suite.list_eval_tasks(names, eval_config.split):
        logging.info("no task of %s has split %r: no evaluation", names, eval_config.split)
        return None
    return task_eval.Evaluator(model, vocabulary, names, config.task_feature_lengths, eval_config)


def train(
    *,
    model_dir: str,
    model: Model,
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
    optimizer_config: optimizers.OptimizerConfig = adafactor.AdafactorConfig(),
    loss_config: losses.LossConfig = losses.LossConfig(),
    step_config: train_step.TrainStepConfig = train_step.TrainStepConfig(),
    partitioning_config: PartitioningConfig = PartitioningConfig(),
    checkpoint_config: checkpointing.CheckpointConfig = checkpointing.CheckpointConfig(),
    eval_config: task_eval.EvalConfig = task_eval.EvalConfig(),
    metrics_config: metrics_lib.MetricsConfig = metrics_lib.MetricsConfig(),
) -> TrainResult:
    """Trains a model on a seqio task or mixture through :func:`fit`; resumes ``model_dir``.

    Args:
        model_dir: ``MODEL_DIR``.
        model: ``MODEL``, any :class:`flan_jax.models.interface.Model` (the model gin files
            bind a ``T5Model`` of ``MODEL_CONFIG``).
        mixture_or_task_name: ``MIXTURE_OR_TASK_NAME``.
        task_feature_lengths: ``TASK_FEATURE_LENGTHS``.
        train_steps: ``TRAIN_STEPS`` (total, including steps of a resumed run).
        batch_size: ``BATCH_SIZE`` (global rows).
        learning_rate: ``LEARNING_RATE``: a constant or a schedule from
            :mod:`flan_jax.training.schedules`.
        dropout_rate: ``DROPOUT_RATE``; overrides ``model.config.dropout_rate`` if set.
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
    config = RunConfig(
        model_dir,
        mixture_or_task_name,
        dict(task_feature_lengths or {}),
        train_steps,
        batch_size,
        initial_checkpoint_path,
        use_cached_tasks,
        seed,
    )
    if dropout_rate is not None:
        model = interface.replace_config(model, dropout_rate=float(dropout_rate))
    initialize_distributed_run(partitioning_config)
    for register in register_tasks:
        register()
    vocabulary = get_task_vocabulary(mixture_or_task_name)
    check_vocab_fits(model, vocabulary, mixture_or_task_name)
    initial_params: InitialParams | None = None
    if initial_checkpoint_path:

        def initial_params(abstract_params: Any, shardings: Any) -> Any:
            logging.info("initial parameters from %s", initial_checkpoint_path)
            return checkpointing.load_initial_params(
                initial_checkpoint_path,
                model_config=model.config,
                abstract_params=abstract_params,
                shardings=shardings,
            )

        if isinstance(model, interface.AdaptedModel):  # the checkpoint holds the base model
            initial_params = model.initial_params_from_base(initial_params, seed=seed)

    return fit(
        model=model,
        batch_source=make_data_iterator(config, data_config, feature_format=model.feature_format),
        vocabulary=vocabulary,
        model_dir=model_dir,
        train_steps=train_steps,
        batch_size=batch_size,
        feature_lengths=config.task_feature_lengths,
        learning_rate=learning_rate,
        initial_params=initial_params,
        seed=seed,
        optimizer_config=optimizer_config,
        loss_config=loss_config,
        step_config=step_config,
        partitioning_config=partitioning_config,
        checkpoint_config=checkpoint_config,
        metrics_config=metrics_config,
        eval_period=eval_config.eval_period,
        evaluator=_make_evaluator(model, vocabulary, config, eval_config),
    )
