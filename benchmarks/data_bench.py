"""Data pipeline throughput against the trainer's consumption, and the export's memory.

Builds a CoT mixture over the real Flan CoT TSVs in `../shared/data/flan_cot_data`
(zero-shot and few-shot with options, plus the inverted zero-shot tasks, at rates
proportional to each file's rows), then measures, on this host:

  render            examples/s of the rendered text streams (what an export reads),
                    after a warm-up that opens the streams
  render+tok+pack   examples/s through seqio tokenization and the best-fit packer,
                    with packed rows/s and real target tokens/s, after the first buffer
  export            examples/s (stream opening included) and peak RSS growth of
                    `export_mixture`, in a child process
  trainer tiny/small examples/s one train step of the tiny / T5 1.1 small model consumes,
                    from timed steps on packed batches of this data (or `--trainer_rate`)
  cached readers    examples/s of the mixture cached by `flan-jax data cache`'s Beam
                    pipeline (`bench_cache.cache_mixture`) read by tf.data (seqio
                    `use_cached=True`, shuffled, mixed) and by Grain (ArrayRecord by index),
                    as examples and as packed training batches (`make_train_iterator`
                    with `input_pipeline="seqio"` / `"grain"`), after a warm-up buffer
  few-shot          examples/s and Python peak memory of rendering the CoT `fs_opt` tasks
                    with FLAN's two forms (each alone, and mixed as registered), the
                    zero-shot rendering of the same rows, and the single-form few-shot of
                    commit 333adcb (`git show 333adcb:tasks/sources.py`, loaded as a
                    module) on the same rows;
                    the few-shot share is its extra time per example over the
                    render+tokenize+pack time per example

The pipeline must never be what the trainer waits for: the table's last column is
pipeline examples/s divided by trainer examples/s (above 1 is good).

    python benchmarks/data_bench.py [--num_examples 2000] [--sizes tiny,small]
        [--trainer_rate small=350.0]  # e.g. a rate measured on an accelerator
        [--few_shot_only]             # only the few-shot section (about a minute)
        [--cached_only] [--cache_dir DIR]
                                      # only the cached readers (tf.data vs Grain)

Writes benchmarks/results/data_bench.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

import bench_cache
import numpy as np
import seqio
import t5_sizes

from flan_jax.data import export, file_io, grain_pipeline, packing, pipeline, vocabularies
from flan_jax.tasks import cot, data_paths, few_shot, naming, sources
from flan_jax.testing.shared_data import shared_data_dir

COT_DIR = os.path.join(shared_data_dir(), "flan_cot_data")
RESULTS_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results", "data_bench.json"
)
MIXTURE = "bench_cot_mixture"
LENGTHS = packing.FeatureLengths(inputs=512, targets=128)
VOCAB_SETTINGS = vocabularies.SentencePieceSettings(
    vocab_size=4000, byte_fallback=True, split_digits=True
)
PACK_BUFFER = 256
# T5 1.1 small (REFERENCE.md), in f32 because bf16 matmuls are slow on CPU.
SMALL_T5 = dict(vocab_size=32128, **t5_sizes.T5_1_1_DIMS["small"])
TRAIN_ROWS = {"tiny": 8, "small": 2}
# Few-shot section: the Flan 2022 budget, and rows rendered per dataset per measurement.
FEW_SHOT_BUDGET = 1920
FEW_SHOT_ROWS = 400
FEW_SHOT_MEMORY_ROWS = 30


def available_datasets() -> list[str]:
    return [d for d in cot.DATASETS if os.path.exists(os.path.join(COT_DIR, f"{d}_train.tsv"))]


def make_corpus() -> list[str]:
    """The first 1,500 rows of each CoT file, every column: the vocabulary's corpus."""
    texts = []
    for dataset in available_datasets():
        for i, (_, fields) in enumerate(
            cot.read_cot_tsv(os.path.join(COT_DIR, f"{dataset}_train.tsv"))
        ):
            if i == 1500:
                break
            texts += [str(value) for value in fields.values() if isinstance(value, str)]
    return texts


