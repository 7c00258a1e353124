"""The training iterator in the decoder-only format: seqio reference, resume, counters."""

import json

import numpy as np
import pytest
import seqio

from flan_jax.data import packing, pipeline
from flan_jax.tasks import demo

LENGTHS = {"inputs": 128, "targets": 32}
TASK = "demo__nli__zs_opt"
PREFIX_LM = packing.DecoderOnlyFormat(start_token_id=0, prefix_lm=True)


@pytest.fixture(scope="module", autouse=True)
def demo_tasks(tmp_path_factory):
    vocabulary = demo.get_demo_vocabulary(str(tmp_path_factory.mktemp("vocab")))
    demo.register_demo_tasks(vocabulary)
    return vocabulary


def _iterator(**overrides):
    kwargs = dict(
        task_feature_lengths=LENGTHS,
        batch_size=4,
        seed=3,
        buffer_size=16,
        feature_format=PREFIX_LM,
    )
    kwargs.update(overrides)
    name = kwargs.pop("name", TASK)
    return pipeline.make_train_iterator(name, **kwargs)


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert set(a) == set(b)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_unpacked_batches_equal_seqio_prefix_lm_converter():
    ours = _take(_iterator(pack=False, batch_size=8), 3)
    reference = seqio.get_dataset(
        TASK,
        task_feature_lengths=LENGTHS,
        feature_converter=seqio.PrefixLMFeatureConverter(pack=False),
        dataset_split="train",
        shuffle=True,
        seed=3,
        num_epochs=None,
        shard_info=seqio.ShardInfo(0, 1),
        batch_size=8,
    ).as_numpy_iterator()
    for batch in ours:
        expected = next(reference)
        assert batch["decoder_target_tokens"].shape == (8, 160)
        real = batch["decoder_segment_ids"] > 0
        for name in ("decoder_target_tokens", "decoder_loss_weights", "decoder_causal_attention"):
            np.testing.assert_array_equal(batch[name], expected[name], err_msg=name)
        np.testing.assert_array_equal(
            np.where(real, batch["decoder_input_tokens"], 0),
            np.where(real, expected["decoder_input_tokens"], 0),
        )
        np.testing.assert_array_equal(real, expected["decoder_target_tokens"] > 0)


def test_resume_continues_the_exact_decoder_only_stream():
    uninterrupted = _take(_iterator(), 8)
    first = _iterator()
    head = _take(first, 4)
    state = json.loads(json.dumps(first.get_state()))
    assert state["buffer_index"] >= 1  # the resume lands inside a later buffer
    assert state["feature_format"] == {
        "kind": "decoder_only",
        "start_token_id": 0,
        "prefix_lm": True,
    }
    resumed = _iterator(state=state)
    _assert_same(uninterrupted, head + _take(resumed, 4))
    batch = uninterrupted[0]
    assert set(batch) == {*packing.DECODER_ONLY_FEATURES, packing.PREFIX_LM_FEATURE}
    assert (batch["decoder_segment_ids"].max(axis=1) > 1).any()  # really packed


def test_a_state_of_another_format_is_rejected():
    state = _iterator().get_state()
    with pytest.raises(ValueError, match="'feature_format' is .*decoder_only"):
        _iterator(feature_format=packing.EncoderDecoderFormat(), state=state)
    with pytest.raises(ValueError, match="'feature_format' is .*'prefix_lm': True"):
        _iterator(feature_format=packing.DecoderOnlyFormat(), state=state)
    with pytest.raises(ValueError, match="'loss_on_inputs' is False but this iterator has True"):
        _iterator(loss_on_inputs=True, state=state)
    with pytest.raises(ValueError, match="loss_on_inputs=True needs a decoder-only model"):
        _iterator(feature_format=packing.EncoderDecoderFormat(), loss_on_inputs=True)


def test_a_state_saved_before_feature_formats_resumes_an_encoder_decoder_run():
    t5_format = packing.EncoderDecoderFormat()
    first = _iterator(feature_format=t5_format)
    _take(first, 2)
    state = first.get_state()
    old_state = {k: v for k, v in state.items() if k not in ("feature_format", "loss_on_inputs")}
    _assert_same(_take(first, 2), _take(_iterator(feature_format=t5_format, state=old_state), 2))
    with pytest.raises(ValueError, match="'feature_format' is \\{'kind': 'encoder_decoder'\\}"):
        _iterator(state=old_state)


def test_stats_count_real_tokens_by_segment_ids():
    iterator = _iterator(loss_on_inputs=True)
    batches = _take(iterator, 3)
    real = sum(int(np.count_nonzero(b["decoder_segment_ids"])) for b in batches)
    segments = sum(
        len(set(row[row > 0].tolist())) for b in batches for row in b["decoder_segment_ids"]
    )
    stats = iterator.stats
    assert (stats.encoder_real, stats.encoder_total) == (0, 0)
    assert (stats.decoder_real, stats.decoder_total) == (real, 3 * 4 * 160)
    assert stats.efficiency == pytest.approx(real / (3 * 4 * 160), abs=1e-12)
    assert stats.examples == segments
    # With the loss on every token, the loss weights mark exactly the real tokens.
    for batch in batches:
        np.testing.assert_array_equal(
            batch["decoder_loss_weights"], batch["decoder_segment_ids"] > 0
        )


def test_eval_batches_in_the_decoder_only_format():
    names = demo.demo_eval_tasks()["arith"]
    examples = pipeline.make_eval_examples(
        names["unseen"], task_feature_lengths=LENGTHS, max_examples=5
    )
    batches = list(
        pipeline.make_eval_batches(
            examples, batch_size=4, task_feature_lengths=LENGTHS, feature_format=PREFIX_LM
        )
    )
    assert [real for _, real in batches] == [4, 1]
    last, _ = batches[-1]
    assert not last["decoder_segment_ids"][1:].any()  # padding rows
    example = examples[4]
    n_in, n_tgt = len(example["inputs"]), len(example["targets"])
    np.testing.assert_array_equal(
        last["decoder_target_tokens"][0, : n_in + n_tgt],
        np.concatenate([example["inputs"], example["targets"]]),
    )
    # The evaluation loss is that of the targets given the inputs.
    position = np.arange(160)
    np.testing.assert_array_equal(
        last["decoder_loss_weights"][0], (position >= n_in) & (position < n_in + n_tgt)
    )
