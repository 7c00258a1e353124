"""The OPT-IML instruction-tuning mixture (arXiv 2212.12017; REFERENCE.md "OPT-IML").

`register_optiml_recipe(config)` registers one seqio mixture that the trainer samples:

- instruction tasks, two-level sampled (`sampling.py`): a benchmark by its share, then a
  task of it by min(examples, 4,096). A task's benchmark is its source (flan2021, t0,
  niv2) or, with `benchmark="category"`, its category in `heldout/categories.tsv` (the
  demo collection has a single source);
- reasoning (the CoT family; on the demo, the clusters whose templates are chains of
  thought) as benchmark "reasoning", about 1% of the mixture;
- pre-training text from a local corpus (`pretrain_text.py`), about 5%;
- no dialogue (the Dialog family), which OPT-IML found hurt;
- optionally MetaICL-style demonstrations: each instruction task replaced by a copy whose
  inputs start with k exemplars of the same task (`few_shot.FewShotSpec`, one template
  drawn per exemplar, drawn with the example's seeded generator).

What is held out (`held_out`):

- "optiml_levels": OPT-IML's three generalization levels (`heldout/categories.py`): the
  mixture holds only the seen tasks' seen-instance copies, so no task of a held-out
  category, no held-out task and no held-out instance is trained on (demonstrations are
  drawn from seen instances only);
- "templates" (demo only): the demo's held-out templates (`demo__C.unseen__...`), never
  in the mixture, so accuracy on them before and after training compares with the T5
  demo's.

Example (the CPU demo's mixture, `runs/optiml_demo_cpu.gin`):

    recipe = register_optiml_recipe(RecipeConfig(demo=True, held_out="templates",
                                                 benchmark="category",
                                                 pretrain_text_path=DEMO_PRETRAIN_TEXT_PATH))
    recipe.name                            # "optiml_recipe_demo"
    recipe.benchmarks["demo__arith__zs_noopt"]        # "reasoning"
    recipe.rates["optiml_recipe_demo:pretraining_text"]  # 0.05
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator, Mapping, Sequence

import seqio

from flan_jax.errors import ConfigError
from flan_jax.tasks import few_shot, mixtures, naming, sources
from flan_jax.tasks.demo import collection as demo_collection
from flan_jax.tasks.heldout import categories, instances
from flan_jax.tasks.optiml import pretrain_text, sampling

HELD_OUT_MODES = ("optiml_levels", "templates")
BENCHMARK_KEYS = ("source", "category")
REASONING = "reasoning"
PRETRAINING_TEXT = "pretraining_text"
# OPT-IML dropped dialogue data, which hurt its benchmarks (arXiv 2212.12017; REFERENCE.md).
EXCLUDED_SOURCES = ("dialog",)
DEMO_PRETRAIN_TEXT_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo", "pretrain_text.txt"
)


def demo_pretrain_text_path() -> str:
    """The demo's small pre-training corpus (gin: `@optiml_recipe.demo_pretrain_text_path()`)."""
    return DEMO_PRETRAIN_TEXT_PATH


@dataclasses.dataclass(frozen=True)
class RecipeConfig:
    """The knobs of the OPT-IML mixture.

    Attributes:
      demo: the demo collection (else the Flan collection's registered families).
      held_out: one of `HELD_OUT_MODES` (module docstring); "templates" needs `demo`.
      benchmark: what groups the instruction tasks, one of `BENCHMARK_KEYS`.
      cap: the per-task cap of examples-proportional sampling (OPT-IML: 4,096).
      pretrain_share: share of pre-training text (OPT-IML: about 5%); 0 leaves it out.
      pretrain_text_path: the corpus (required when `pretrain_share` > 0).
      pretrain_documents: "paragraphs" or "lines" for text corpora.
      pretrain_jsonl_field: the document field of a JSONL corpus.
      reasoning_share: share of the reasoning tasks (OPT-IML: about 1%); None samples
        them by capped size like any benchmark.
      shares_path: a benchmark shares file (`sampling.load_benchmark_shares`); it must
        not also give "reasoning" or "pretraining_text".
      num_demonstrations: MetaICL exemplars prepended to each input; 0: none.
      demonstration_input_tokens: the input budget the exemplars are pruned to.
      held_out_task_fraction, instance_fraction, seed: of the OPT-IML split
        (`categories.register_optiml_protocol`); `seed` also seeds the demonstrations.
      name: the mixture name (None: "optiml_recipe_demo" or "optiml_recipe_flan").
    """

    demo: bool = False
    held_out: str = "optiml_levels"
    benchmark: str = "source"
    cap: int = sampling.OPTIML_TASK_CAP
    pretrain_share: float = 0.05
    pretrain_text_path: str | None = None
    pretrain_documents: str = "paragraphs"
    pretrain_jsonl_field: str = "text"
    reasoning_share: float | None = 0.01
    shares_path: str = sampling.SHARES_PATH
    num_demonstrations: int = 0
    demonstration_input_tokens: int = 1920
    held_out_task_fraction: float = 0.1
    instance_fraction: float = 0.1
    seed: int = 0
    name: str | None = None

    def __post_init__(self):
        if self.held_out not in HELD_OUT_MODES:
            raise ConfigError(
                f"RecipeConfig.held_out must be one of {HELD_OUT_MODES}, got {self.held_out!r}."
            )
        if self.held_out == "templates" and not self.demo:
            raise ConfigError(
                "RecipeConfig.held_out='templates' is the demo's held-out templates; set "
                "demo=True or held_out='optiml_levels'."
            )
        if self.benchmark not in BENCHMARK_KEYS:
            raise ConfigError(
                f"RecipeConfig.benchmark must be one of {BENCHMARK_KEYS}, got {self.benchmark!r}."
            )
        for field in ("pretrain_share", "reasoning_share"):
            value = getattr(self, field)
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"RecipeConfig.{field} must be in [0, 1), got {value!r}.")
        if self.num_demonstrations < 0 or self.demonstration_input_tokens < 1:
            raise ConfigError(
                "RecipeConfig.num_demonstrations must be >= 0 and demonstration_input_tokens "
                f">= 1, got {self.num_demonstrations} and {self.demonstration_input_tokens}."
            )

    @property
    def mixture_name(self) -> str:
        return self.name or f"optiml_recipe_{'demo' if self.demo else 'flan'}"


