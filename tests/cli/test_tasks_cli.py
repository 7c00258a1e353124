"""`flan-jax tasks list/show/preview` and `flan-jax data export` on small registered tasks."""

import json
import os
import subprocess
import sys

import pytest
import seqio

from flan_jax.cli import data as data_cli
from flan_jax.cli import main as cli
from flan_jax.cli import tasks as tasks_cli
from flan_jax.data import export
from flan_jax.tasks import naming, sources, templates

VOCABULARY = seqio.SentencePieceVocabulary(
    os.path.join(os.path.dirname(seqio.__file__), "test_data/sentencepiece/sentencepiece.model")
)
COLOURS = ("red", "green", "blue", "yellow")
CLI_TEMPLATES = (
    templates.Template("What colour is item {number}?{options_}", "{answer}", "zs", 0),
    templates.Template("Item {number} has a colour. Name it.{options_}", "{answer}", "zs", 1),
    templates.Template("Which item is {answer}?", "item {number}", "inverted", 2),
)
MIXTURE = "cli_colours_mix"


def _load_colours(split):
    for i in range(12):
        yield f"{split}:{i}", {"number": i, "answer": COLOURS[i % 4], "options": list(COLOURS)}


def _spec(dataset, variant):
    return sources.RenderSpec(naming.TaskId("demo", dataset, variant), CLI_TEMPLATES, seed=1)


@pytest.fixture(scope="module", autouse=True)
def colour_tasks():
    """Two tasks (options / no options) in one mixture with rates 3 : 1."""
    specs = [_spec("clicolours", "zs_opt"), _spec("clicolours", "zs_noopt")]
    for spec in specs:
        sources.register_rendered_task(
            spec,
            _load_colours,
            vocabulary=VOCABULARY,
            splits=["train"],
            num_input_examples={"train": 12},
        )
    if MIXTURE not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(MIXTURE, [(specs[0].task_name, 3.0), (specs[1].task_name, 1.0)])
    return specs


@pytest.fixture(autouse=True)
def only_test_tasks(monkeypatch):
    """In this process the CLIs see only the tasks registered here: the catalog (whose
    vocabulary other tests may register differently) is exercised in a subprocess below."""
    monkeypatch.setattr(tasks_cli, "register_catalog_from_flags", lambda args: None)