def register_bench_mixture() -> seqio.Vocabulary:
    """Registers the CoT tasks over the shared TSVs and the benchmark mixture."""
    vocabulary = vocabularies.get_or_build_vocabulary("bench_cot_spm", make_corpus, VOCAB_SETTINGS)
    datasets = available_datasets()
    paths = data_paths.DataPaths(source_dirs={"cot": COT_DIR})
    cot.register_cot_tasks(
        vocabulary,
        datasets=datasets,
        paths=paths,
        few_shot=dataclasses.replace(cot.registration.FEW_SHOT, max_input_tokens=LENGTHS.inputs),
    )
    if MIXTURE not in seqio.MixtureRegistry.names():
        members = []
        for dataset in datasets:
            with open(os.path.join(COT_DIR, f"{dataset}_train.tsv"), encoding="utf-8") as f:
                rows = sum(1 for _ in f)
            for variant, inverted, weight in (
                ("zs_opt", False, 1.0),
                ("fs_opt", False, 1.0),
                ("zs_opt", True, 0.3),
            ):
                task_id = naming.TaskId("cot", dataset, variant, inverted=inverted)
                members.append((naming.make_task_name(task_id), weight * rows))
        seqio.MixtureRegistry.add(MIXTURE, members)
    return vocabulary


def measure_render(num_examples: int, warmup: int = 500) -> dict:
    """Steady-state rendering rate: the first `warmup` draws open the task streams."""
    sampler = export.MixtureSampler(export.get_task_rates(MIXTURE, "train"), split="train", seed=0)
    for _ in range(warmup):
        sampler.next_example()
    start = time.perf_counter()
    for _ in range(num_examples):
        sampler.next_example()
    return {"examples_per_s": num_examples / (time.perf_counter() - start)}


def iterate_packed(num_examples: int):
    """Yields (packed features, examples in them) for `num_examples` tokenized examples."""
    # seed=None: the rendered sources' dataset_fn takes no seed argument (seqio then
    # refuses a seed); the order does not matter for throughput.
    dataset = seqio.get_mixture_or_task(MIXTURE).get_dataset(
        {"inputs": LENGTHS.inputs, "targets": LENGTHS.targets},
        split="train",
        shuffle=False,
        seed=None,
        use_cached=False,
        num_epochs=1,
    )
    buffer = []
    for example in dataset.take(num_examples).as_numpy_iterator():
        buffer.append({"inputs": example["inputs"], "targets": example["targets"]})
        if len(buffer) == PACK_BUFFER:
            yield packing.pack_examples(buffer, LENGTHS), len(buffer)
            buffer = []
    if buffer:
        yield packing.pack_examples(buffer, LENGTHS), len(buffer)


def measure_pipeline(num_examples: int) -> tuple[dict, list[dict]]:
    """Steady-state rate: the clock starts after the first packed buffer (stream opening)."""
    rows, examples, target_tokens, batches = 0, 0, 0, []
    packed = iterate_packed(num_examples + PACK_BUFFER)
    batches.append(next(packed)[0])
    start = time.perf_counter()
    for features, count in packed:
        rows += len(features["decoder_target_tokens"])
        examples += count
        target_tokens += int((features["decoder_target_tokens"] > 0).sum())
        batches.append(features)
    seconds = time.perf_counter() - start
    return {
        "examples_per_s": examples / seconds,
        "rows_per_s": rows / seconds,
        "target_tokens_per_s": target_tokens / seconds,
        "examples_per_row": examples / rows,
    }, batches


def time_examples(examples, num_examples: int) -> float:
    """Examples/s of an example iterator, after a warm-up buffer (opening, first reads)."""
    for _ in range(PACK_BUFFER):
        next(examples)
    start = time.perf_counter()
    for _ in range(num_examples):
        next(examples)
    return num_examples / (time.perf_counter() - start)


def time_packed_batches(input_pipeline: str, num_examples: int) -> float:
    """Examples/s served in packed training batches, after the first batch."""
    iterator = pipeline.make_train_iterator(
        MIXTURE,
        task_feature_lengths={"inputs": LENGTHS.inputs, "targets": LENGTHS.targets},
        batch_size=8,
        seed=0,
        buffer_size=PACK_BUFFER,
        use_cached=True,
        input_pipeline=input_pipeline,
    )
    next(iterator)
    warm = iterator.stats.examples
    start = time.perf_counter()
    while iterator.stats.examples - warm < num_examples:
        next(iterator)
    return (iterator.stats.examples - warm) / (time.perf_counter() - start)