@dataclasses.dataclass(frozen=True)
class RecipeMixture:
    """A registered OPT-IML mixture.

    Attributes:
      name: the seqio mixture.
      rates: {task: share of the mixture}, summing to 1.
      benchmarks: {task: its benchmark}.
      protocol: the OPT-IML split it excludes (None with held_out="templates").
    """

    name: str
    rates: Mapping[str, float]
    benchmarks: Mapping[str, str]
    protocol: categories.OptImlProtocol | None


def base_task_name(member: str) -> str:
    """The family task a member derives from: "T:seen_instances_s0_b1000" -> "T"."""
    return member.partition(":")[0]


@functools.cache
def _demo_reasoning_clusters() -> frozenset[str]:
    return frozenset(t.cluster for t in demo_collection.list_demo_tasks() if t.chain_of_thought)


def is_reasoning(task_id: naming.TaskId) -> bool:
    """CoT tasks: the CoT family, and the demo clusters whose targets are chains of thought."""
    if task_id.source == "cot":
        return True
    return task_id.source == "demo" and task_id.dataset in _demo_reasoning_clusters()


def _instruction_members(
    config: RecipeConfig,
) -> tuple[list[str], categories.OptImlProtocol | None]:
    if config.held_out == "templates":
        names = [t.name for t in demo_collection.list_demo_tasks() if not t.held_out_templates]
        missing = [n for n in names if n not in seqio.TaskRegistry.names()]
        if missing:
            raise ConfigError(
                f"The demo tasks {missing[:3]}... are not registered; register them first "
                "(demo.register_demo_tasks)."
            )
        return names, None
    protocol = categories.register_optiml_protocol(
        demo=config.demo,
        held_out_task_fraction=config.held_out_task_fraction,
        instance_fraction=config.instance_fraction,
        seed=config.seed,
        cap=config.cap,
    )
    return list(seqio.get_mixture_or_task(protocol.train_mixture).rate_per_task_name), protocol


def _num_examples(task_id: naming.TaskId, counts: mixtures.Counts, cap: int) -> int:
    if task_id.source == "demo":
        return demo_collection.NUM_TRAIN_EXAMPLES
    # An unknown count samples at the cap (mixtures.task_rate's fallback).
    return int(mixtures.task_rate(task_id, counts, cap=cap))


def _benchmark(task_id: naming.TaskId, config: RecipeConfig, category_of: Mapping) -> str:
    if is_reasoning(task_id):
        return REASONING
    if config.benchmark == "source":
        return task_id.source
    key = (task_id.source, task_id.dataset)
    if key not in category_of:
        raise ConfigError(
            f"Task {naming.make_task_name(task_id)} has no category in "
            f"{categories.CATEGORIES_PATH}; regenerate it (tasks/heldout/build_categories.py) "
            "or use RecipeConfig.benchmark='source'."
        )
    return category_of[key]


def _seen_exemplars(
    source: sources.RenderedSource, task_name: str, config: RecipeConfig
) -> Iterator[sources.RawExample]:
    """The task's train examples an exemplar may be drawn from: never a held-out instance."""
    for key, fields in source.load_split("train"):
        if config.held_out == "optiml_levels" and instances.is_held_out_instance(
            task_name, key, fraction=config.instance_fraction, seed=config.seed
        ):
            continue
        yield key, fields


