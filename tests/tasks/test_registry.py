"""The task-family interface, the registry over it, and the catalog's vocabulary rule."""

import collections
import inspect
import json
import logging
import os
import subprocess
import sys

import pytest
import seqio

from flan_jax.evaluation import metrics
from flan_jax.tasks import demo, family, naming, registry

GOLDEN_PATH = os.path.join(os.path.dirname(__file__), "registered_tasks_golden.json")
# Registers every family in a fresh process (other tests register some tasks with other
# seeds or vocabularies) and prints, per family, the task count and a digest of each
# task's name, splits, seed, templates, few-shot settings, counts, postprocessor and
# metrics, then a digest of the mixtures. The golden file holds what this printed before
# the families shared one interface. A deliberate change to templates, catalogs, counts or
# few-shot settings changes the digests too: then print them again with this script
# (`python -c "$FINGERPRINT_SCRIPT"`) and update the golden file in the same commit.
FINGERPRINT_SCRIPT = r"""
import hashlib, json
import seqio
from flan_jax.tasks import demo, registry

def _count(source, split):
    try:
        return source.num_input_examples(split)
    except KeyError:
        return None

def describe(name):
    task = seqio.TaskRegistry.get(name)
    spec = task.source.render_spec
    fs = spec.few_shot
    return json.dumps([name, list(task.splits), spec.seed,
                       [(t.index, t.type, t.inputs, t.targets) for t in spec.templates],
                       None if fs is None else [type(fs).__name__, fs.max_input_tokens,
                                                list(fs.forms),
                                                type(getattr(fs, "pool", None)).__name__,
                                                getattr(fs, "num_shots", None),
                                                getattr(fs, "num_candidates", None),
                                                getattr(fs, "num_exemplars", None)],
                       {s: _count(task.source, s) for s in task.splits},
                       getattr(task.postprocessor, "__name__", None),
                       [f.__name__ for f in task.metric_fns]])

def fingerprint(names):
    return hashlib.sha256("\n".join(describe(n) for n in names).encode()).hexdigest()

vocab = seqio.PassThroughVocabulary(10)
report = registry.register_all(vocab)
by_source = {}
for n in report.tasks:
    by_source.setdefault(n.split("__")[0], []).append(n)
by_source["demo"] = demo.FAMILY.register(vocab)
mix = {m: sorted(seqio.get_mixture_or_task(m).rate_per_task_name.items())
       for m in report.mixtures}
mixtures = json.dumps([list(report.mixtures), mix]).encode()
print(json.dumps({
    "tasks": {s: {"count": len(v), "sha256": fingerprint(v)} for s, v in by_source.items()},
    "mixtures": {"count": len(report.mixtures), "sha256": hashlib.sha256(mixtures).hexdigest()},
}))
"""


@pytest.mark.parametrize("task_family", registry.FAMILIES, ids=lambda f: f.name)
def test_every_family_has_the_same_interface(task_family):
    for field, protocol in family.INTERFACE.items():
        expected = list(inspect.signature(protocol.__call__).parameters.values())[1:]
        got = list(inspect.signature(getattr(task_family, field)).parameters.values())
        assert [(p.name, p.kind, p.default) for p in got] == [
            (p.name, p.kind, p.default) for p in expected
        ], (task_family.name, field)
    assert isinstance(task_family.list_datasets(), tuple) and task_family.list_datasets()


def test_the_families_are_the_task_name_sources():
    assert [f.name for f in registry.FAMILIES] == list(naming.SOURCES)
    assert registry.FAMILY_SOURCES == tuple(s for s in naming.SOURCES if s != "demo")


def test_a_family_with_another_signature_is_rejected_naming_the_field():
    def load_split(dataset, paths, split):  # The positional shape T0 used to have.
        return []

    with pytest.raises(
        TypeError,
        match=r"'cot': load_split = .*load_split\(dataset, paths, "
        r"split\) must take the arguments \(dataset, \*, split, "
        r"paths=None, seed=0\) \(see LoadSplit\)",
    ):
        family.TaskFamily(
            "cot",
            demo.FAMILY.list_datasets,
            load_split,
            demo.FAMILY.missing_data,
            demo.FAMILY.register,
        )


def test_unknown_dataset_names_the_closest():
    with pytest.raises(
        ValueError,
        match=r"Unknown cot datasets \['gsm8x'\]; closest known: "
        r"\['gsm8k'\]",
    ):
        registry.get_family("cot").register(seqio.PassThroughVocabulary(10), datasets=["gsm8x"])


def test_demo_family_loads_its_generated_splits():
    assert demo.FAMILY.missing_data("arith") is None
    rows = list(demo.FAMILY.load_split("arith", split="validation", paths=None, seed=0))
    assert len(rows) == demo.collection.NUM_VALIDATION_EXAMPLES
    assert rows[0][0] == "validation:0" and "answer" in rows[0][1]


def test_register_all_is_unchanged_by_the_family_refactor():
    with open(GOLDEN_PATH, encoding="utf-8") as f:
        golden = json.load(f)
    result = subprocess.run(
        [sys.executable, "-c", FINGERPRINT_SCRIPT], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["tasks"] == golden["tasks"]
    assert got["mixtures"] == golden["mixtures"]


def test_every_registered_flan_task_has_metrics_and_the_text_postprocessor():
    report = registry.register_all(seqio.PassThroughVocabulary(10))
    by_metrics = collections.defaultdict(set)
    for name in report.tasks:
        task = seqio.TaskRegistry.get(name)
        assert task.metric_fns, name
        # seqio sorts metrics by their arguments: (targets, predictions) are predict metrics.
        assert task.predict_metric_fns == task.metric_fns, name
        assert task.postprocessor is metrics.postprocess_text, name
        by_metrics[tuple(f.__name__ for f in task.metric_fns)].add(name.split("__")[0])
    # Each family's metrics, as its catalog or module names them (FLAN's names included).
    assert by_metrics == {
        ("accuracy",): {"flan2021", "t0"},
        ("squad",): {"flan2021", "t0"},
        ("rouge",): {"flan2021", "t0", "cot", "dialog"},
        ("bleu",): {"flan2021"},
        ("niv2",): {"niv2"},
        ("cot_accuracy",): {"cot"},
    }
    assert seqio.TaskRegistry.get("cot__gsm8k__zs_opt").metric_fns == [metrics.cot_accuracy]
    assert seqio.TaskRegistry.get("flan2021__wmt16_translate_deen__zs_opt").metric_fns == [
        metrics.bleu
    ]


def test_the_catalog_without_a_vocabulary_fails_naming_the_macro():
    with pytest.raises(ValueError) as error:
        registry.register_catalog()
    message = str(error.value)
    assert "gin macro VOCABULARY_PATH" in message
    assert "--gin.VOCABULARY_PATH=/path/spiece.model" in message
    assert "--gin.ALLOW_DEMO_VOCABULARY=True" in message


def test_the_demo_vocabulary_only_when_asked_and_with_a_warning(monkeypatch, caplog):
    stand_in = seqio.PassThroughVocabulary(7)
    monkeypatch.setattr(demo, "get_demo_vocabulary", lambda: stand_in)
    with caplog.at_level(logging.WARNING):
        vocabulary = registry.get_catalog_vocabulary(
            vocabulary_path=None, extra_ids=100, allow_demo_vocabulary=True
        )
    assert vocabulary is stand_in
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "demo vocabulary" in record.getMessage() and "VOCABULARY_PATH" in record.getMessage()