def measure_cached_readers(num_examples: int, *, cache_dir: str) -> dict:
    """tf.data vs Grain examples/s on the cached mixture, as examples and as packed batches."""
    start = time.perf_counter()
    counts = bench_cache.cache_mixture(MIXTURE, cache_dir=cache_dir)
    cache_s = time.perf_counter() - start
    lengths = {"inputs": LENGTHS.inputs, "targets": LENGTHS.targets}
    tf_data = seqio.get_mixture_or_task(MIXTURE).get_dataset(
        lengths, split="train", use_cached=True, shuffle=True, seed=0, num_epochs=None
    )
    grain_dataset = grain_pipeline.make_mixture_dataset(
        MIXTURE, split="train", task_feature_lengths=lengths, seed=0
    )
    grain_examples = (grain_dataset[i] for i in itertools.count())
    return {
        "cached_examples": sum(counts.values()),
        "cache_build_s": cache_s,
        "examples_per_s": {
            "tf.data": time_examples(tf_data.as_numpy_iterator(), num_examples),
            "grain": time_examples(grain_examples, num_examples),
        },
        "packed_examples_per_s": {
            "tf.data": time_packed_batches("seqio", num_examples),
            "grain": time_packed_batches("grain", num_examples),
        },
    }


def print_cached_table(cached: dict) -> None:
    lines = [f"{'cached mixture':<24}{'tf.data':>12}{'grain':>12}{'grain / tf.data':>18}"]
    for title, key in (
        ("examples/s", "examples_per_s"),
        ("packed examples/s", "packed_examples_per_s"),
    ):
        tf_rate, grain_rate = cached[key]["tf.data"], cached[key]["grain"]
        lines.append(
            f"{title:<24}{tf_rate:>12,.0f}{grain_rate:>12,.0f}{grain_rate / tf_rate:>17.2f}x"
        )
    lines.append(f"({cached['cached_examples']:,} cached examples)")
    print("\n".join(lines))


def measure_export(num_examples: int) -> dict:
    """Runs an export in a child process (fresh RSS accounting); returns its figures."""
    with tempfile.TemporaryDirectory() as out_dir:
        result = subprocess.run(
            [
                sys.executable,
                __file__,
                "--export_child",
                out_dir,
                "--num_examples",
                str(num_examples),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"the export child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_export_child(out_dir: str, num_examples: int) -> None:
    register_bench_mixture()
    measure_render(50, warmup=0)  # Warms up tf.data so the baseline includes the runtime.
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    export.export_mixture(
        export.ExportConfig(
            MIXTURE,
            os.path.join(out_dir, "export"),
            max_examples=num_examples,
            examples_per_shard=500,
        )
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "examples_per_s": num_examples / seconds,
                "baseline_rss_mb": baseline / 2**20,
                "peak_rss_growth_mb": (peak - baseline) / 2**20,
            }
        )
    )


