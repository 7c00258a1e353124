"""Mixtures: registry counts per submixture, caps, weights, counts table, skip-missing."""

import os
import shutil

import pytest
import seqio

from flan_jax.tasks import data_paths, mixtures, naming, registry
from flan_jax.testing.shared_data import shared_data_dir

COT_DIR = os.path.join(shared_data_dir(), "flan_cot_data")


@pytest.fixture(scope="module")
def report():
    return registry.register_all(
        seqio.PassThroughVocabulary(10), sources=("t0", "niv2", "cot", "dialog")
    )


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


def test_rates_follow_caps_and_weights(report):
    counts = mixtures.load_counts()
    for name, rate in seqio.get_mixture_or_task("cot_zs_opt").rate_per_task_name.items():
        count = counts[("cot", naming.parse_task_name(name).dataset)]
        assert rate == min(count, 100_000)
    niv2 = seqio.get_mixture_or_task("niv2_fs_opt").rate_per_task_name
    assert niv2["niv2__task1149_item_check_edible__fs_opt"] == 119
    assert niv2["niv2__task001_quoref_question_generation__fs_opt"] == 5_000  # unknown: cap
    assert set(seqio.get_mixture_or_task("t0_zs_opt").rate_per_task_name.values()) == {20_000}
    cot_submix = seqio.get_mixture_or_task("cot_submix").rate_per_task_name
    assert cot_submix == {
        "cot_fs_opt": 1.0,
        "cot_zs_opt": 1.0,
        "cot_inverted_fs_opt": 0.3,
        "cot_inverted_zs_opt": 0.3,
    }
    assert "niv2_zs_noopt" not in seqio.MixtureRegistry.names()
    shares = dict(mixtures.iter_mixture_rates("flan2022_submix"))
    assert abs(sum(shares.values()) - 1) < 1e-9
    present = {s: w for s, w in mixtures.SUBMIX_WEIGHTS.items() if s != "flan2021"}
    for source, weight in present.items():
        total = sum(v for k, v in shares.items() if k.startswith(source + "__"))
        assert abs(total - weight / sum(present.values())) < 1e-9
    gsm = shares["cot__gsm8k__zs_opt"]
    expected = (
        (present["cot"] / sum(present.values()))
        / 2.6
        * 7473
        / sum(min(c, 100_000) for (s, _), c in counts.items() if s == "cot")
    )
    assert abs(gsm - expected) < 1e-12


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
