"""Mixtures: registry counts per submixture, rates from the published counts, shares, caps,
the cap-fallback warning, counts table, skip-missing."""

import csv
import os
import shutil

import pytest
import seqio

from flan_jax.tasks import data_paths, flan_names, mixtures, naming, registry
from flan_jax.testing.shared_data import shared_data_dir

COT_DIR = os.path.join(shared_data_dir(), "flan_cot_data")
# The Flan 2022 collection's per-task caps and submix weights (google-research/FLAN
# flan/v2/mixtures.py DEFAULT_MIXTURE_MAX_EXAMPLES; Longpre et al. 2023), written out here so
# the test does not read them from the code it checks.
CAPS = {"flan2021": 30_000, "t0": 20_000, "niv2": 5_000, "cot": 100_000, "dialog": 200_000}
SUBMIX_WEIGHTS = {"flan2021": 0.40, "t0": 0.32, "niv2": 0.20, "cot": 0.05, "dialog": 0.03}
INVERTED_WEIGHT = 0.3


def read_published_counts() -> dict[tuple[str, str], int | None]:
    """{(source, dataset): count or None} parsed from tasks/counts.tsv by this test itself."""
    with open(mixtures.COUNTS_PATH, encoding="utf-8") as f:
        lines = [line for line in f if not line.startswith("#")]
    counts = {}
    for row in csv.DictReader(lines, delimiter="\t"):
        assert row["split"] == "train"
        value = row["num_examples"]
        counts[(row["source"], row["dataset"])] = int(value) if value else None
    return counts


@pytest.fixture(scope="module")
def report():
    return registry.register_all(seqio.PassThroughVocabulary(10))


def test_registry_counts_per_submixture(report):
    by_source = {}
    for name in report.tasks:
        task_id = naming.parse_task_name(name)
        by_source.setdefault(task_id.source, set()).add((task_id.dataset, task_id.inverted))
    assert len(by_source["t0"]) == 193
    assert len(by_source["niv2"]) == 1556
    assert sorted(inv for _, inv in by_source["cot"]).count(True) == 9 == len(by_source["cot"]) - 9
    assert len(by_source["dialog"]) == 4
    assert not report.skipped


def test_t0_and_flan2021_rates_are_capped_published_counts(report):
    counts = read_published_counts()
    t0_counts = [c for (source, _), c in counts.items() if source == "t0"]
    assert len(t0_counts) == 193 and None not in t0_counts
    assert sum(c < 20_000 for c in t0_counts) == 104 and min(t0_counts) == 1_040
    checked = 0
    flan_aliases = {
        flan_names.flan_mixture_name(source, variant)
        for source in flan_names.FLAN_SUBMIX_NAMES
        for variant in flan_names.FLAN_SETTINGS
    }
    for mixture in report.mixtures:
        if not mixture.startswith(("t0_", "flan2021_")) or mixture.endswith("_submix"):
            continue
        if mixture in flan_aliases:  # Same tasks and rates as ours: test_flan_names.py.
            continue
        cap = 3_000 if mixture == "flan2021_original" else None
        for name, rate in seqio.get_mixture_or_task(mixture).rate_per_task_name.items():
            task_id = naming.parse_task_name(name)
            count = counts[(task_id.source, task_id.dataset)]  # Every task has a row ...
            assert count is not None, f"{name}: blank count"  # ... with a count.
            assert rate == min(cap or CAPS[task_id.source], count), name
            checked += 1
    t0_tasks = sum(name.startswith("t0__") for name in report.tasks)
    flan2021_tasks = sum(name.startswith("flan2021__") for name in report.tasks)
    flan2021_zero_shot = sum(
        name.startswith("flan2021__") and name.endswith("__zs_opt") for name in report.tasks
    )
    assert checked == t0_tasks + flan2021_tasks + flan2021_zero_shot  # flan2021_original too.
    rates = seqio.get_mixture_or_task("t0_zs_opt").rate_per_task_name
    assert rates["t0__wiki_qa_Direct_Answer_to_Question__zs_opt"] == 1_040
    assert rates["t0__amazon_polarity_Is_this_review__zs_opt"] == 20_000


def expected_flan2022_shares(task_names, counts) -> dict[str, float]:
    """Each task's share of flan2022_submix: submix weight x variant weight x rate, normalised."""
    rates, groups = {}, {}
    for name in task_names:
        task_id = naming.parse_task_name(name)
        count = counts.get((task_id.source, task_id.dataset))
        cap = CAPS[task_id.source]
        rates[name] = cap if count is None else min(cap, count)
        group = (task_id.source, task_id.inverted, task_id.variant)
        groups.setdefault(group, []).append(name)
    group_weight = {g: INVERTED_WEIGHT if g[1] else 1.0 for g in groups}
    source_total = {}
    for (source, _, _), weight in group_weight.items():
        source_total[source] = source_total.get(source, 0.0) + weight
    weight_total = sum(SUBMIX_WEIGHTS[s] for s in source_total)
    shares = {}
    for group, names in groups.items():
        source = group[0]
        group_share = SUBMIX_WEIGHTS[source] / weight_total * group_weight[group]
        group_share /= source_total[source]
        group_rate = sum(rates[n] for n in names)
        for name in names:
            shares[name] = group_share * rates[name] / group_rate
    return shares


