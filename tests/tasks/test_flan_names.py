"""FLAN's mixture names and mixture suites, checked against shares computed here."""

import logging
import re

import pytest
import seqio

from flan_jax.evaluation import metrics
from flan_jax.tasks import (
    family,
    few_shot,
    flan_names,
    mixtures,
    naming,
    registry,
    sources,
    templates,
)


@pytest.fixture(scope="module")
def report():
    return registry.register_all(seqio.PassThroughVocabulary(10))


def shares(mixture: str) -> dict[str, float]:
    return dict(mixtures.iter_mixture_rates(mixture))


def expected_variant_shares(source: str, variant: str) -> dict[str, float]:
    """Shares of FLAN's `<source>_<setting>`, from the count table and the caps alone."""
    counts = mixtures.load_counts()
    cap = mixtures.CAPS[source]
    parts = {}
    for inverted, weight in ((False, 1.0), (True, 0.3)):
        name = mixtures.variant_mixture_name(source, variant, inverted)
        if name not in seqio.MixtureRegistry.names():
            continue
        mixture = seqio.get_mixture_or_task(name)
        rates = {}
        for task in mixture.tasks:
            dataset = task.name.split("__")[1]
            count = counts.get((source, dataset))
            rates[task.name] = cap if count is None else min(cap, count)
        parts[weight] = rates
    total_weight = sum(parts)
    return {
        name: weight / total_weight * rate / sum(rates.values())
        for weight, rates in parts.items()
        for name, rate in rates.items()
    }


def assert_same_shares(actual: dict[str, float], expected: dict[str, float]) -> None:
    assert set(actual) == set(expected)
    for name, share in expected.items():
        assert actual[name] == pytest.approx(share, rel=1e-9), name


def test_every_flan_mixture_name_is_registered_over_ours(report):
    aliases = set(flan_names.register_flan_mixture_aliases())
    assert aliases <= set(report.mixtures)
    assert aliases == {
        f"{flan}_{setting}"
        for flan in ("flan", "t0")
        for setting in ("zsopt", "zsnoopt", "fsopt", "fsnoopt")
    } | {
        f"{flan}_{setting}" for flan in ("niv2", "cot", "dialog") for setting in ("zsopt", "fsopt")
    }


@pytest.mark.parametrize(
    "source,variant",
    [
        ("flan2021", "zs_opt"),
        ("flan2021", "fs_noopt"),
        ("t0", "zs_noopt"),
        ("t0", "fs_opt"),
        ("niv2", "fs_opt"),
        ("cot", "zs_opt"),
        ("cot", "fs_opt"),
        ("dialog", "zs_opt"),
    ],
)
def test_alias_has_the_tasks_and_rates_it_names(report, source, variant):
    alias = flan_names.flan_mixture_name(source, variant)
    assert_same_shares(shares(alias), expected_variant_shares(source, variant))
    if source not in ("cot", "dialog"):
        ours = seqio.get_mixture_or_task(mixtures.variant_mixture_name(source, variant))
        assert seqio.get_mixture_or_task(alias).rate_per_task_name == ours.rate_per_task_name


def test_cot_zsopt_holds_the_inverted_tasks_at_0_3(report):
    got = shares("cot_zsopt")
    inverted = sum(share for name, share in got.items() if "__inverted__" in name)
    assert inverted == pytest.approx(0.3 / 1.3)
    assert len(got) == 18


def test_suite_at_one_half_is_flan2022_submix(report):
    flan_names.register_mixture_suite("suite_half", ratio_zero_shot=0.5, ratio_answer_options=0.5)
    assert_same_shares(shares("suite_half"), shares("flan2022_submix"))


def test_suite_shares_follow_the_ratios(report):
    flan_names.register_mixture_suite(
        "suite_t0", ratio_zero_shot=0.8, ratio_answer_options=0.25, submix_weights={"t0": 1.0}
    )
    got = shares("suite_t0")
    per_variant = {
        variant: sum(s for n, s in got.items() if n.endswith("__" + variant))
        for variant in ("zs_opt", "fs_opt", "zs_noopt", "fs_noopt")
    }
    assert per_variant == pytest.approx(
        {"zs_opt": 0.2, "fs_opt": 0.05, "zs_noopt": 0.6, "fs_noopt": 0.15}
    )
    flan_names.register_mixture_suite(
        "suite_cot_zs", ratio_zero_shot=1.0, ratio_answer_options=1.0, submix_weights={"cot": 1}
    )
    assert_same_shares(shares("suite_cot_zs"), shares("cot_zsopt"))


