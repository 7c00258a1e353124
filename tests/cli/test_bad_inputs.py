"""The bad-input catalog: every `flan-jax` command given wrong or hostile input.

Each row of CASES is one command line (with `{dir}` the prepared input directory and `{ro}`
a directory that cannot be written) and the text that must name the culprit. Each case
must exit with status 2, print that text on stderr with no traceback, build no model, and
leave every file that existed before unchanged. Adding a case is adding a row.

The cases run in this process through `flan_jax.cli.main.main`; the two that are about
what TensorFlow prints from C++ (before Python sees it) run in a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flan_jax.cli import main as cli
from flan_jax.models import t5

DEMO_STACK = (
    "--gin_file=models/t5_1_1_tiny.gin",
    "--gin_file=runs/finetune.gin",
    "--gin_file=runs/demo_cpu.gin",
)
GOOD_LINE = {"inputs": "2 + 3 =", "targets": "5", "question": "2 + 3?", "answer": "5"}
INFER = ("infer", "--checkpoint", "{dir}/empty", "--output_file", "{dir}/new/out.jsonl")
INFER_GOOD = (*INFER, "--input_file", "{dir}/good.jsonl")
SCORE_GOOD = (
    "score",
    "--checkpoint",
    "{dir}/empty",
    "--output_file",
    "{dir}/new/s.jsonl",
    "--input_file",
    "{dir}/good.jsonl",
)
EXPORT = ("data", "export", "--mixture", "demo_mixture", "--max_examples", "4")
SELECT = ("distill", "select", "--checkpoint_dir", "{dir}/empty", "--dev", "gsm8k")
EVAL = ("eval", "--checkpoint", "{dir}/empty", "--out", "{dir}/new/eval")
GENERATE = ("distill", "generate", "--teacher", "{dir}/empty", "--out", "{dir}/new/store")
SYNTHESIZE = ("synthesize", "--synthesizer", "{dir}/empty", "--out", "{dir}/new/synth")
SYNTHESIZE += ("--rounds", "2", "--pairs_per_text", "3")
SYNTHESIZE_GOOD = (*SYNTHESIZE, "--input", "{dir}/texts.jsonl")

# A fourth item marks a case whose error comes after the (cheap) T5Model object was built,
# though before any JAX work.
BUILDS_THE_MODEL_FIRST = "builds the model first"

# (id, argv, text the message must contain[, BUILDS_THE_MODEL_FIRST])
CASES = [
    # --- the inputs of issue 11 ---
    ("train-unknown-macro", ("train", "--gin.NO_SUCH_MACRO=1"), "NO_SUCH_MACRO"),
    ("train-misspelt-macro", ("train", "--gin.TRAIN_STPES=10"), "did you mean TRAIN_STEPS"),
    ("train-macro-not-int", ("train", "--gin.TRAIN_STEPS=abc"), "TRAIN_STEPS"),
    ("infer-batch-size-0", (*INFER_GOOD, "--batch_size", "0"), "--batch_size"),
    ("infer-max-decode-len-neg", (*INFER_GOOD, "--max_decode_len", "-1"), "--max_decode_len"),
    ("infer-not-utf8", (*INFER, "--input_file", "{dir}/latin1.jsonl"), "latin1.jsonl:2"),
    ("export-read-only", (*EXPORT, "--out", "{ro}/export"), "{ro}"),
    # --- train / eval / distill train: gin ---
    (
        "train-unused-macro-in-file",
        ("train", *DEMO_STACK, "--gin_file={dir}/typo.gin"),
        "typo.gin:2",
    ),
    ("train-misspelt-param", ("train", "--gin.trainer.train.train_stpes=3"), "mean train_steps"),
    ("train-unknown-configurable", ("train", "--gin.trainer.trian.batch_size=3"), "trian"),
    ("train-missing-gin-file", ("train", "--gin_file=no/such.gin"), "no/such.gin"),
    ("train-gin-syntax", ("train", "--gin_file={dir}/syntax.gin"), "syntax.gin"),
    ("train-binding-without-value", ("train", "--gin.MODEL_DIR"), "--gin.MODEL_DIR"),
    ("train-gin-file-without-path", ("train", "--gin_file"), "--gin_file"),
    ("train-stray-argument", ("train", "--gin.TRAIN_STEPS=5", "extra"), "extra"),
    (
        "train-required-macro-unset",
        ("train", "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/finetune.gin"),
        "--gin.MODEL_DIR",
    ),
    (
        "train-no-vocabulary",
        ("train", "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/finetune.gin")
        + ("--gin.MODEL_DIR={dir}/new/run", "--gin.MIXTURE_OR_TASK_NAME=demo_mixture"),
        "--gin.VOCABULARY_PATH",
        BUILDS_THE_MODEL_FIRST,  # trainer.train registers the tasks after gin built MODEL
    ),
    ("train-batch-size-float", ("train", "--gin.BATCH_SIZE=2.5"), "BATCH_SIZE"),
    ("train-lengths-not-dict", ("train", "--gin.TASK_FEATURE_LENGTHS=5"), "TASK_FEATURE_LENGTHS"),
    ("train-dropout-out-of-range", ("train", "--gin.DROPOUT_RATE=1.5"), "dropout_rate"),
    (
        "train-loss-normalization",
        ("train", "--gin.losses.LossConfig.normalization='x'"),
        "normalization",
    ),
    ("train-mesh-axis-0", ("train", "--gin.partitioning.MeshConfig.model=0"), "MeshConfig.model"),
    ("train-macro-never-set", ("train", "--gin.trainer.train.batch_size=%NOPE"), "NOPE"),
    (
        "train-checkpoint-period-0",
        ("train", *DEMO_STACK, "--gin.checkpointing.CheckpointConfig.period=0"),
        "CheckpointConfig.period",
    ),
    (
        "train-buffer-size-negative",
        ("train", *DEMO_STACK, "--gin.trainer.DataConfig.buffer_size=-3"),
        "DataConfig.buffer_size",
    ),
    # --- eval: suites, data and flags, all before any checkpoint is read ---
    (
        "eval-missing-data",
        (*EVAL, "--suite", "math:gsm8k", "--data_root", "{dir}/no_data"),
        "{dir}/no_data/gsm8k/test.jsonl",
    ),
    ("eval-unknown-suite", (*EVAL, "--suite", "flan_t6"), "flan_t6"),
    ("eval-unknown-setting", (*EVAL, "--suite", "flan_t5:bbh_cott"), "bbh_cott"),
    ("eval-max-examples-0", (*EVAL, "--suite", "math", "--max_examples", "0"), "--max_examples"),
    ("eval-dtype", (*EVAL, "--suite", "math", "--dtype", "float16"), "--dtype"),
    (
        "eval-not-a-checkpoint",
        (*EVAL, "--suite", "flan_t5:mgsm_cot/de", "--data_root", "{dir}/shared"),
        "{dir}/empty",
    ),
    (
        "distill-train-misspelt-macro",
        ("distill", "train", "--gin_file=runs/distill.gin", "--gin.STUDNET=x"),
        "STUDNET",
    ),
    # --- infer / score: flags and files ---
    ("infer-top-p", (*INFER_GOOD, "--top_p", "1.5"), "--top_p"),
    ("infer-temperature-text", (*INFER_GOOD, "--temperature", "hot"), "--temperature"),
    ("infer-num-beams-0", (*INFER_GOOD, "--num_beams", "0"), "--num_beams"),
    ("infer-step-negative", (*INFER_GOOD, "--step", "-2"), "--step"),
    ("infer-bad-json", (*INFER, "--input_file", "{dir}/bad.jsonl"), "bad.jsonl:2"),
    ("infer-not-an-object", (*INFER, "--input_file", "{dir}/list.jsonl"), "list.jsonl:1"),
    ("infer-missing-input", (*INFER, "--input_file", "{dir}/none.jsonl"), "none.jsonl"),
    ("infer-not-a-checkpoint", INFER_GOOD, "{dir}/empty"),
    (
        "infer-output-read-only",
        ("infer", "--checkpoint", "{dir}/empty", "--input_file", "{dir}/good.jsonl")
        + ("--output_file", "{ro}/out.jsonl"),
        "{ro}",
    ),
    ("infer-unknown-flag", (*INFER_GOOD, "--beams", "2"), "--beams"),
    (
        "infer-gin-misspelt-macro",
        ("infer", "--gin_file=runs/infer.gin", "--gin.MAX_DECOD_LEN=5"),
        "did you mean MAX_DECODE_LEN",
    ),
    (
        "infer-gin-bad-value",
        ("infer", "--gin_file=runs/infer.gin", "--gin.BATCH_SIZE=0", "--gin.CHECKPOINT_PATH=x")
        + ("--gin.INPUT_FILE=x", "--gin.OUTPUT_FILE=y"),
        "--batch_size",
    ),
    ("score-max-target-len-0", (*SCORE_GOOD, "--max_target_len", "0"), "--max_target_len"),
    (
        "score-field-not-string",
        ("score", "--checkpoint", "{dir}/empty", "--output_file", "{dir}/new/s.jsonl")
        + ("--input_file", "{dir}/no_targets.jsonl"),
        "no_targets.jsonl:1: field 'targets'",
    ),
    ("score-not-a-checkpoint", SCORE_GOOD, "flan_jax_config.json"),
    (
        "infer-malformed-checkpoint-config",
        ("infer", "--checkpoint", "{dir}/bad_config", "--input_file", "{dir}/good.jsonl")
        + ("--output_file", "{dir}/new/out.jsonl"),
        "bad_config/flan_jax_config.json: malformed",
    ),
    # --- convert ---
    ("convert-not-hf-dir", ("convert", "--from-hf", "{dir}/empty", "--out", "{dir}/c"), "config"),
    (
        "convert-hf-config-without-t5-fields",
        ("convert", "--from-hf", "{dir}/hf_partial", "--out", "{dir}/new/c"),
        "missing T5 field",
    ),
    (
        "convert-not-a-checkpoint",
        ("convert", "--to-hf", "{dir}/empty", "--out", "{dir}/h"),
        "empty",
    ),
    ("convert-out-not-empty", ("convert", "--from-hf", "{dir}/empty", "--out", "{dir}"), "--out"),
    ("convert-extra-ids", ("convert", "--to-hf", "x", "--out", "y", "--extra_ids", "-1"), "extra"),
    ("convert-no-direction", ("convert", "--out", "y"), "--from-hf"),
    # --- data export ---
    ("export-max-examples-0", (*EXPORT[:-1], "0", "--out", "{dir}/e"), "--max_examples"),
    ("export-shard-size-0", (*EXPORT, "--out", "{dir}/e", "--examples_per_shard", "0"), "shard"),
    (
        "export-unknown-mixture",
        ("data", "export", "--mixture", "demo_mixtur", "--out", "{dir}/e"),
        "demo_mixture",
    ),
    ("export-bad-format", (*EXPORT, "--out", "{dir}/e", "--format", "csv"), "--format"),
    ("export-out-is-a-file", (*EXPORT, "--out", "{dir}/good.jsonl"), "good.jsonl"),
    # --- tasks ---
    ("tasks-show-unknown", ("tasks", "show", "demo__arith__zs_nopt"), "demo__arith__zs_noopt"),
    ("tasks-preview-n-0", ("tasks", "preview", "demo_mixture", "-n", "0"), "--num_examples"),
    ("tasks-extra-ids", ("tasks", "--extra_ids", "-3", "list"), "--extra_ids"),
    ("tasks-list-unknown-source", ("tasks", "list", "--source", "flan2030"), "flan2030"),
    # --- distill ---
    (
        "ingest-not-utf8",
        ("distill", "ingest-openai", "--input", "{dir}/latin1.jsonl", "--out", "{dir}/new/st"),
        "latin1.jsonl:2",
    ),
    ("ingest-k-0", ("distill", "ingest-openai", "--input", "x", "--out", "y", "--k", "0"), "--k"),
    (
        "generate-num-samples-0",
        (*GENERATE, "--questions", "x", "--num_samples", "0"),
        "--num_samples",
    ),
    ("generate-bad-questions", (*GENERATE, "--questions", "{dir}/bad.jsonl"), "bad.jsonl:2"),
    (
        "generate-unknown-dataset",
        (*GENERATE, "--questions", "{dir}/good.jsonl", "--dataset", "gsm9k"),
        "gsm9k",
    ),
    (
        "select-bad-eval-spec",
        (*SELECT, "--eval", "gsm8k", "--out", "{dir}/new/r.json"),
        "NAME=PATH",
    ),
    (
        "select-out-read-only",
        (*SELECT, "--eval", "gsm8k={dir}/good.jsonl", "--out", "{ro}/r.json"),
        "{ro}",
    ),
    (
        "align-not-a-store",
        (
            "distill",
            "align",
            "--store",
            "{dir}/empty",
            "--student_vocab",
            "v",
            "--out",
            "{dir}/new/a",
        ),
        "not a teacher store",
    ),
    # --- synthesize: input texts and flags, before any checkpoint is read ---
    (
        "synthesize-missing-text",
        (*SYNTHESIZE, "--input", "{dir}/good.jsonl"),
        "good.jsonl:1: missing field 'text'",
    ),
    (
        "synthesize-text-not-string",
        (*SYNTHESIZE, "--input", "{dir}/texts_bad.jsonl"),
        "texts_bad.jsonl:2: field 'text' must be a string",
    ),
    ("synthesize-missing-input", (*SYNTHESIZE, "--input", "{dir}/none.jsonl"), "none.jsonl"),
    ("synthesize-rounds-0", (*SYNTHESIZE_GOOD, "--rounds", "0"), "--rounds"),
    ("synthesize-shard-not-groups", (*SYNTHESIZE_GOOD, "--shard_size", "5"), "multiple of rounds"),
    ("synthesize-out-is-a-file", (*SYNTHESIZE_GOOD, "--out", "{dir}/good.jsonl"), "good.jsonl"),
    ("synthesize-not-a-checkpoint", SYNTHESIZE_GOOD, "{dir}/empty"),
    # --- the command itself ---
    ("unknown-command", ("trian",), "trian"),
]


def _write_inputs(root: Path) -> None:
    (root / "empty").mkdir()
    (root / "good.jsonl").write_text(json.dumps(GOOD_LINE) + "\n")
    (root / "latin1.jsonl").write_bytes(b'{"inputs": "ok", "choices": []}\n{"inputs": "caf\xe9"}\n')
    (root / "bad.jsonl").write_text(json.dumps(GOOD_LINE) + '\n{"inputs": oops}\n')
    (root / "list.jsonl").write_text("[1, 2]\n")
    (root / "no_targets.jsonl").write_text('{"inputs": "x"}\n')
    (root / "texts.jsonl").write_text('{"text": "The tide follows the moon."}\n')
    (root / "texts_bad.jsonl").write_text('{"text": "fine"}\n{"text": ["a", "list"]}\n')
    (root / "typo.gin").write_text("# a user's overrides\nTRAIN_STPES = 5\n")
    (root / "syntax.gin").write_text("TRAIN_STEPS = = 5\n")
    (root / "bad_config").mkdir()
    (root / "bad_config" / "flan_jax_config.json").write_text('{"model": ')
    (root / "shared" / "mgsm").mkdir(parents=True)  # what `flan_t5:mgsm_cot/de` reads first
    (root / "shared" / "mgsm" / "mgsm_de.tsv").write_text("Frage?\t3\n")
    (root / "hf_partial").mkdir()
    (root / "hf_partial" / "config.json").write_text('{"model_type": "t5", "d_model": 8}')


def _read_only_dir(root: Path) -> Path:
    """A directory this process cannot create files in (root ignores mode bits)."""
    if os.geteuid() == 0:
        return Path("/sys")  # sysfs refuses new files even to root
    path = root / "read_only"
    path.mkdir()
    path.chmod(0o555)
    return path


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    _write_inputs(root)
    yield root, _read_only_dir(root)


@pytest.mark.parametrize(
    "argv,culprit,late", [(*c[1:3], len(c) > 3) for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_one_message_with_status_2(inputs, capsys, argv, culprit, late):
    root, read_only = inputs
    fill = {"dir": str(root), "ro": str(read_only)}
    before, models_before = _hashes(root), t5.models_built()
    status = cli.main([arg.format(**fill) for arg in argv])
    out, err = capsys.readouterr()
    assert status == 2, (out, err)
    assert culprit.format(**fill) in err, err
    assert "Traceback" not in err + out
    assert late or t5.models_built() == models_before, "a model was built before the error"
    changed = {path for path, digest in before.items() if _hashes(root).get(path) != digest}
    assert not changed


def test_the_catalog_covers_every_command_and_20_more_inputs():
    commands = {case[1][0] for case in CASES}
    assert set(cli.COMMANDS) <= commands
    assert len(CASES) >= 6 + 20
    assert len({case[0] for case in CASES}) == len(CASES)


def test_debug_shows_the_traceback(inputs, capsys):
    root, _ = inputs
    status = cli.main(["--debug", *(a.format(dir=root) for a in INFER_GOOD)])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" in err and "flan_jax_config.json" in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    from flan_jax.cli import tasks as tasks_cli

    def broken(argv):
        raise KeyError("an internal bug")

    monkeypatch.setattr(tasks_cli, "main", broken)
    with pytest.raises(KeyError, match="an internal bug"):
        cli.main(["tasks", "list"])


def _run_cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from flan_jax.cli.main import main; sys.exit(main())",
            *argv,
        ],
        capture_output=True,
        text=True,
        # As a user's shell: without the log level JAX set when this process imported it.
        env={**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}, **env},
        timeout=300,
    )


def test_missing_data_inside_tf_data_is_reported_unwrapped(tmp_path):
    """MissingDataError raised in a from_generator source comes back as itself."""
    env = {"FLAN_JAX_DATA_DIR": str(tmp_path)}
    result = _run_cli("tasks", "preview", "cot__aqua__zs_opt", env=env)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "flan-jax tasks: error:" in result.stderr
    assert str(tmp_path) in result.stderr
    assert "Traceback" not in result.stderr and "PyFunc" not in result.stderr, result.stderr
    assert "Data for dataset 'aqua' not found" in result.stderr


def test_tasks_help_prints_no_tensorflow_logs():
    result = _run_cli("tasks", "--help", env={})
    assert result.returncode == 0
    assert result.stdout.startswith("usage: flan-jax tasks") and not result.stderr
