"""Two jax.distributed processes (2 CPU devices each) train like one 4-device process."""

import pathlib

import numpy as np
import pytest

from flan_jax.testing import training

HERE = pathlib.Path(__file__).parent
MESH = "2,1,2,2d"  # data spans the two processes, model stays inside each
STEPS = 3


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    single_dir = tmp_path / "single"
    multi_dir = tmp_path / "multi"
    single_dir.mkdir()
    multi_dir.mkdir()
    reference = training.start_python_script(
        str(HERE / "run_sharded_training.py"),
        ["--out", str(single_dir), "--steps", str(STEPS), f"single={MESH}"],
        num_cpu_devices=4,
    )
    training.wait_for_scripts([reference], timeout=300)
    coordinator = f"127.0.0.1:{training.find_free_port()}"
    workers = [
        training.start_python_script(
            str(HERE / "run_multiprocess_training.py"),
            [
                "--coordinator",
                coordinator,
                "--num_processes",
                "2",
                "--process_id",
                str(i),
                "--out",
                str(multi_dir),
                "--mesh",
                MESH,
                "--steps",
                str(STEPS),
            ],
            num_cpu_devices=2,
        )
        for i in range(2)
    ]
    training.wait_for_scripts(workers, timeout=300)
    expected = dict(np.load(single_dir / "single.npz"))
    result = dict(np.load(multi_dir / "result.npz"))
    assert expected["loss"].shape == (STEPS,)
    training.assert_results_match(result, expected, rtol=1e-5)
