"""The one training loop (`trainer.fit`): model and batch-source interfaces, non-finite steps,
and no device-to-host transfer between logging steps."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_jax.data import packing
from flan_jax.data.batch_source import BatchSource
from flan_jax.data.vocabularies import get_vocabulary
from flan_jax.models import decoding, registry, t5
from flan_jax.models.interface import Model
from flan_jax.testing import models as testing_models
from flan_jax.testing import training
from flan_jax.testing.models import make_tiny_t5_config
from flan_jax.training import checkpointing, losses, metrics, train_step, trainer

RUN = training.TinyRun(batch_size=4, num_steps=6)


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory):
    path = testing_models.write_test_sentencepiece(tmp_path_factory.mktemp("spiece"))
    return get_vocabulary(str(path), 0)


def _fit(
    model_dir,
    vocabulary,
    *,
    model=None,
    source=None,
    steps=RUN.num_steps,
    log_period=3,
    on_nonfinite="raise",
    loss=RUN.loss,
    checkpoint_period=100,
):
    model = model or t5.T5Model(make_tiny_t5_config())
    return trainer.fit(
        model=model,
        batch_source=source or training.SyntheticBatches(RUN),
        vocabulary=vocabulary,
        model_dir=str(model_dir),
        train_steps=steps,
        batch_size=RUN.batch_size,
        feature_lengths={"inputs": RUN.encoder_length, "targets": RUN.decoder_length},
        learning_rate=RUN.learning_rate,
        loss_config=loss,
        step_config=train_step.TrainStepConfig(on_nonfinite=on_nonfinite),
        checkpoint_config=checkpointing.CheckpointConfig(
            period=checkpoint_period, async_save=False
        ),
        metrics_config=metrics.MetricsConfig(
            log_period=log_period, tensorboard=False, progress_bar=False
        ),
    )


def _nan_batch():
    batch = RUN.make_batch(2)
    batch["decoder_loss_weights"] = batch["decoder_loss_weights"].copy()
    batch["decoder_loss_weights"][0, 0] = np.nan
    return batch


def test_synthetic_batches_are_a_batch_source():
    assert isinstance(training.SyntheticBatches(RUN), BatchSource)
    assert isinstance(t5.T5Model(make_tiny_t5_config()), Model)


@pytest.mark.parametrize("checkpoint_period", [1, 100])
def test_nonfinite_step_stops_the_run_at_the_logging_step_naming_it(
    tmp_path, vocabulary, checkpoint_period
):
    source = training.SyntheticBatches(RUN, overrides={2: _nan_batch()})
    with pytest.raises(trainer.NonFiniteError) as raised:
        _fit(tmp_path, vocabulary, source=source, checkpoint_period=checkpoint_period)
    message = str(raised.value)
    last = f"step 2 ({tmp_path / '2'})" if checkpoint_period == 1 else f"none yet in {tmp_path}"
    assert message.startswith(
        "training diverged: the loss or gradient was not finite at step 3 (loss nan, grad norm "
        f"nan, learning rate {RUN.learning_rate:.3g}); those updates were not applied and the "
        f"run stopped at step 3 (of steps 1-3). Last checkpoint: {last};"
    )
    for knob in ("--gin.LEARNING_RATE", "warmup_steps", "z_loss, now 0.0001", "on_nonfinite=skip"):
        assert knob in message
    assert len(message.splitlines()) == 1


def test_nonfinite_step_is_skipped_in_skip_mode(tmp_path, vocabulary):
    source = training.SyntheticBatches(RUN, overrides={2: _nan_batch()})
    result = _fit(tmp_path, vocabulary, source=source, on_nonfinite="skip")
    assert int(result.state.num_skipped_steps) == 1 and result.step == RUN.num_steps


def test_no_device_to_host_transfer_between_logging_steps(tmp_path, vocabulary, monkeypatch):
    # The guard is proven able to fail: the per-step read the old step did raises under it.
    with training.forbid_device_to_host_reads():
        for read in (int, float, jax.device_get, lambda x: x.item()):
            with pytest.raises(RuntimeError, match="device-to-host read"):
                read(jnp.ones(()) + 1)
    advance = trainer.advance
    calls = []

    def guarded_advance(*args, **kwargs):
        calls.append(args[-1])
        with training.forbid_device_to_host_reads():
            return advance(*args, **kwargs)

    monkeypatch.setattr(trainer, "advance", guarded_advance)
    result = _fit(tmp_path, vocabulary, steps=7, log_period=3)
    assert calls == [3, 3, 1]  # every step ran under the guard, in stretches between logs
    assert result.step == 7


@dataclasses.dataclass(frozen=True)
class ToyConfig:
    vocab_size: int = 128
    emb_dim: int = 16

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, *, source: str) -> ToyConfig:
        return cls(**values)


class _ToyNet(nn.Module):
    """One layer: the decoder token's embedding plus the mean encoder embedding, then a dense."""

    config: ToyConfig

    @nn.compact
    def __call__(self, encoder_tokens, decoder_tokens):
        embed = nn.Embed(
            self.config.vocab_size,
            self.config.emb_dim,
            name="embed",
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(1.0), ("vocab", "embed")
            ),
        )
        mask = (encoder_tokens > 0)[..., None]
        context = jnp.sum(embed(encoder_tokens) * mask, 1) / jnp.maximum(jnp.sum(mask, 1), 1)
        x = embed(decoder_tokens) + context[:, None, :]
        return nn.Dense(
            self.config.emb_dim,
            name="mix",
            kernel_init=nn.with_logical_partitioning(
                nn.initializers.lecun_normal(), ("embed", "mlp")
            ),
        )(x)