def test_suite_leaves_out_sources_without_the_variants(report, caplog):
    with caplog.at_level(logging.WARNING):
        flan_names.register_mixture_suite(
            "suite_noopt", ratio_zero_shot=0.5, ratio_answer_options=0.0
        )
    assert "leaves out niv2, cot, dialog" in caplog.text
    sources = {name.split("__")[0] for name in shares("suite_noopt")}
    assert sources == {"flan2021", "t0"}
    with pytest.raises(ValueError, match="no source has the variants"):
        flan_names.register_mixture_suite(
            "suite_none", ratio_zero_shot=1.0, ratio_answer_options=0.0, submix_weights={"cot": 1}
        )
    with pytest.raises(ValueError, match="ratio_zero_shot must be between 0 and 1"):
        flan_names.register_mixture_suite("bad", ratio_zero_shot=1.5, ratio_answer_options=0.5)


# ---- FLAN's task names ------------------------------------------------------------------

FIXTURE_TEMPLATES = tuple(
    templates.Template(f"[T{i}] {{question}}{{options_}}", "{answer}", "zs", i) for i in range(3)
)


def fixture_rows(split):
    for j in range(40):
        yield f"{split}:{j}", {"question": f"q{j}?", "answer": "yes", "options": ["yes", "no"]}


def register_fixture(source: str, dataset: str) -> dict[str, str]:
    """Our four variants of a fixture dataset, then FLAN's names for them."""
    ours = [
        family.register_dataset_task(
            naming.TaskId(source, dataset, variant),
            FIXTURE_TEMPLATES,
            fixture_rows,
            seqio.PassThroughVocabulary(10),
            splits=["train"],
            seed=0,
            few_shot=few_shot.FewShotSettings(),
            metric_fns=[metrics.accuracy],
        )
        for variant in naming.VARIANTS
    ]
    return flan_names.register_flan_task_names(ours)


def rows(task_name: str) -> list[dict]:
    source = seqio.get_mixture_or_task(task_name).source
    return list(sources.iterate_rendered(source.render_spec, fixture_rows("train")))


def shown_templates(inputs: str) -> set[str]:
    return set(re.findall(r"\[T(\d)\]", inputs))


def test_flan_dataset_names():
    def name(source, dataset, inverted=False):
        return flan_names.flan_dataset_name(naming.TaskId(source, dataset, "zs_opt", inverted))

    assert name("cot", "gsm8k") == "cot_gsm8k"
    assert name("cot", "aqua") == "stream_aqua"
    assert name("cot", "qed", inverted=True) == "stream_input_inversion_qed"
    assert name("dialog", "qrecc", inverted=True) == "qrecc_input_inversion"
    assert name("t0", "ag_news_classify") == "t0_task_adaptation:ag_news_classify"
    assert name("flan2021", "anli_r1") == name("niv2", "anli_r1") == "anli_r1"


def test_flan_task_names_read_our_tasks():
    flan = register_fixture("flan2021", "flan_names_fixture")
    base = "flan_names_fixture_template_"
    assert set(flan) == {
        base + "0to10_zero_shot",
        base + "0to10_no_opt_zero_shot",
        base + "mix_five_shot",
        base + "0to10_x_shot",
        base + "0to10_no_opt_x_shot",
    } | {base + f"{i}{opt}_zero_shot" for i in range(3) for opt in ("", "_no_opt")}
    assert flan[base + "mix_five_shot"] == "flan2021__flan_names_fixture__fs_opt"
    ours = rows("flan2021__flan_names_fixture__zs_opt")
    same = rows(base + "0to10_zero_shot")
    assert [dict(r, _task_name="") for r in same] == [dict(r, _task_name="") for r in ours]
    assert {r["_task_name"] for r in same} == {base + "0to10_zero_shot"}
    copy = seqio.TaskRegistry.get(base + "0to10_zero_shot")
    assert copy.metric_fns == [metrics.accuracy]  # FLAN's names keep our metrics
    assert copy.postprocessor is metrics.postprocess_text
    for i in range(3):
        for opt in ("", "_no_opt"):
            one = rows(f"{base}{i}{opt}_zero_shot")
            assert len(one) == 40 and {r["_template_idx"] for r in one} == {i}
            assert all(("yes" in r["inputs"]) == (opt == "") for r in one)


def test_flan_few_shot_names_hold_one_form():
    register_fixture("flan2021", "flan_names_forms")
    mix = rows("flan_names_forms_template_mix_five_shot")
    zero_to_ten = rows("flan_names_forms_template_0to10_x_shot")
    no_opt = rows("flan_names_forms_template_0to10_no_opt_x_shot")
    # 0 to 10: only exemplars of the example's own template; template mix: 5 of any.
    for row in zero_to_ten + no_opt:
        assert shown_templates(row["inputs"]) == {str(row["_template_idx"])}
    assert any(len(shown_templates(row["inputs"])) > 1 for row in mix)
    assert all(row["inputs"].count("[T") == 6 for row in mix)


def test_two_tasks_with_one_flan_name_fail():
    register_fixture("flan2021", "flan_names_twice")
    with pytest.raises(ValueError, match="FLAN name 'flan_names_twice_template_0to10_zero_shot'"):
        register_fixture("dialog", "flan_names_twice")
