"""Checkpoint faults: a run killed at each point of a save, and an unreadable latest step.

A run is SIGKILLed (in a subprocess: this file as a script) at each of the save events of
``checkpointing.SAVE_EVENTS`` of one step, through the checkpoint manager's save hook, so
the kill lands at a known point of the write rather than after a guessed delay. The
restarted run must resume from the newest complete step and end with exactly the
parameters and optimizer state of a run that was never interrupted. A truncated latest
step must be reported by step and item, passed over (not deleted), and the run resumed
from the step before it must equal the uninterrupted run too.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from flan_jax import checkpoints
from flan_jax.data.vocabularies import get_vocabulary
from flan_jax.models import t5
from flan_jax.testing import models as testing_models
from flan_jax.testing import training
from flan_jax.training import checkpointing, metrics, trainer

RUN = training.TinyRun(batch_size=2, num_steps=4)
KILL_STEP = 3
# The newest complete step after a kill at each save event of KILL_STEP.
NEWEST_COMPLETE = {"directory_created": 2, "items_written": 2, "committed": 3}


def fit(model_dir: str | Path, vocabulary, *, train_steps: int = RUN.num_steps):
    """The run every leg shares: tiny T5, synthetic batches, an async checkpoint each step."""
    return trainer.fit(
        model=t5.T5Model(testing_models.make_tiny_t5_config()),
        batch_source=training.SyntheticBatches(RUN),
        vocabulary=vocabulary,
        model_dir=str(model_dir),
        train_steps=train_steps,
        batch_size=RUN.batch_size,
        feature_lengths={"inputs": RUN.encoder_length, "targets": RUN.decoder_length},
        learning_rate=RUN.learning_rate,
        checkpoint_config=checkpointing.CheckpointConfig(period=1, keep=None, async_save=True),
        metrics_config=metrics.MetricsConfig(log_period=1, tensorboard=False, progress_bar=False),
    )


def _kill_at(event: str, step: int, seen_event: str, seen_step: int) -> None:
    if (seen_event, seen_step) == (event, step):
        os.kill(os.getpid(), signal.SIGKILL)


def _run_and_kill(model_dir: str, vocab_dir: str, event: str) -> None:
    """Script mode: trains, SIGKILLing this process at ``event`` of step KILL_STEP's save."""
    hook = functools.partial(_kill_at, event, KILL_STEP)
    checkpointing.TrainCheckpointManager = functools.partial(  # type: ignore[misc]
        checkpointing.TrainCheckpointManager, save_hook=hook
    )
    fit(model_dir, _vocabulary(Path(vocab_dir)))


def _vocabulary(directory: Path):
    return get_vocabulary(str(testing_models.write_test_sentencepiece(directory)), 0)


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("spiece")


@pytest.fixture(scope="module")
def vocabulary(vocab_dir):
    return _vocabulary(vocab_dir)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, vocabulary):
    return fit(tmp_path_factory.mktemp("uninterrupted"), vocabulary).state


def assert_states_equal(state, reference):
    assert int(state.step) == int(reference.step)
    for name in ("params", "opt_state"):
        got = jax.tree_util.tree_leaves_with_path(getattr(state, name))
        want = jax.tree.leaves(getattr(reference, name))
        assert len(got) == len(want)
        for (path, a), b in zip(got, want):
            np.testing.assert_array_equal(
                np.asarray(a), np.asarray(b), err_msg=f"{name}{jax.tree_util.keystr(path)}"
            )


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory, vocab_dir):
    """One directory per save event, each left by a run SIGKILLed at that event."""
    root = tmp_path_factory.mktemp("killed")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    processes = {
        event: subprocess.Popen(
            [sys.executable, __file__, str(root / event), str(vocab_dir), event],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for event in checkpointing.SAVE_EVENTS
    }
    for event, process in processes.items():
        output = process.communicate(timeout=600)[0]
        assert process.returncode == -signal.SIGKILL, f"{event}: not killed:\n{output[-3000:]}"
    return root


def test_save_events_cover_the_write_in_order():
    assert checkpointing.SAVE_EVENTS == ("directory_created", "items_written", "committed")
    assert set(NEWEST_COMPLETE) == set(checkpointing.SAVE_EVENTS)


@pytest.mark.slow
@pytest.mark.parametrize("event", checkpointing.SAVE_EVENTS)
def test_run_killed_during_a_save_resumes_from_the_newest_complete_step(
    event, killed_runs, vocabulary, uninterrupted, capsys, caplog
):
    model_dir = killed_runs / event
    expected = NEWEST_COMPLETE[event]
    assert checkpoints.list_steps(model_dir) == list(range(1, expected + 1))
    # The kill landed where the hook says: mid-write, the step's items are (or are not yet)
    # in its temporary directory, which a restore never sees.
    pending = [p for p in model_dir.iterdir() if p.name.startswith(f"{KILL_STEP}.")]
    if event == "committed":
        assert not pending
    else:
        (tmp_dir,) = pending
        written = checkpoints.list_step_items(tmp_dir)
        assert written == ([] if event == "directory_created" else sorted(checkpointing.ITEMS))

    resumed = fit(model_dir, vocabulary)

    err = capsys.readouterr().err + caplog.text  # warnings are logged, the rest printed
    assert f"resuming from step {expected} (checkpoint {model_dir / str(expected)})" in err
    assert "cannot be read" not in err
    assert_states_equal(resumed.state, uninterrupted)
    assert checkpoints.list_steps(model_dir) == list(range(1, RUN.num_steps + 1))


def _truncate_item(model_dir: Path, step: int, item: str) -> None:
    for path in (model_dir / str(step) / item).rglob("*"):
        if path.is_file() and path.parent.name == "d":  # the array data files
            os.truncate(path, 10)


@pytest.mark.slow
def test_truncated_latest_step_falls_back_to_the_previous_step(
    tmp_path, vocabulary, uninterrupted, capsys, caplog
):
    model_dir = tmp_path / "run"
    fit(model_dir, vocabulary, train_steps=3)
    _truncate_item(model_dir, 3, checkpointing.PARAMS_ITEM)
    capsys.readouterr()
    caplog.clear()

    resumed = fit(model_dir, vocabulary)

    err = capsys.readouterr().err + caplog.text  # warnings are logged, the rest printed
    assert f"checkpoint step 3 in {model_dir} cannot be read (item params: " in err
    assert "; resuming from step 2\n" in err
    assert f"resuming from step 2 (checkpoint {model_dir / '2'})" in err
    assert "Traceback" not in err and "Event loop is closed" not in err
    assert_states_equal(resumed.state, uninterrupted)
    # The unreadable step is still there, untouched; the later steps were saved.
    assert checkpoints.list_steps(model_dir) == [1, 2, 3, 4]
    with pytest.raises(checkpoints.UnreadableCheckpointError, match="step 3 .*item params"):
        checkpoints.load_model_checkpoint(model_dir, step=3)

    # When no step reads, one error names the directory and every step's reason.
    for step in (1, 2, 4):
        shutil.rmtree(model_dir / str(step) / checkpointing.STEP_ITEM)
    with pytest.raises(checkpointing.CheckpointError) as raised:
        fit(model_dir, vocabulary)
    message = str(raised.value)
    assert message.startswith(f"no checkpoint step in {model_dir} can be read (step 4: missing")
    assert "step 3: item params: " in message and "step 1: missing item step" in message
    assert "Nothing was deleted" in message and len(message.splitlines()) == 1


if __name__ == "__main__":
    _run_and_kill(*sys.argv[1:4])
