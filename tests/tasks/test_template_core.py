"""The template engine: placeholders, seeded options blocks, schema errors, task names."""

import subprocess
import sys
import textwrap

import pytest

from flan_jax.tasks import naming, templates

NLI_YAML = textwrap.dedent("""\
    family: nli
    fields: [premise, hypothesis]
    templates:
      - inputs: "{premise}\\nDoes it follow that \\"{hypothesis}\\"?{options_}"
        targets: "{answer}"
      - type: inverted
        inputs: "Write a statement that follows from: {premise}"
        targets: "{hypothesis}"
    """)
EXAMPLE = {
    "premise": "A dog runs {fast}.",
    "hypothesis": "An animal moves.",
    "options": ["yes", "it is not possible to tell", "no"],
    "answer": "yes",
}


@pytest.fixture
def nli(tmp_path):
    path = tmp_path / "nli.yaml"
    path.write_text(NLI_YAML)
    return templates.load_template_set(path)


def test_renders_with_and_without_options(nli):
    rng = templates.example_rng(0, "t", "train:0")
    with_opts = templates.render(nli.templates[0], EXAMPLE, with_options=True, rng=rng)
    without = templates.render(
        nli.templates[0], EXAMPLE, with_options=False, rng=templates.example_rng(0, "t", "train:0")
    )
    assert without.inputs == 'A dog runs {fast}.\nDoes it follow that "An animal moves."?'
    assert without.targets == "yes"
    assert with_opts.inputs.startswith(without.inputs)
    block = with_opts.inputs[len(without.inputs) :]
    assert all(option in block for option in EXAMPLE["options"])
    # Lettered styles answer with the label shown next to the answer; others with the text.
    answer_line = next(line for line in block.splitlines() if line.endswith(" yes"))
    assert with_opts.targets == "yes" or answer_line.startswith(with_opts.targets)


def test_answer_options_are_written_as_the_target_is(nli):
    styles = set()
    for i in range(40):
        rng = templates.example_rng(0, "t", f"train:{i}")
        out = templates.render(nli.templates[0], EXAMPLE, with_options=True, rng=rng)
        # The target is one of the options, each written as the options block labels it.
        assert out.targets == out.answer_options[0]
        block = out.inputs.split("?", 1)[1]
        for option, shown in zip(EXAMPLE["options"], out.answer_options):
            line = next(line for line in block.splitlines() if line.endswith(" " + option))
            assert shown == option or line.startswith(shown)
        styles.add(out.answer_options == tuple(EXAMPLE["options"]))
    assert styles == {True, False}  # both lettered and text styles were drawn
    without = templates.render(
        nli.templates[0], EXAMPLE, with_options=False, rng=templates.example_rng(0, "t", "x")
    )
    assert without.answer_options == tuple(EXAMPLE["options"])  # scored though not shown
    inverted = templates.render(
        nli.templates[1], EXAMPLE, with_options=True, rng=templates.example_rng(0, "t", "x")
    )
    assert inverted.answer_options == ()  # the target is not an answer option
    no_options = {k: v for k, v in EXAMPLE.items() if k != "options"}
    plain = templates.render(
        nli.templates[0], no_options, with_options=True, rng=templates.example_rng(0, "t", "x")
    )
    assert plain.answer_options == ()


def test_option_styles_vary_across_examples_but_not_across_calls(nli):
    blocks = set()
    for i in range(60):
        first = templates.render(
            nli.templates[0],
            EXAMPLE,
            with_options=True,
            rng=templates.example_rng(3, "t", f"train:{i}"),
        )
        again = templates.render(
            nli.templates[0],
            EXAMPLE,
            with_options=True,
            rng=templates.example_rng(3, "t", f"train:{i}"),
        )
        assert first == again
        blocks.add(first.inputs)
    assert len(blocks) > 10


def test_lettered_answer_points_at_the_right_option():
    for i in range(40):
        block, shown, shown_options = templates.format_options(
            ["red", "green", "blue"], "blue", templates.example_rng(0, "x", str(i))
        )
        line = next(line for line in block.splitlines() if line.endswith("blue"))
        assert shown == "blue" or line.startswith(shown)
        assert shown == "blue" or "C" in shown
        # Every option is written as the answer would be: its label, or its text.
        assert shown_options[2] == shown
        assert shown_options == ("red", "green", "blue") or all(
            label in option for label, option in zip("ABC", shown_options)
        )