def register_demonstration_copy(task_name: str, config: RecipeConfig) -> str:
    """Registers `task_name` with `config.num_demonstrations` exemplars before each input.

    The copy `<task_name>:demonstrations_k<k>` renders like the task's few-shot variant
    (one template drawn per exemplar, FLAN's template-mix layout, pruned to
    `demonstration_input_tokens`); its exemplars come from the task's seen train examples.
    """
    task = seqio.get_mixture_or_task(task_name)
    source = task.source
    if not isinstance(source, sources.RenderedSource):
        raise TypeError(f"Task {task_name!r} is not rendered through our templates.")
    spec = source.render_spec
    vocabulary = task.output_features["inputs"].vocabulary
    pool = few_shot.LazyExemplarPool(lambda: _seen_exemplars(source, task_name, config))
    demonstrations = few_shot.FewShotSpec(
        pool=pool,
        count_tokens=lambda text: len(vocabulary.encode(text)),
        num_shots=config.num_demonstrations,
        max_input_tokens=config.demonstration_input_tokens,
        forms=("template_mix",),
    )
    few_shot_variant = spec.task_id.variant.replace("zs_", "fs_")
    copy = dataclasses.replace(
        spec,
        task_id=dataclasses.replace(spec.task_id, variant=few_shot_variant),
        few_shot=demonstrations,
        registered_name=f"{task_name}:demonstrations_k{config.num_demonstrations}",
    )
    return sources.register_rendered_copy(task, copy).name


def _with_demonstrations(member: str, config: RecipeConfig) -> str:
    copy = register_demonstration_copy(base_task_name(member), config)
    if config.held_out != "optiml_levels":
        return copy
    seen, _ = instances.register_instance_split(
        copy, fraction=config.instance_fraction, seed=config.seed
    )
    return seen


def _given_shares(config: RecipeConfig) -> dict[str, float]:
    given = sampling.load_benchmark_shares(config.shares_path)
    fixed = {PRETRAINING_TEXT: config.pretrain_share, REASONING: config.reasoning_share}
    for benchmark, share in fixed.items():
        if not share:  # None: sampled by size; 0: left out (`_sampled_tasks`).
            continue
        if benchmark in given:
            raise ConfigError(
                f"{config.shares_path} gives a share for {benchmark!r}, which RecipeConfig "
                "fixes (pretrain_share / reasoning_share); remove one of them."
            )
        given[benchmark] = share
    return given


def _sampled_tasks(members: Sequence[str], config: RecipeConfig) -> list[sampling.SampledTask]:
    counts = mixtures.load_counts()
    category_of = {(r.source, r.dataset): r.category for r in categories.load_category_catalog()}
    tasks = []
    for member in members:
        task_id = naming.parse_task_name(base_task_name(member))
        if task_id.source in EXCLUDED_SOURCES or task_id.few_shot:
            continue
        if config.reasoning_share == 0 and is_reasoning(task_id):
            continue
        name = _with_demonstrations(member, config) if config.num_demonstrations else member
        tasks.append(
            sampling.SampledTask(
                name,
                _benchmark(task_id, config, category_of),
                _num_examples(task_id, counts, config.cap),
            )
        )
    return tasks


def register_optiml_recipe(*, config: RecipeConfig = RecipeConfig()) -> RecipeMixture:
    """Registers the OPT-IML mixture `config.mixture_name` (see the module docstring).

    The task families must be registered first (`registry.register_catalog`, or
    `demo.register_demo_tasks` for the demo); a gin run file lists both in
    `trainer.train.register_tasks`, this one last.
    """
    members, protocol = _instruction_members(config)
    tasks = _sampled_tasks(members, config)
    if not tasks:
        raise ConfigError(f"Mixture {config.mixture_name}: no instruction task to train on.")
    if config.pretrain_share > 0:
        path = pretrain_text.check_corpus_path(config.pretrain_text_path)
        vocabulary = seqio.get_mixture_or_task(tasks[0].name).output_features["targets"].vocabulary
        text_task = pretrain_text.register_pretrain_text_task(
            f"{config.mixture_name}:{PRETRAINING_TEXT}",
            path=path,
            vocabulary=vocabulary,
            documents=config.pretrain_documents,
            jsonl_field=config.pretrain_jsonl_field,
        )
        tasks.append(sampling.SampledTask(text_task, PRETRAINING_TEXT, 1))
    given = _given_shares(config)
    rates = sampling.two_level_rates(tasks, shares=given, cap=config.cap)
    name = mixtures.add_mixture(config.mixture_name, sorted(rates.items()))
    return RecipeMixture(name, rates, {t.name: t.benchmark for t in tasks}, protocol)
