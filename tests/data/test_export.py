"""Export of rendered mixtures: content against direct rendering, formats, kill-and-resume,
argument checks and bounded memory.

The kill and memory tests run this file as a child process (see `_main` at the bottom):
the child registers the same toy tasks, so an example renders identically in both.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import seqio

from flan_jax.data import export
from flan_jax.tasks import naming, sources, templates

VOCABULARY = seqio.SentencePieceVocabulary(
    os.path.join(os.path.dirname(seqio.__file__), "test_data/sentencepiece/sentencepiece.model")
)
TOY_TEMPLATES = (
    templates.Template("Q: {question}{options_}", "{answer}", "zs", 0),
    templates.Template("Answer the question.\n{question}{options_}\nA:", "{answer}", "zs", 1),
    templates.Template("The answer is {answer}. What was asked?", "{question}", "inverted", 2),
)
# (dataset, size factor, rate): unequal sizes and rates so streams run out at different times.
TOY_TASKS = (("exportalpha", 1.0, 1.0), ("exportbeta", 0.5, 3.0), ("exportgamma", 0.25, 0.5))


def _load_toy_split(dataset, num_examples, pad_chars, delay_s):
    """A generator factory: examples are made on the fly, never held in a list."""

    def load_split(split):
        for i in range(num_examples):
            if delay_s:
                time.sleep(delay_s)
            yield (
                f"{split}:{i}",
                {
                    "question": f"{dataset} question {i}: what is {i} plus 1? " + "x" * pad_chars,
                    "answer": str(i + 1),
                    "options": [str(i), str(i + 1), str(i + 2)],
                },
            )

    return load_split


def toy_spec(dataset):
    return sources.RenderSpec(naming.TaskId("demo", dataset, "zs_opt"), TOY_TEMPLATES, seed=7)


def register_toy_mixture(num_examples, *, pad_chars=0, delay_s=0.0):
    """Registers three toy tasks and their mixture; returns the mixture name."""
    mixture = f"export_toy_{num_examples}_{pad_chars}"
    task_rates = []
    for dataset, factor, rate in TOY_TASKS:
        size = max(1, int(num_examples * factor))
        spec = toy_spec(f"{dataset}{num_examples}p{pad_chars}")
        task = sources.register_rendered_task(
            spec,
            _load_toy_split(spec.task_id.dataset, size, pad_chars, delay_s),
            vocabulary=VOCABULARY,
            splits=["train"],
            num_input_examples={"train": size},
        )
        task_rates.append((task.name, rate))
    if mixture not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(mixture, task_rates)
    return mixture


def run_child(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, __file__, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_export_holds_every_example_once_in_stream_order_with_metadata(tmp_path):
    mixture = register_toy_mixture(40)
    manifest = export.export_mixture(
        export.ExportConfig(mixture, str(tmp_path), examples_per_shard=16)
    )
    exported = list(export.read_exported_examples(str(tmp_path)))
    assert manifest["complete"] and manifest["num_examples"] == len(exported) == 40 + 20 + 10
    assert [s["num_examples"] for s in manifest["shards"]] == [16, 16, 16, 16, 6]
    for dataset, factor, _ in TOY_TASKS:
        spec = toy_spec(f"{dataset}40p0")
        size = int(40 * factor)
        mine = [e for e in exported if e["_task_name"] == spec.task_name]
        # Each task's stream is read sequentially, and each example is the one the
        # source renders for that key (a reference rendering, outside tf.data).
        assert [e["_example_key"] for e in mine] == [f"train:{i}" for i in range(size)]
        reference = sources.iterate_rendered(
            spec, _load_toy_split(spec.task_id.dataset, size, 0, 0.0)("train")
        )
        assert mine == [export.to_json_example(r) for r in reference]
        assert manifest["state"]["consumed"][spec.task_name] == size
    assert set(exported[0]) == {
        "inputs",
        "targets",
        "_task_name",
        "_task_source",
        "_template_idx",
        "_template_type",
        "_example_key",
        "_answer_options",
    }
    # The rates shape the order: the rate-3 task dominates the first examples.
    first = [e["_task_name"] for e in exported[:12]]
    assert first.count(toy_spec("exportbeta40p0").task_name) > 4


def test_arrayrecord_holds_the_same_examples_as_jsonl(tmp_path):
    mixture = register_toy_mixture(30)
    for fmt in export.FORMATS:
        export.export_mixture(
            export.ExportConfig(
                mixture,
                str(tmp_path / fmt),
                format=fmt,
                seed=3,
                max_examples=37,
                examples_per_shard=10,
            )
        )
    jsonl = list(export.read_exported_examples(str(tmp_path / "jsonl")))
    assert len(jsonl) == 37
    assert jsonl == list(export.read_exported_examples(str(tmp_path / "arrayrecord")))
    assert sorted(os.listdir(tmp_path / "arrayrecord")) == [
        "manifest.json",
        *(f"train-0000{i}.array_record" for i in range(4)),
    ]


def test_seed_changes_the_order_but_not_the_examples(tmp_path):
    mixture = register_toy_mixture(20)
    orders = []
    for seed in (0, 1, 0):
        out = tmp_path / f"run{len(orders)}"
        export.export_mixture(export.ExportConfig(mixture, str(out), seed=seed))
        orders.append(list(export.read_exported_examples(str(out))))
    assert orders[0] == orders[2]
    assert orders[0] != orders[1]
    assert sorted(map(json.dumps, orders[0])) == sorted(map(json.dumps, orders[1]))


def test_resume_refuses_other_arguments_and_names_the_field(tmp_path):
    mixture = register_toy_mixture(10)
    export.export_mixture(export.ExportConfig(mixture, str(tmp_path), seed=1))
    with pytest.raises(export.ExportError, match=r"manifest.json: field 'seed' is 1 .* 2"):
        export.export_mixture(export.ExportConfig(mixture, str(tmp_path), seed=2))


def test_unknown_name_lists_the_closest_registered_names(tmp_path):
    register_toy_mixture(10)
    with pytest.raises(export.ExportError, match="Did you mean: export_toy_10_0"):
        export.export_mixture(export.ExportConfig("export_toy_10_O", str(tmp_path)))


def test_killed_export_resumes_without_duplicates_or_gaps(tmp_path):
    killed_dir, whole_dir = tmp_path / "killed", tmp_path / "whole"
    # The child sleeps per example so the kill lands in the middle of the export.
    child = run_child("kill", killed_dir, 200, 0.01)
    manifest_path = killed_dir / export.MANIFEST_NAME
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
        if manifest_path.exists() and len(json.loads(manifest_path.read_text())["shards"]) >= 3:
            break
        time.sleep(0.05)
    assert child.poll() is None, f"the child ended before the kill: {child.communicate()}"
    child.send_signal(signal.SIGKILL)
    child.wait()
    at_kill = json.loads(manifest_path.read_text())
    assert not at_kill["complete"] and 3 <= len(at_kill["shards"])

    mixture = register_toy_mixture(200)
    config = dict(examples_per_shard=25, seed=5, max_examples=300)
    export.export_mixture(export.ExportConfig(mixture, str(killed_dir), **config))
    export.export_mixture(export.ExportConfig(mixture, str(whole_dir), **config))
    resumed = list(export.read_exported_examples(str(killed_dir)))
    whole = list(export.read_exported_examples(str(whole_dir)))
    assert len(resumed) == 300
    assert resumed == whole
    keys = [(e["_task_name"], e["_example_key"]) for e in resumed]
    assert len(set(keys)) == len(keys)
    assert not [name for name in os.listdir(killed_dir) if name.endswith(".tmp")]


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_mixture(tmp_path):
    pad_chars = 2000
    growth = {}
    for size in (500, 5000):
        child = run_child("memory", tmp_path / f"m{size}", size, pad_chars)
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err
        growth[size] = json.loads(out.strip().splitlines()[-1])
    # Three tasks of size, size/2 and size/4 examples of ~pad_chars characters each.
    data_growth = (5000 - 500) * 1.75 * pad_chars
    rss_growth = growth[5000]["export_rss"] - growth[500]["export_rss"]
    # Holding the exported examples would add at least their bytes (~16 MB here).
    assert rss_growth < 0.2 * data_growth, (growth, data_growth)


def _main(argv):
    """Child process: `kill OUT SIZE DELAY_S` or `memory OUT SIZE PAD_CHARS`."""
    import resource

    mode, out_dir, size, number = argv
    if mode == "kill":
        mixture = register_toy_mixture(int(size), delay_s=float(number))
        export.export_mixture(
            export.ExportConfig(mixture, out_dir, examples_per_shard=25, seed=5, max_examples=300)
        )
        return
    # Warm up tf.data and the writer on a tiny export so the baseline includes them.
    warmup = register_toy_mixture(5)
    export.export_mixture(export.ExportConfig(warmup, out_dir + "_warmup"))
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    mixture = register_toy_mixture(int(size), pad_chars=int(number))
    export.export_mixture(export.ExportConfig(mixture, out_dir, examples_per_shard=500))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"baseline_rss": baseline, "export_rss": peak - baseline}))


if __name__ == "__main__":
    _main(sys.argv[1:])
