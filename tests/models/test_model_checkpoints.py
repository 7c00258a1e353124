"""The self-contained checkpoint directory: round trip and clear errors."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from flan_jax.checkpoints import CONFIG_FILENAME, load_model_checkpoint, save_model_checkpoint
from flan_jax.models import t5
from flan_jax.testing.models import make_tiny_t5_config, write_test_sentencepiece


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
    return write_test_sentencepiece(tmp_path_factory.mktemp("vocab"))


def test_save_then_load_restores_everything(tmp_path, vocab_path):
    config = make_tiny_t5_config(scan_layers=True, num_encoder_layers=2, num_decoder_layers=2)
    params = t5.init_params(config, jax.random.key(0))
    save_model_checkpoint(
        tmp_path / "ckpt", params=params, config=config, vocab_path=vocab_path, extra_ids=5, step=3
    )
    later = jax.tree_util.tree_map(lambda x: x + 1.0, params)
    save_model_checkpoint(
        tmp_path / "ckpt", params=later, config=config, vocab_path=vocab_path, extra_ids=5, step=7
    )
    loaded = load_model_checkpoint(tmp_path / "ckpt")
    assert loaded.step == 7 and loaded.config == config
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, later)
    first = load_model_checkpoint(tmp_path / "ckpt", step=3)
    jax.tree_util.tree_map(np.testing.assert_array_equal, first.params, params)
    assert loaded.vocabulary.extra_ids == 5
    ids = loaded.vocabulary.encode("the dog answers")
    assert loaded.vocabulary.decode(ids) == "the dog answers"
    assert (tmp_path / "ckpt" / "spiece.model").read_bytes() == vocab_path.read_bytes()


def test_missing_directory_and_config_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=f"{CONFIG_FILENAME} is missing"):
        load_model_checkpoint(tmp_path / "empty")


def test_malformed_config_and_missing_step_are_reported(tmp_path, vocab_path):
    config = make_tiny_t5_config()
    ckpt = tmp_path / "ckpt"
    save_model_checkpoint(
        ckpt,
        params=t5.init_params(config, jax.random.key(0)),
        config=config,
        vocab_path=vocab_path,
        extra_ids=0,
    )
    with pytest.raises(FileNotFoundError, match="no step 5"):
        load_model_checkpoint(ckpt, step=5)
    (ckpt / CONFIG_FILENAME).write_text("{not json")
    with pytest.raises(ValueError, match="malformed"):
        load_model_checkpoint(ckpt)


def test_config_that_does_not_match_the_weights_is_reported(tmp_path, vocab_path):
    config = make_tiny_t5_config()
    ckpt = tmp_path / "ckpt"
    save_model_checkpoint(
        ckpt,
        params=t5.init_params(config, jax.random.key(0)),
        config=config,
        vocab_path=vocab_path,
        extra_ids=0,
    )
    metadata = json.loads((ckpt / CONFIG_FILENAME).read_text())
    metadata["model"]["mlp_dim"] = 50
    (ckpt / CONFIG_FILENAME).write_text(json.dumps(metadata))
    with pytest.raises(
        ValueError,
        match=r"do not match the model config.*stored \(32, 64\), "
        r"config expects \(32, 50\)",
    ):
        load_model_checkpoint(ckpt)


def test_loads_params_from_a_step_with_trainer_items(tmp_path, vocab_path):
    import orbax.checkpoint as ocp

    config = make_tiny_t5_config()
    params = t5.init_params(config, jax.random.key(0))
    ckpt = tmp_path / "ckpt"
    save_model_checkpoint(ckpt, params=params, config=config, vocab_path=vocab_path, extra_ids=0)
    manager = ocp.CheckpointManager(ckpt)
    trained = jax.tree_util.tree_map(lambda x: x * 2.0, params)
    manager.save(
        9,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(trained),
            opt_state=ocp.args.StandardSave({"count": np.array(9)}),
        ),
    )
    manager.wait_until_finished()
    loaded = load_model_checkpoint(ckpt)
    assert loaded.step == 9
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded.params, trained)


def test_loading_reads_only_params_and_names_the_items_of_a_step_without_them(
    tmp_path, vocab_path, caplog
):
    import shutil

    import orbax.checkpoint as ocp

    from flan_jax.checkpoints import UnreadableCheckpointError

    config = make_tiny_t5_config()
    params = t5.init_params(config, jax.random.key(0))
    ckpt = tmp_path / "ckpt"
    save_model_checkpoint(ckpt, params=params, config=config, vocab_path=vocab_path, extra_ids=0)
    manager = ocp.CheckpointManager(ckpt)
    for step in (4, 5):
        manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave({"count": np.array(step)}),
                data_state=ocp.args.JsonSave({"served": step}),
            ),
        )
    manager.wait_until_finished()
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert load_model_checkpoint(ckpt).step == 5
    assert not caplog.records, [r.getMessage() for r in caplog.records]

    shutil.rmtree(ckpt / "5" / "params")
    with pytest.raises(UnreadableCheckpointError) as raised:
        load_model_checkpoint(ckpt)
    assert str(raised.value) == (
        f"checkpoint step 5 in {ckpt.absolute()} cannot be read (missing item params; items "
        "present: data_state, opt_state)"
    )