def run_cli(module, capsys, *argv):
    """`flan-jax tasks|data ARGV` through the CLI's error boundary."""
    command = {tasks_cli: "tasks", data_cli: "data"}[module]
    code = cli.main([command, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_filters_by_mixture_and_source(capsys, colour_tasks):
    code, out, _ = run_cli(tasks_cli, capsys, "list", "--source", "demo")
    assert code == 0
    assert {spec.task_name for spec in colour_tasks} <= set(out.split())
    assert all(naming.parse_task_name(name).source == "demo" for name in out.split())
    code, out, _ = run_cli(tasks_cli, capsys, "list", "--mixture", MIXTURE)
    assert code == 0
    assert out.splitlines() == [
        "demo__clicolours__zs_noopt\t1\t25.000%",
        "demo__clicolours__zs_opt\t3\t75.000%",
    ]
    code, out, _ = run_cli(tasks_cli, capsys, "list", "--mixtures")
    assert f"{MIXTURE}\t2 tasks" in out.splitlines()


def test_show_task_gives_source_counts_and_rates(capsys, colour_tasks):
    code, out, _ = run_cli(tasks_cli, capsys, "show", "demo__clicolours__zs_opt")
    assert code == 0
    assert "source: demo, dataset clicolours, variant zs_opt" in out
    assert "examples: train 12" in out
    assert f"{MIXTURE}: rate 3 (75.000% of the mixture)" in out
    assert "templates: 3 (1 inverted, 2 zs), rendering seed 1" in out
    assert '[2] inverted: "Which item is {answer}?" -> "item {number}"' in out


def test_show_mixture_gives_the_share_per_source(capsys):
    code, out, _ = run_cli(tasks_cli, capsys, "show", MIXTURE)
    assert code == 0
    assert "tasks: 2, total rate 4" in out
    assert "  demo: 100.00%" in out


def test_preview_renders_the_examples_the_source_renders(capsys, colour_tasks):
    code, out, _ = run_cli(
        tasks_cli, capsys, "preview", "demo__clicolours__zs_opt", "-n", "3", "--json"
    )
    assert code == 0
    shown = [json.loads(line) for line in out.splitlines()]
    reference = [
        export.to_json_example(sources.render_example(colour_tasks[0], key, fields))
        for key, fields in list(_load_colours("train"))[:3]
    ]
    assert shown == reference
    code, out, _ = run_cli(tasks_cli, capsys, "preview", MIXTURE, "-n", "2")
    assert code == 0
    assert out.count("=== example") == 2
    assert "_template_type=" in out and "--- inputs\n" in out and "--- targets\n" in out


@pytest.mark.parametrize(
    "argv",
    [
        ("show", "demo__clicolour__zs_opt"),
        ("preview", "cli_colors_mix"),
        ("list", "--mixture", "cli_colours_mx"),
    ],
)
def test_unknown_name_suggests_the_closest_names(capsys, argv):
    code, out, err = run_cli(tasks_cli, capsys, *argv)
    assert code == 2 and not out
    assert "Did you mean:" in err
    assert ("demo__clicolours__zs_opt" in err) or (MIXTURE in err)


def test_data_export_writes_and_resumes_to_the_same_manifest(capsys, tmp_path):
    argv = [
        "export",
        "--mixture",
        MIXTURE,
        "--out",
        str(tmp_path),
        "--format",
        "arrayrecord",
        "--max_examples",
        "15",
        "--examples_per_shard",
        "4",
        "--seed",
        "2",
    ]
    code, out, _ = run_cli(data_cli, capsys, *argv)
    assert code == 0 and "exported 15 examples" in out and "in 4 shards" in out
    first = list(export.read_exported_examples(str(tmp_path)))
    code, out, _ = run_cli(data_cli, capsys, *argv)
    assert code == 0 and list(export.read_exported_examples(str(tmp_path))) == first
    code, _, err = run_cli(data_cli, capsys, *argv[:-1], "3")
    assert code == 2 and "field 'seed' is 2" in err


def test_data_export_unknown_mixture_suggests(capsys, tmp_path):
    code, _, err = run_cli(
        data_cli, capsys, "export", "--mixture", "cli_colours_mixx", "--out", str(tmp_path)
    )
    assert code == 2 and f"Did you mean: {MIXTURE}" in err


@pytest.mark.slow
def test_the_command_registers_the_catalog_in_a_fresh_process():
    result = subprocess.run(
        [sys.executable, "-m", "flan_jax.cli.main", "tasks", "list", "--mixtures"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    mixtures = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert mixtures, f"no mixture registered by the catalog entry point: {result.stderr}"
    assert all(int(line.split("\t")[1].split()[0]) > 0 for line in result.stdout.splitlines())


def test_recount_counts_local_data_and_keeps_absent_rows(tmp_path, capsys):
    from flan_jax.tasks import mixtures

    table = tmp_path / "counts.tsv"
    table.write_text(open(mixtures.COUNTS_PATH).read())
    (tmp_path / "data" / "cot").mkdir(parents=True)
    (tmp_path / "data" / "cot" / "qasc_train.tsv").write_text(
        "".join(f"Question {i}?\tanswer {i}\tBecause {i}.\n" for i in range(5))
    )
    code, out, _ = run_cli(
        tasks_cli, capsys, "recount", "--data_root", str(tmp_path / "data"), "--table", str(table)
    )
    assert code == 0
    assert "cot: 1 of 9 datasets counted from local data" in out
    before = {(r.source, r.dataset): r for r in mixtures.read_count_table(mixtures.COUNTS_PATH)}
    for row in mixtures.read_count_table(str(table)):
        if (row.source, row.dataset) == ("cot", "qasc"):
            assert row.num_examples == 5 and row.origin == mixtures.RECOUNTED_ORIGIN
        else:
            assert row == before[(row.source, row.dataset)]
