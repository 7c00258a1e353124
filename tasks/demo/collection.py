"""The built-in demo collection: its tasks, splits, mixture, metrics and vocabulary.

Five clusters (see `generators.py`), each with a template file under `templates/`. The
templates of a file are divided by a fixed rule: inverted templates form the inverted
task; of the others, the last `NUM_HELD_OUT_TEMPLATES` are never trained on, so evaluation
can measure generalisation to unseen instructions. Registered tasks, for cluster `C`:

    demo__C__zs_opt, demo__C__zs_noopt   seen templates; splits train and validation
                                         (arith has no options, so only zs_noopt)
    demo__C__inverted__zs_noopt          inverted templates; train and validation
    demo__C.unseen__zs_opt (or _noopt)   held-out templates; validation only

Validation examples are held-out instances (never generated for train, see
`generators.is_held_out`). The mixture `DEMO_MIXTURE` trains on every task but the
`.unseen` ones; `demo_eval_tasks()` names, per cluster, the seen and unseen evaluation
tasks. Accuracy is exact match after `postprocess_answer`, which keeps only N from a
chain of thought ending in "So the answer is N.".
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import seqio

from flan_jax.data import vocabularies
from flan_jax.tasks import data_paths, family, naming, sources, templates
from flan_jax.tasks import few_shot as few_shot_lib
from flan_jax.tasks.demo import generators

CLUSTERS = tuple(generators.GENERATORS)
DEMO_MIXTURE = "demo_mixture"
# Short enough for a tiny T5 on a CPU; every demo example fits (checked by a test).
DEMO_TASK_FEATURE_LENGTHS = {"inputs": 64, "targets": 32}
NUM_TRAIN_EXAMPLES = 5000
NUM_VALIDATION_EXAMPLES = 200
NUM_HELD_OUT_TEMPLATES = 2
RENDER_SEED = 0
# Flan 2022 mixes originals : inverted tasks as 1 : 0.3 (REFERENCE.md, CoT and Dialog).
INVERTED_RATE = 0.3
# BPE rather than T5's unigram: on this small, repetitive corpus the unigram trainer keeps
# only ~500 pieces and splits common words ("ha" + "s"), making sequences ~35% longer.
# Byte fallback lets `flan-jax infer` encode any new instruction without unknown tokens.
DEMO_VOCAB_SETTINGS = vocabularies.SentencePieceSettings(
    vocab_size=1000, model_type="bpe", byte_fallback=True, hard_vocab_limit=False
)
_TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
_COT_ANSWER_RE = re.compile(r"[Ss]o the answer is\s*(.*?)\s*\.?\s*$")


@dataclasses.dataclass(frozen=True)
class DemoTask:
    """One demo task before registration.

    Attributes:
      cluster: the generator / template family.
      spec: how its examples are rendered (task id, templates, seed).
      splits: the seqio splits it offers.
      held_out_templates: whether its templates are the evaluation-only ones.
      chain_of_thought: whether targets end in "So the answer is N.".
    """

    cluster: str
    spec: sources.RenderSpec
    splits: tuple[str, ...]
    held_out_templates: bool
    chain_of_thought: bool

    @property
    def name(self) -> str:
        return self.spec.task_name


def load_demo_templates(cluster: str) -> templates.TemplateSet:
    return templates.load_template_set(os.path.join(_TEMPLATE_DIR, f"{cluster}.yaml"))


def split_templates(template_set: templates.TemplateSet) -> dict[str, tuple]:
    """{"seen", "unseen", "inverted"} templates of a file, by the rule in the docstring."""
    inverted = tuple(t for t in template_set.templates if t.type.endswith("inverted"))
    direct = tuple(t for t in template_set.templates if not t.type.endswith("inverted"))
    if len(direct) <= NUM_HELD_OUT_TEMPLATES or not inverted:
        raise templates.TemplateError(
            f"{template_set.path}: a demo template file needs more than "
            f"{NUM_HELD_OUT_TEMPLATES} direct templates and at least one inverted one."
        )
    return {
        "seen": direct[:-NUM_HELD_OUT_TEMPLATES],
        "unseen": direct[-NUM_HELD_OUT_TEMPLATES:],
        "inverted": inverted,
    }


def _uses_options(cluster: str) -> bool:
    return any(t.uses_options for t in load_demo_templates(cluster).templates)


def eval_variant(cluster: str) -> str:
    """The variant evaluated per cluster: with options where the cluster has them."""
    return "zs_opt" if _uses_options(cluster) else "zs_noopt"


def list_demo_tasks(
    *, clusters: Sequence[str] = CLUSTERS, seed: int = RENDER_SEED
) -> list[DemoTask]:
    """Every demo task of `clusters`, in a fixed order; registers nothing.

    Args:
      clusters: the clusters whose tasks are listed.
      seed: the rendering seed of their specs.
    """
    tasks = []
    for cluster in clusters:
        parts = split_templates(load_demo_templates(cluster))
        cot = any(t.type == "cot" for t in parts["seen"])
        variants = ("zs_opt", "zs_noopt") if _uses_options(cluster) else ("zs_noopt",)
        both = ("train", "validation")
        for variant in variants:
            tasks.append(
                DemoTask(
                    cluster,
                    sources.RenderSpec(
                        naming.TaskId("demo", cluster, variant), parts["seen"], seed
                    ),
                    both,
                    False,
                    cot,
                )
            )
        tasks.append(
            DemoTask(
                cluster,
                sources.RenderSpec(
                    naming.TaskId("demo", cluster, "zs_noopt", inverted=True),
                    parts["inverted"],
                    seed,
                ),
                both,
                False,
                False,
            )
        )
        tasks.append(
            DemoTask(
                cluster,
                sources.RenderSpec(
                    naming.TaskId("demo", f"{cluster}.unseen", eval_variant(cluster)),
                    parts["unseen"],
                    seed,
                ),
                ("validation",),
                True,
                cot,
            )
        )
    return tasks


def demo_eval_tasks() -> dict[str, dict[str, str]]:
    """Per cluster, {"seen": task, "unseen": task} to evaluate on their validation split."""
    result: dict[str, dict[str, str]] = {}
    for task in list_demo_tasks():
        if task.spec.task_id.inverted or task.spec.task_id.variant != eval_variant(task.cluster):
            continue
        result.setdefault(task.cluster, {})["unseen" if task.held_out_templates else "seen"] = (
            task.name
        )
    return result


def split_size(split: str) -> int:
    return NUM_TRAIN_EXAMPLES if split == "train" else NUM_VALIDATION_EXAMPLES


def _as_text(value: Any) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8")
    return str(value)


def extract_cot_answer(text: str) -> str:
    """ "... 8 - 2 = 6. So the answer is 6." -> "6"; text without the phrase -> ""."""
    last_line = " ".join(_as_text(text).split())
    match = _COT_ANSWER_RE.search(last_line)
    return match.group(1) if match else ""


def postprocess_answer(output: Any, example: Any = None, is_target: bool = False) -> str:
    """Whitespace-normalised text (what exact match compares)."""
    del example, is_target  # Targets and predictions are normalised the same way.
    return " ".join(_as_text(output).split())


def postprocess_cot_answer(output: Any, example: Any = None, is_target: bool = False) -> str:
    """The final answer N of a chain of thought ending in "So the answer is N."."""
    del example, is_target
    return extract_cot_answer(output)


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """seqio metric: percentage of predictions equal to their target (option accuracy
    when the target is an option or its label)."""
    if len(targets) != len(predictions):
        raise ValueError(f"exact_match: {len(targets)} targets but {len(predictions)} predictions.")
    if not targets:
        return {"accuracy": 0.0}
    hits = sum(_as_text(t) == _as_text(p) for t, p in zip(targets, predictions))
    return {"accuracy": 100.0 * hits / len(targets)}


def list_demo_datasets() -> tuple[str, ...]:
    """The demo catalog: its clusters (each registers its seen, inverted and unseen tasks)."""
    return CLUSTERS


def load_demo_split(
    dataset: str, *, split: str, paths: data_paths.DataPaths | None = None, seed: int = 0
) -> Iterator[sources.RawExample]:
    """The generated examples of cluster `dataset`'s `split` ("train" or "validation").

    Args:
      dataset: the cluster.
      split: "train" (`NUM_TRAIN_EXAMPLES`) or "validation" (held-out instances).
      paths: unused: the data is generated.
      seed: the generation seed.
    """
    del paths  # Generated, not read.
    return generators.iterate_examples(dataset, split, split_size(split), seed=seed)


def missing_data(dataset: str, *, paths: data_paths.DataPaths | None = None) -> str | None:
    """Always None once `dataset` is a known cluster: the demo data is generated."""
    del paths
    family.select_datasets("demo", [dataset], CLUSTERS)
    return None


def _same_vocabulary(a: seqio.Vocabulary, b: seqio.Vocabulary) -> bool:
    # The same model cached in two directories is the same vocabulary; seqio's equality
    # also compares the file paths.
    if isinstance(a, seqio.SentencePieceVocabulary) and isinstance(
        b, seqio.SentencePieceVocabulary
    ):
        return a.sp_model == b.sp_model and a.extra_ids == b.extra_ids
    return a == b


def _check_vocabulary(task_name: str, vocabulary: seqio.Vocabulary) -> None:
    registered = seqio.TaskRegistry.get(task_name).output_features["targets"].vocabulary
    if not _same_vocabulary(registered, vocabulary):
        raise ValueError(
            f"Demo task {task_name} is already registered with another vocabulary "
            f"({getattr(registered, 'sentencepiece_model_file', registered)}); register the "
            "demo tasks once per process with one vocabulary."
        )


def _register_task(task: DemoTask, vocabulary: seqio.Vocabulary) -> seqio.Task:
    return sources.register_rendered_task(
        task.spec,
        family.bind_split(load_demo_split, task.cluster, paths=None, seed=task.spec.seed),
        vocabulary=vocabulary,
        splits=task.splits,
        num_input_examples={split: split_size(split) for split in task.splits},
        metric_fns=[exact_match],
        postprocess_fn=postprocess_cot_answer if task.chain_of_thought else postprocess_answer,
    )


def register_demo_tasks(
    vocabulary: seqio.Vocabulary,
    *,
    datasets: Sequence[str] | None = None,
    paths: data_paths.DataPaths | None = None,
    seed: int = 0,
    few_shot: few_shot_lib.FewShotSettings | None = None,
) -> list[str]:
    """Registers the demo tasks of `datasets` and, with every cluster, `DEMO_MIXTURE`.

    Idempotent for the same vocabulary; raises if called again with a different one.

    Args:
      vocabulary: the output features' vocabulary (`get_demo_vocabulary()` for the demo).
      datasets: the clusters to register (None: all of `CLUSTERS`).
      paths: unused: the data is generated.
      seed: the generation and rendering seed (0: the collection the demo was tuned on).
      few_shot: unused: the demo has no few-shot tasks.

    Returns:
      The task names.
    """
    del paths, few_shot  # The demo generates its data and has no few-shot variants.
    clusters = family.select_datasets("demo", datasets, CLUSTERS)
    names = []
    mixture_rates = []
    for task in list_demo_tasks(clusters=clusters, seed=seed):
        if task.name in seqio.TaskRegistry.names():
            _check_vocabulary(task.name, vocabulary)
        else:
            _register_task(task, vocabulary)
        names.append(task.name)
        if not task.held_out_templates:
            rate = INVERTED_RATE if task.spec.task_id.inverted else 1.0
            mixture_rates.append((task.name, rate))
    # Only the whole collection makes the mixture: one over some clusters would stay
    # registered under the collection's name.
    if set(clusters) == set(CLUSTERS) and DEMO_MIXTURE not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add(DEMO_MIXTURE, mixture_rates)
    return names


def make_demo_corpus(examples_per_cluster: int = 600) -> list[str]:
    """Texts the demo vocabulary is trained on: every template, with and without options."""
    texts = []
    for cluster in CLUSTERS:
        template_set = load_demo_templates(cluster)
        for key, fields in generators.iterate_examples(cluster, "train", examples_per_cluster):
            rng = templates.example_rng(RENDER_SEED, f"demo/{cluster}/corpus", key)
            index = int(key.split(":")[1])
            template = template_set.templates[index % len(template_set.templates)]
            rendered = templates.render(
                template,
                fields,
                with_options=bool(index % 2),
                rng=rng,
                where=f"demo corpus {cluster} {key}:",
            )
            texts.extend([rendered.inputs, rendered.targets])
    return texts


def get_demo_vocabulary(cache_dir: str | None = None) -> seqio.SentencePieceVocabulary:
    """The demo SentencePiece vocabulary, built from `make_demo_corpus` on first use.

    Args:
      cache_dir: where the model is cached; `vocabularies.default_cache_dir()` when None
        (a training run may pass its model directory).
    """
    return vocabularies.get_or_build_vocabulary(
        "demo_spm", make_demo_corpus, DEMO_VOCAB_SETTINGS, cache_dir=cache_dir
    )


FAMILY = family.TaskFamily(
    "demo", list_demo_datasets, load_demo_split, missing_data, register_demo_tasks
)