def test_option_labels():
    assert [templates.option_label(i) for i in (0, 1, 25, 26, 27)] == ["A", "B", "Z", "AA", "AB"]


def test_missing_field_is_named(nli):
    with pytest.raises(templates.TemplateError, match=r"task7 .*template 1.*\{hypothesis\}"):
        templates.render(
            nli.templates[1],
            {"premise": "p"},
            with_options=False,
            rng=templates.example_rng(0, "t", "k"),
            where="task7 example k:",
        )


@pytest.mark.parametrize(
    "body, message",
    [
        ("templates: []", "has no templates"),
        ("fields: [a]\ntemplates:\n  - inputs: '{b}'\n    targets: x", r"template 0.*\['b'\]"),
        ("templates:\n  - inputs: x\n    targets: y\n    type: odd", "type must be one of"),
        ("templates:\n  - inputs: x", "needs 'inputs' and 'targets'"),
        ("templates: [\n", "cannot read"),
    ],
)
def test_schema_errors_name_file_and_template(tmp_path, body, message):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(templates.TemplateError, match=message) as info:
        templates.load_template_set(path)
    assert str(path) in str(info.value)


def test_task_names_round_trip():
    for task_id in [
        naming.TaskId("flan2021", "anli_r1", "zs_opt"),
        naming.TaskId("cot", "gsm8k", "fs_opt", inverted=True),
        naming.TaskId("niv2", "task1149_item_check_edible", "zs_noopt"),
    ]:
        assert naming.parse_task_name(naming.make_task_name(task_id)) == task_id
    assert (
        naming.make_task_name(naming.TaskId("cot", "gsm8k", "fs_opt", True))
        == "cot__gsm8k__inverted__fs_opt"
    )
    with pytest.raises(ValueError, match="variant"):
        naming.TaskId("cot", "gsm8k", "few")
    with pytest.raises(ValueError, match="not ending in '_'"):
        naming.TaskId("t0", "quoref_Read_And_Extract_", "zs_opt")
    with pytest.raises(ValueError, match="SOURCE__DATASET"):
        naming.parse_task_name("cot_gsm8k")


def test_same_seed_same_text_in_a_fresh_process(nli):
    code = textwrap.dedent(f"""
        from flan_jax.tasks import templates
        t = templates.load_template_set({nli.path!r}).templates[0]
        ex = {EXAMPLE!r}
        for i in range(5):
            r = templates.render(t, ex, with_options=True,
                                 rng=templates.example_rng(11, "t", f"train:{{i}}"))
            print(repr((r.inputs, r.targets)))
    """)
    fresh = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    here = "".join(
        repr((r.inputs, r.targets)) + "\n"
        for r in (
            templates.render(
                nli.templates[0],
                EXAMPLE,
                with_options=True,
                rng=templates.example_rng(11, "t", f"train:{i}"),
            )
            for i in range(5)
        )
    )
    assert fresh == here


def _spec(variant, nli, few_shot=None):
    from flan_jax.tasks import sources

    return sources.RenderSpec(
        naming.TaskId("demo", "nli", variant), nli.templates[:1], seed=5, few_shot=few_shot
    )


def test_render_example_carries_metadata(nli):
    from flan_jax.tasks import sources

    out = sources.render_example(_spec("zs_opt", nli), "train:4", EXAMPLE)
    assert out["_task_name"] == "demo__nli__zs_opt" and out["_task_source"] == "demo"
    assert out["_template_idx"] == 0 and out["_template_type"] == "zs"
    assert out["_example_key"] == "train:4"
    options = sources.split_answer_options(out["_answer_options"])
    assert out["targets"] in options and len(options) == 3
    assert out["_answer_options"] == "\x1f".join(options)
    assert sources.split_answer_options(out["_answer_options"].encode()) == options
    assert sources.split_answer_options(b"") == []
    with pytest.raises(ValueError, match="contains the options separator"):
        sources.join_answer_options(["a\x1fb"], where="task x example 1:")


def test_few_shot_variants_need_a_few_shot_builder(nli):
    # The few-shot forms themselves are tested in test_few_shot.py.
    with pytest.raises(ValueError, match="few_shot must be given"):
        _spec("fs_opt", nli)