def measure_train_step(size: str, batches: list[dict], timed_steps: int = 2) -> dict:
    """Times train steps of the tiny or small T5 on packed rows of the benchmark data."""
    import jax

    from flan_jax.models import t5
    from flan_jax.testing.models import make_tiny_t5_config
    from flan_jax.training import adafactor, losses, partitioning, train_state, train_step

    overrides = SMALL_T5 if size == "small" else {"vocab_size": 4096}
    config = make_tiny_t5_config(**overrides)
    mesh = partitioning.make_mesh(partitioning.MeshConfig())
    rules = partitioning.get_logical_axis_rules("1d")
    param_axes = t5.param_logical_axes(config)
    optimizer = adafactor.make_adafactor(
        1e-3, param_axes=param_axes, config=adafactor.AdafactorConfig()
    )
    shardings = train_state.get_train_state_shardings(
        t5.abstract_params(config), param_axes, optimizer, mesh, rules
    )
    params = jax.tree.map(np.asarray, t5.init_params(config, jax.random.key(0)))
    state = train_state.init_sharded_train_state(params, optimizer, shardings)
    step = train_step.make_train_step(
        model=t5.T5Model(config),
        optimizer=optimizer,
        loss_config=losses.LossConfig(),
        mesh=mesh,
        rules=rules,
        state_shardings=shardings,
        # One device: activation constraints would change nothing.
        config=train_step.TrainStepConfig(constrain_activations=False),
    )
    rows = TRAIN_ROWS[size]
    batch = partitioning.make_global_batch(
        {name: value[:rows] for name, value in batches[0].items()}, mesh, rules
    )
    state, metrics = step(state, batch)  # Compiles.
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(timed_steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / timed_steps
    return {
        "rows": rows,
        "step_s": seconds,
        "rows_per_s": rows / seconds,
        "device": str(jax.devices()[0].platform),
    }


# The last commit with the single simplified few-shot form (3 shots, same template, separators
# drawn per example), the peer of FLAN's two forms.
SINGLE_FORM_COMMIT = "333adcb"
SINGLE_FORM_SHOTS = 3


def load_single_form_sources():
    """`tasks/sources.py` of `SINGLE_FORM_COMMIT` (the single-form few-shot), or None."""
    result = subprocess.run(
        ["git", "show", f"{SINGLE_FORM_COMMIT}:tasks/sources.py"],
        capture_output=True,
        text=True,
        check=False,
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    if result.returncode != 0:
        return None
    with tempfile.NamedTemporaryFile("w", suffix="_main_sources.py", delete=False) as f:
        f.write(result.stdout)
    spec = importlib.util.spec_from_file_location("main_sources", f.name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    os.unlink(f.name)
    return module


def few_shot_renderers(vocabulary: seqio.Vocabulary, dataset: str) -> dict:
    """name -> (render(key, fields) -> dict | None) for one CoT dataset's fs_opt task."""
    path = os.path.join(COT_DIR, f"{dataset}_train.tsv")
    task_templates = cot.load_cot_templates(dataset, few_shot=True).templates
    task_id = naming.TaskId("cot", dataset, "fs_opt")
    count_tokens = lambda text: len(vocabulary.encode(text))  # noqa: E731
    pool = tuple(itertools.islice(cot.read_cot_tsv(path), 256))
    renderers = {
        "zero-shot (same rows)": sources.RenderSpec(
            naming.TaskId("cot", dataset, "zs_opt"), task_templates
        )
    }
    for name, forms in (
        ("template_mix", ("template_mix",)),
        ("zero_to_ten", ("zero_to_ten",)),
        ("both forms (fs_opt)", few_shot.FEW_SHOT_FORMS),
    ):
        builder = few_shot.FewShotSpec(
            pool=pool, count_tokens=count_tokens, max_input_tokens=FEW_SHOT_BUDGET, forms=forms
        )
        renderers[name] = sources.RenderSpec(task_id, task_templates, few_shot=builder)
    result = {
        name: functools.partial(sources.render_example, spec) for name, spec in renderers.items()
    }
    single_form = load_single_form_sources()
    if single_form is not None:
        old = single_form.RenderSpec(
            task_id,
            task_templates,
            few_shot=single_form.FewShotSpec(
                pool, SINGLE_FORM_SHOTS, FEW_SHOT_BUDGET, count_tokens
            ),
        )
        result[f"single form ({SINGLE_FORM_COMMIT})"] = functools.partial(
            single_form.render_example, old
        )
    return result


def measure_few_shot(vocabulary: seqio.Vocabulary, pipeline_rate: float | None) -> dict:
    """Rendering rate, exemplars kept, drops and peak Python memory of each few-shot way."""
    rows = {
        d: list(itertools.islice(cot.read_cot_tsv(os.path.join(COT_DIR, f"{d}_train.tsv")), 2000))
        for d in available_datasets()
    }
    renderers = {d: few_shot_renderers(vocabulary, d) for d in rows}
    results = {}
    for name in next(iter(renderers.values())):
        emitted, prompt_tokens, seconds = 0, 0, 0.0
        for dataset, dataset_rows in rows.items():
            render = renderers[dataset][name]
            render(*dataset_rows[-1])  # Warm-up: the vocabulary and first-use costs.
            start = time.perf_counter()
            outputs = [render(key, fields) for key, fields in dataset_rows[:FEW_SHOT_ROWS]]
            seconds += time.perf_counter() - start
            kept = [o for o in outputs if o is not None]
            emitted += len(kept)
            prompt_tokens += sum(len(vocabulary.encode(o["inputs"])) for o in kept)
        tracemalloc.start()
        for dataset, dataset_rows in rows.items():
            for key, fields in dataset_rows[:FEW_SHOT_MEMORY_ROWS]:
                renderers[dataset][name](key, fields)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        total = FEW_SHOT_ROWS * len(rows)
        results[name] = {
            "examples_per_s": total / seconds,
            "emitted_fraction": emitted / total,
            "mean_prompt_tokens": prompt_tokens / max(emitted, 1),
            "peak_python_mb": peak / 2**20,
        }
    zero_s = 1 / results["zero-shot (same rows)"]["examples_per_s"]
    for figures in results.values():
        extra_s = max(1 / figures["examples_per_s"] - zero_s, 0.0)
        figures["few_shot_s_per_example"] = extra_s
        if pipeline_rate:
            figures["share_of_pipeline_time"] = extra_s / (extra_s + 1 / pipeline_rate)
    return {"budget": FEW_SHOT_BUDGET, "rows_per_dataset": FEW_SHOT_ROWS, "ways": results}


def print_few_shot_table(few: dict) -> None:
    lines = [
        f"{'few-shot (CoT fs_opt)':<24}{'examples/s':>12}{'emitted':>9}{'tokens':>8}"
        f"{'peak MB':>9}{'share':>8}"
    ]
    for name, f in few["ways"].items():
        share = f.get("share_of_pipeline_time")
        lines.append(
            f"{name:<24}{f['examples_per_s']:>12,.0f}{f['emitted_fraction']:>9.0%}"
            f"{f['mean_prompt_tokens']:>8.0f}{f['peak_python_mb']:>9.1f}"
            f"{'' if share is None else format(share, '.0%'):>8}"
        )
    print("\n".join(lines))


def print_table(results: dict) -> None:
    pipeline_rate = results["pipeline"]["render_tokenize_pack"]["examples_per_s"]
    lines = [
        f"{'stage':<24}{'examples/s':>14}{'pipeline / trainer':>22}",
        f"{'render':<24}{results['pipeline']['render']['examples_per_s']:>14,.0f}",
        f"{'render+tokenize+pack':<24}{pipeline_rate:>14,.0f}",
        f"{'export (jsonl)':<24}{results['export']['examples_per_s']:>14,.0f}",
    ]
    for size, trainer in results["trainer"].items():
        rate = trainer["examples_per_s"]
        lines.append(
            f"{'trainer ' + size + ' (' + trainer['source'] + ')':<24}{rate:>14,.1f}"
            f"{pipeline_rate / rate:>21,.1f}x"
        )
    lines.append(
        f"export peak RSS growth: {results['export']['peak_rss_growth_mb']:.1f} MB over "
        f"{results['export']['baseline_rss_mb']:.0f} MB after imports "
        f"({results['num_examples']} examples)"
    )
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num_examples", type=int, default=2000)
    parser.add_argument("--sizes", default="tiny,small", help="trainer sizes to time")
    parser.add_argument(
        "--trainer_rate",
        action="append",
        default=[],
        help="SIZE=EXAMPLES_PER_S: use this consumption rate instead of timing",
    )
    parser.add_argument(
        "--few_shot_only", action="store_true", help="run only the few-shot section"
    )
    parser.add_argument(
        "--cached_only", action="store_true", help="run only the cached readers section"
    )
    parser.add_argument("--cache_dir", help="the cached mixture's directory (default: temp)")
    parser.add_argument("--export_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_child:
        run_export_child(args.export_child, args.num_examples)
        return
    if not available_datasets():
        sys.exit(f"No CoT TSVs in {COT_DIR}; this benchmark needs ../shared/data.")
    vocabulary = register_bench_mixture()
    results = {
        "mixture": MIXTURE,
        "datasets": available_datasets(),
        "num_examples": args.num_examples,
        "lengths": [LENGTHS.inputs, LENGTHS.targets],
        "host": {"cpus": os.cpu_count(), "machine": platform.machine()},
    }
    if args.few_shot_only:
        results["few_shot"] = measure_few_shot(vocabulary, None)
        path = RESULTS_PATH.replace(".json", "_few_shot.json")
        file_io.write_json_atomically(path, results)
        print_few_shot_table(results["few_shot"])
        return
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="data_bench_cache_")
    cached = functools.partial(measure_cached_readers, args.num_examples, cache_dir=cache_dir)
    if args.cached_only:
        results["cached_readers"] = cached()
        file_io.write_json_atomically(RESULTS_PATH.replace(".json", "_cached.json"), results)
        print_cached_table(results["cached_readers"])
        return
    pipeline_rates, batches = measure_pipeline(args.num_examples)
    results["pipeline"] = {
        "render": measure_render(args.num_examples),
        "render_tokenize_pack": pipeline_rates,
    }
    results["export"] = measure_export(args.num_examples)
    results["few_shot"] = measure_few_shot(vocabulary, pipeline_rates["examples_per_s"])
    results["cached_readers"] = cached()
    given = dict(item.split("=", 1) for item in args.trainer_rate)
    unknown = sorted(set(args.sizes.split(",") + list(given)) - set(TRAIN_ROWS) - {""})
    if unknown:
        sys.exit(f"--sizes / --trainer_rate: unknown sizes {unknown}; known {list(TRAIN_ROWS)}.")
    results["trainer"] = {}
    for size in [s for s in args.sizes.split(",") if s]:
        if size in given:
            results["trainer"][size] = {"examples_per_s": float(given[size]), "source": "given"}
            continue
        timing = measure_train_step(size, batches)
        timing["examples_per_s"] = timing["rows_per_s"] * pipeline_rates["examples_per_row"]
        timing["source"] = f"timed, {timing['device']}"
        results["trainer"][size] = timing
    file_io.write_json_atomically(RESULTS_PATH, results)
    print_table(results)
    print_few_shot_table(results["few_shot"])
    print_cached_table(results["cached_readers"])


if __name__ == "__main__":
    main()