@dataclasses.dataclass(frozen=True)
class ToyModel:
    """A 1-layer model behind the Model interface, training and decode hooks both."""

    config: ToyConfig = ToyConfig()

    @property
    def vocab_size(self):
        return self.config.vocab_size

    @property
    def feature_format(self):
        return packing.EncoderDecoderFormat()

    def _boxed(self):
        dummy = jnp.ones((1, 2), jnp.int32)
        return _ToyNet(self.config).init(jax.random.key(0), dummy, dummy)["params"]

    def init_params(self, rng):
        dummy = jnp.ones((1, 2), jnp.int32)
        return nn.unbox(_ToyNet(self.config).init(rng, dummy, dummy)["params"])

    def abstract_params(self):
        return nn.unbox(jax.eval_shape(self._boxed))

    def param_logical_axes(self):
        return nn.get_partition_spec(jax.eval_shape(self._boxed))

    def hidden_states(self, params, batch, *, dropout_rng=None):
        return _ToyNet(self.config).apply(
            {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"]
        )

    def output_kernel(self, params):
        return params["embed"]["embedding"].T[: params["mix"]["kernel"].shape[1]]

    def train_flops_per_step(self, *, batch_size, feature_lengths):
        return 0.0

    def make_scoring_batch(self, inputs, targets):
        targets = jnp.asarray(targets)
        return {
            "encoder_input_tokens": jnp.asarray(inputs),
            "decoder_input_tokens": jnp.pad(targets[:, :-1], ((0, 0), (1, 0))),
            "decoder_target_tokens": targets,
            "decoder_loss_weights": (targets > 0).astype(jnp.float32),
        }

    # The next token depends on the last token and the inputs only, so the decode state is
    # the inputs themselves (no cache).
    def init_decode_state(self, params, inputs, *, max_decode_len):
        return jnp.asarray(inputs)

    def decode_step(self, params, state, tokens):
        batch = {"encoder_input_tokens": state, "decoder_input_tokens": tokens[:, None]}
        return (self.hidden_states(params, batch) @ self.output_kernel(params))[:, 0], state

    def reorder_decode_state(self, state, indices):
        return jnp.take(state, indices, axis=0)


def test_a_toy_model_trains_through_the_unchanged_trainer(tmp_path, vocabulary, monkeypatch):
    # A new family is one registry row: its checkpoints record and reload their kind.
    monkeypatch.setitem(registry.MODEL_KINDS, "toy", (ToyConfig, ToyModel))
    model = ToyModel()
    assert isinstance(model, Model)
    # The same two batches over and over: a model that learns drives the loss down.
    fixed = {i: RUN.make_batch(i % 2) for i in range(40)}
    loss = losses.LossConfig(z_loss=0.0, normalization="num_real_target_tokens")
    result = _fit(
        tmp_path,
        vocabulary,
        model=model,
        steps=40,
        log_period=40,
        loss=loss,
        source=training.SyntheticBatches(RUN, overrides=fixed),
    )
    params = jax.tree.map(np.asarray, result.state.params)
    fresh = model.init_params(jax.random.key(0))

    def batch_loss(p, batch):
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        logits = model.hidden_states(p, batch) @ model.output_kernel(p)
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, batch["decoder_target_tokens"][..., None], -1)[..., 0]
        return float(
            jnp.sum(nll * batch["decoder_loss_weights"]) / jnp.sum(batch["decoder_loss_weights"])
        )

    before = np.mean([batch_loss(fresh, fixed[i]) for i in range(2)])
    after = np.mean([batch_loss(params, fixed[i]) for i in range(2)])
    assert after < 0.7 * before, (before, after)
    # The loss the trainer logged over the 40 steps is in between: it trained on these batches.
    assert after < result.train_metrics["train/loss"] < before
    # And it saved a checkpoint the loop can resume from (params only differ by nothing).
    manager = checkpointing.TrainCheckpointManager(
        tmp_path,
        checkpointing.CheckpointConfig(),
        model_config=model.config,
        vocab_path=vocabulary.sentencepiece_model_file,
        extra_ids=0,
    )
    assert manager.latest_step() == 40
    manager.close()


