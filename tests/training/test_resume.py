"""Resume: N steps, a new process, N more steps == 2N uninterrupted steps.

The first leg runs in a subprocess (this file as a script), so the resumed leg starts from
nothing but the checkpoint directory. Parameters, optimizer statistics and the data
position must match the uninterrupted run exactly (up to 1e-6).
"""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import pytest

N_STEPS = 3


def train_tiny(model_dir: str, train_steps: int):
    """The run both legs share: tiny T5 with dropout on the demo mixture, checkpoint each step."""
    from flan_jax.models import t5
    from flan_jax.tasks import demo
    from flan_jax.testing.models import make_tiny_t5_config
    from flan_jax.training import checkpointing, metrics, task_eval, trainer

    return trainer.train(
        model_dir=model_dir,
        model=t5.T5Model(make_tiny_t5_config(vocab_size=1024)),
        mixture_or_task_name=demo.DEMO_MIXTURE,
        task_feature_lengths={"inputs": 64, "targets": 32},
        train_steps=train_steps,
        batch_size=4,
        learning_rate=1e-2,
        dropout_rate=0.1,
        register_tasks=[lambda: demo.register_demo_tasks(demo.get_demo_vocabulary())],
        # A small buffer so the resumed leg starts inside a later packing buffer.
        data_config=trainer.DataConfig(buffer_size=24),
        checkpoint_config=checkpointing.CheckpointConfig(period=1, keep=2, async_save=True),
        eval_config=task_eval.EvalConfig(teacher_forced=False, inference=False),
        metrics_config=metrics.MetricsConfig(log_period=1, tensorboard=False, progress_bar=False),
    )


def _read_data_state(model_dir: str, result):
    from flan_jax.tasks import demo
    from flan_jax.testing.models import make_tiny_t5_config
    from flan_jax.training import checkpointing

    manager = checkpointing.TrainCheckpointManager(
        model_dir,
        checkpointing.CheckpointConfig(),
        model_config=make_tiny_t5_config(vocab_size=1024),
        vocab_path=demo.get_demo_vocabulary().sentencepiece_model_file,
        extra_ids=0,
    )
    try:
        return manager.latest_step(), manager.read_data_state()
    finally:
        manager.close()


@pytest.mark.slow
def test_resumed_run_matches_uninterrupted(tmp_path):
    resumed_dir = str(tmp_path / "resumed")
    leg = subprocess.run(
        [sys.executable, __file__, resumed_dir, str(N_STEPS)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert leg.returncode == 0, leg.stderr[-3000:]

    resumed = train_tiny(resumed_dir, 2 * N_STEPS)
    straight_dir = str(tmp_path / "straight")
    straight = train_tiny(straight_dir, 2 * N_STEPS)

    assert int(resumed.state.step) == int(straight.state.step) == 2 * N_STEPS
    for name, a, b in [
        ("params", resumed.state.params, straight.state.params),
        ("opt_state", resumed.state.opt_state, straight.state.opt_state),
    ]:
        leaves_a = jax.tree_util.tree_leaves_with_path(a)
        leaves_b = jax.tree.leaves(b)
        assert len(leaves_a) == len(leaves_b)
        for (path, x), y in zip(leaves_a, leaves_b):
            np.testing.assert_allclose(
                np.asarray(x),
                np.asarray(y),
                rtol=1e-6,
                atol=1e-6,
                err_msg=f"{name}{jax.tree_util.keystr(path)}",
            )
    step_r, data_r = _read_data_state(resumed_dir, resumed)
    step_s, data_s = _read_data_state(straight_dir, straight)
    assert step_r == step_s == 2 * N_STEPS
    assert data_r == data_s
    assert data_r["batches"] == 2 * N_STEPS
    assert data_r["buffer_index"] > 0, "the run should cross a packing buffer boundary"


if __name__ == "__main__":
    train_tiny(sys.argv[1], int(sys.argv[2]))