def test_submix_and_task_shares_of_flan2022_submix(report):
    shares = dict(mixtures.iter_mixture_rates("flan2022_submix"))
    expected = expected_flan2022_shares(report.tasks, read_published_counts())
    assert shares.keys() == expected.keys()
    for source, weight in SUBMIX_WEIGHTS.items():
        total = sum(v for k, v in shares.items() if k.startswith(source + "__"))
        assert total == pytest.approx(weight, rel=1e-12)
    sample = [
        "t0__wiki_qa_Direct_Answer_to_Question__zs_opt",
        "t0__amazon_polarity_Is_this_review__fs_opt",
        "flan2021__cb__zs_opt",
        "niv2__task1149_item_check_edible__zs_opt",
        "niv2__task001_quoref_question_generation__fs_opt",
        "cot__gsm8k__inverted__zs_opt",
        "dialog__qrecc__zs_opt",
    ]
    for name in sample:
        assert shares[name] == pytest.approx(expected[name], rel=1e-12), name
    assert all(shares[n] == pytest.approx(expected[n], rel=1e-9) for n in shares)
    # Two by hand: cb (200 examples; four Flan 2021 variants weigh 1 each) and qrecc.
    flan2021_rate = sum(seqio.get_mixture_or_task("flan2021_zs_opt").rate_per_task_name.values())
    assert shares["flan2021__cb__zs_opt"] == pytest.approx(0.40 / 4 * 200 / flan2021_rate)
    dialog = dict(mixtures.iter_mixture_rates("dialog_submix"))
    qrecc = sum(v for k, v in dialog.items() if "__qrecc__" in k)
    assert qrecc == pytest.approx(10_170 / (10_170 + 200_000))  # About 5% of the dialog mix.


def test_niv2_rates_and_submix_weights(report):
    niv2 = seqio.get_mixture_or_task("niv2_fs_opt").rate_per_task_name
    assert niv2["niv2__task1149_item_check_edible__fs_opt"] == 119
    assert niv2["niv2__task001_quoref_question_generation__fs_opt"] == 4_225
    assert niv2["niv2__task1195_disflqa_disfluent_to_fluent_conversion__fs_opt"] == 5_000  # capped
    cot_submix = seqio.get_mixture_or_task("cot_submix").rate_per_task_name
    assert cot_submix == {
        "cot_fs_opt": 1.0,
        "cot_zs_opt": 1.0,
        "cot_inverted_fs_opt": 0.3,
        "cot_inverted_zs_opt": 0.3,
    }
    assert "niv2_zs_noopt" not in seqio.MixtureRegistry.names()


def test_cap_fallback_warns_naming_the_tasks(report, caplog):
    t0_tasks = [name for name in report.tasks if name.startswith("t0__")]
    zero_shot = [name for name in t0_tasks if name.endswith("__zs_opt")]
    counts = {k: v for k, v in read_published_counts().items() if k[0] != "t0"}
    try:
        with caplog.at_level("WARNING"):
            mixtures.register_source_mixtures(t0_tasks, counts)
        warnings = [r.getMessage() for r in caplog.records if "t0_zs_opt" in r.getMessage()]
        assert len(warnings) == 1  # Once per mixture registration.
        assert "193 of 193 tasks have no example count" in warnings[0]
        assert all(name in warnings[0] for name in zero_shot[:10])
        assert zero_shot[10] not in warnings[0] and "and 183 more" in warnings[0]
        assert set(seqio.get_mixture_or_task("t0_zs_opt").rate_per_task_name.values()) == {20_000}
    finally:
        caplog.clear()
        with caplog.at_level("WARNING"):  # All T0 counts known: no warning.
            mixtures.register_source_mixtures(t0_tasks, read_published_counts())
        assert not [r for r in caplog.records if "no example count" in r.getMessage()]


@pytest.mark.skipif(not os.path.isdir(COT_DIR), reason=f"shared CoT data not at {COT_DIR}")
def test_skip_missing_reports_names_and_recompute_counts(tmp_path):
    paths = data_paths.DataPaths(source_dirs={"cot": COT_DIR})
    report = registry.register_all(
        seqio.PassThroughVocabulary(10), sources=("cot",), paths=paths, skip_missing=True
    )
    assert set(report.skipped) == {"cot/esnli", "cot/qed"}
    assert "esnli_train.tsv" in report.skipped["cot/esnli"]
    assert len(report.tasks) == 7 * 4
    table = tmp_path / "counts.tsv"
    shutil.copy(mixtures.COUNTS_PATH, table)
    before = {(r.source, r.dataset): r for r in mixtures.read_count_table(str(table))}
    rows = registry.recompute_counts(paths=paths, path=str(table))
    after = {(r.source, r.dataset): r for r in rows}
    assert after[("cot", "gsm8k")].num_examples == 7473
    assert after[("cot", "gsm8k")].origin.startswith("counted: recompute_counts")
    assert after[("cot", "esnli")] == before[("cot", "esnli")]
    assert mixtures.read_count_table(str(table)) == rows
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