def test_the_toy_model_decodes_and_scores_through_the_unchanged_inference_path():
    model = ToyModel()
    params = model.init_params(jax.random.key(1))
    inputs = RUN.make_batch(0)["encoder_input_tokens"][:3]

    def full_logits(decoder_tokens):  # teacher-forced over the whole prefix, no decode state
        batch = {"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_tokens}
        return model.hidden_states(params, batch) @ model.output_kernel(params)

    # Reference greedy decoding: re-run the prefix at every step and take the argmax.
    prefix = np.zeros((3, 1), np.int32)
    for _ in range(6):
        step = np.asarray(jnp.argmax(full_logits(prefix)[:, -1], -1), np.int32)
        prefix = np.concatenate([prefix, step[:, None]], axis=1)
    expected = prefix[:, 1:]
    done = np.cumsum(expected == 1, axis=1) - (expected == 1) > 0  # after the first EOS
    expected = np.where(done, 0, expected)
    got = decoding.greedy_decode(model, params, inputs, max_decode_len=6)
    np.testing.assert_array_equal(np.asarray(got.tokens), expected)
    # One beam without a length penalty is greedy search too.
    beam = decoding.beam_search(model, params, inputs, max_decode_len=6, num_beams=1, alpha=0.0)
    np.testing.assert_array_equal(np.asarray(beam.tokens)[:, 0], expected)

    targets = RUN.make_batch(0)["decoder_target_tokens"][:3]
    log_probs = jax.nn.log_softmax(full_logits(np.pad(targets[:, :-1], ((0, 0), (1, 0)))))
    chosen = np.take_along_axis(np.asarray(log_probs), targets[..., None], -1)[..., 0]
    np.testing.assert_allclose(
        np.asarray(decoding.score_targets(model, params, inputs, targets)),
        np.sum(np.where(targets > 0, chosen, 0.0), axis=1),
        rtol=1e-5,
    )
