"""FLAN's mixture names and mixture suites, checked against shares computed here."""

import logging

import pytest
import seqio

from flan_jax.tasks import flan_names, mixtures, registry


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
