"""The two pre-training mixtures of Instruction Pre-Training (arXiv 2406.14491; REFERENCE.md).

- From scratch (`register_pretrain_mixture`): a corpus whose texts are split by a seeded
  per-text hash (`corpora.is_augmented_text`) into an augmented part (1/5 of the texts in
  the paper), read from the synthesis output, and a raw part, read from the corpus; plus
  the instruction synthesizer's own training data.
- Domain-adaptive continual pre-training (`register_continual_mixture`): every domain text
  augmented, mixed 1:1 with general instruction data (a registered mixture of the
  collection, e.g. `flan2022_submix`, or `demo_mixture` on the CPU).

The shares of the parts are computed in one place, `part_rates`, and are the shares of the
examples the trainer draws (seqio's sampling by rate). From scratch, with augmented
fraction f and synthesizer-data share s:

    augmented = (1 - s) * f     raw = (1 - s) * (1 - f)     synthesizer_data = s

so f = 1/5 and s = 0.1 give 0.18, 0.72 and 0.1. The fraction is a share of texts; the
parts' examples are chunks of the target length, so a part whose documents are longer
(augmented ones) contributes more tokens per draw than its share of texts suggests (ours:
the paper mixes corpora, we sample chunks by rate). Continual, with instruction share i
(1/2 in the paper): augmented = 1 - i, instructions = i.

Every part is a targets-only task of chunks (`corpora`), except the instruction mixture,
which keeps its inputs: the continual run config puts the loss on the inputs too
(`DataConfig.loss_on_inputs`), so every token of the mixture is a next-token target.
The synthesizer's training data enters as `<task>:all_tokens` views: its token targets
cut into target-length chunks, without its loss mask.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import seqio
import tensorflow as tf

from flan_jax.errors import ConfigError
from flan_jax.ipt import corpora
from flan_jax.tasks import mixtures, sources
from flan_jax.tasks.optiml import pretrain_text

AUGMENTED = "augmented"
RAW = "raw_text"
SYNTHESIZER_DATA = "synthesizer_data"
INSTRUCTIONS = "instructions"
ALL_TOKENS_SUFFIX = ":all_tokens"
# Instruction Pre-Training augments 1/5 of the texts when pre-training from scratch, and
# mixes augmented domain texts 1:1 with general instructions when continuing pre-training
# (arXiv 2406.14491; REFERENCE.md "Instruction Pre-Training").
PAPER_AUGMENTED_FRACTION = 0.2
PAPER_INSTRUCTION_SHARE = 0.5


@dataclasses.dataclass(frozen=True)
class PretrainMixtureConfig:
    """The from-scratch mixture.

    Attributes:
      synthesis_dir: the synthesis output of the corpus's augmented part (unused when
        `augmented_fraction` is 0).
      raw_text_path: the corpus (JSONL "text" field, or a text file), all of it: its raw
        part is what `is_augmented_text` leaves out (unused when the fraction is 1).
      augmented_fraction: the share of texts augmented (paper: 1/5).
      synthesizer_data: the synthesizer's training data, a registered task or mixture;
        None: left out (then `synthesizer_share` must be 0). With share 0 it still gives
        the vocabulary. A vanilla baseline is `augmented_fraction=0, synthesizer_share=0`.
      synthesizer_share: its share of the drawn examples (ours: the paper mixes it in
        without a share REFERENCE.md records).
      raw_documents: "paragraphs" or "lines" for a text corpus.
      raw_jsonl_field: the text field of a JSONL corpus.
      seed: of the augmented/raw split and of the template draws.
      name: the mixture name.
    """

    synthesis_dir: str | None = None
    raw_text_path: str | None = None
    augmented_fraction: float = PAPER_AUGMENTED_FRACTION
    synthesizer_data: str | None = None
    synthesizer_share: float = 0.1
    raw_documents: str = "paragraphs"
    raw_jsonl_field: str = "text"
    seed: int = 0
    name: str = "ipt_pretrain"

    def __post_init__(self):
        if not 0.0 <= self.augmented_fraction <= 1.0:
            raise ConfigError(
                "PretrainMixtureConfig.augmented_fraction must be in [0, 1], got "
                f"{self.augmented_fraction!r}."
            )
        if not 0.0 <= self.synthesizer_share < 1.0:
            raise ConfigError(
                "PretrainMixtureConfig.synthesizer_share must be in [0, 1), got "
                f"{self.synthesizer_share!r}."
            )
        if self.synthesizer_share > 0 and not self.synthesizer_data:
            raise ConfigError(
                "PretrainMixtureConfig.synthesizer_share is "
                f"{self.synthesizer_share:g} but synthesizer_data is not set: name the "
                "synthesizer's training-data task or mixture, or set the share to 0."
            )


@dataclasses.dataclass(frozen=True)
class ContinualMixtureConfig:
    """The domain-adaptive continual pre-training mixture.

    Attributes:
      synthesis_dir: the synthesis output of the domain corpus (every text augmented).
      instruction_mixture: the general instruction data, a registered task or mixture.
      instruction_share: its share of the drawn examples (paper: 1:1, so 1/2).
      seed: of the template draws.
      name: the mixture name.
    """

    synthesis_dir: str | None = None
    instruction_mixture: str = "flan2022_submix"
    instruction_share: float = PAPER_INSTRUCTION_SHARE
    seed: int = 0
    name: str = "ipt_continual"

    def __post_init__(self):
        if not 0.0 < self.instruction_share < 1.0:
            raise ConfigError(
                "ContinualMixtureConfig.instruction_share must be in (0, 1), got "
                f"{self.instruction_share!r}."
            )


@dataclasses.dataclass(frozen=True)
class IptMixture:
    """A registered mixture: its name and {member task or mixture: share}, summing to 1."""

    name: str
    rates: Mapping[str, float]


def part_rates(config: PretrainMixtureConfig | ContinualMixtureConfig) -> dict[str, float]:
    """{part: share of the drawn examples} (formulas in the module docstring); no 0 shares."""
    if isinstance(config, ContinualMixtureConfig):
        rates = {AUGMENTED: 1.0 - config.instruction_share, INSTRUCTIONS: config.instruction_share}
    else:
        kept = 1.0 - config.synthesizer_share
        rates = {
            AUGMENTED: kept * config.augmented_fraction,
            RAW: kept * (1.0 - config.augmented_fraction),
            SYNTHESIZER_DATA: config.synthesizer_share,
        }
    return {part: rate for part, rate in rates.items() if rate > 0}


def _vocabulary_of(name: str, what: str) -> seqio.Vocabulary:
    if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
        raise ConfigError(
            f"{what} {name!r} is not a registered task or mixture; register it first (list "
            "its registration before this mixture's in trainer.train.register_tasks)."
        )
    return seqio.get_mixture_or_task(name).output_features["targets"].vocabulary


def register_all_tokens_view(task_name: str) -> str:
    """Registers `<task_name>:all_tokens`: the task's token targets, targets only, chunked.

    The view reads the task's examples (its own preprocessing, no sequence length), keeps
    `targets` (dropping a loss mask and the inputs, which the synthesizer's data leaves
    empty) and cuts them into target-length chunks without adding an EOS (the targets end
    with theirs). Idempotent.
    """
    view = task_name + ALL_TOKENS_SUFFIX
    if view in seqio.TaskRegistry.names():
        return view
    task = seqio.get_mixture_or_task(task_name)

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        examples = task.get_dataset(
            sequence_length=None, split=split, shuffle=shuffle_files, seed=seed, num_epochs=1
        )
        return examples.map(
            lambda ex: {"inputs": tf.zeros([0], ex["targets"].dtype), "targets": ex["targets"]}
        )

    seqio.TaskRegistry.add(
        view,
        source=seqio.FunctionDataSource(dataset_fn, splits=list(task.source.splits)),
        preprocessors=[functools.partial(pretrain_text.chunk_targets, append_eos=False)],
        output_features=sources.make_output_features(task.output_features["targets"].vocabulary),
    )
    return view


def _synthesizer_data_members(name: str, share: float) -> dict[str, float]:
    """{view of each task of `name`: share times the task's share of `name`}."""
    if name in seqio.TaskRegistry.names():
        return {register_all_tokens_view(name): share}
    return {
        register_all_tokens_view(task): share * rate
        for task, rate in mixtures.iter_mixture_rates(name)
    }


def register_pretrain_mixture(
    *, config: PretrainMixtureConfig, vocabulary: seqio.Vocabulary | None = None
) -> IptMixture:
    """Registers the from-scratch mixture `config.name` (module docstring).

    Args:
      config: the mixture's settings.
      vocabulary: of the corpus tasks; None: the synthesizer data's (which must then be
        registered first).
    """
    rates = part_rates(config)
    # Paths first, so a missing one fails before anything is registered.
    synthesis_dir = None
    if AUGMENTED in rates:
        synthesis_dir = corpora.check_synthesis_dir(config.synthesis_dir)
    raw_path = None
    if RAW in rates:
        raw_path = pretrain_text.check_corpus_path(config.raw_text_path, macro="RAW_TEXT_PATH")
    if vocabulary is None:
        if not config.synthesizer_data:
            raise ConfigError(
                "register_pretrain_mixture needs a vocabulary when no synthesizer data is "
                "mixed in (PretrainMixtureConfig.synthesizer_data)."
            )
        vocabulary = _vocabulary_of(config.synthesizer_data, "The synthesizer data")
    members: dict[str, float] = {}
    if synthesis_dir is not None:
        task = corpora.register_augmented_task(
            f"{config.name}:{AUGMENTED}",
            synthesis_dir=synthesis_dir,
            vocabulary=vocabulary,
            fraction=config.augmented_fraction,
            seed=config.seed,
        )
        members[task] = rates[AUGMENTED]
    if raw_path is not None:
        task = corpora.register_raw_part_task(
            f"{config.name}:{RAW}",
            path=raw_path,
            vocabulary=vocabulary,
            fraction=config.augmented_fraction,
            seed=config.seed,
            documents=config.raw_documents,
            jsonl_field=config.raw_jsonl_field,
        )
        members[task] = rates[RAW]
    if SYNTHESIZER_DATA in rates:
        assert config.synthesizer_data  # Checked by PretrainMixtureConfig.
        _vocabulary_of(config.synthesizer_data, "The synthesizer data")
        members.update(_synthesizer_data_members(config.synthesizer_data, rates[SYNTHESIZER_DATA]))
    name = mixtures.add_mixture(config.name, sorted(members.items()))
    return IptMixture(name, members)


def register_continual_mixture(*, config: ContinualMixtureConfig) -> IptMixture:
    """Registers the continual pre-training mixture `config.name` (module docstring).

    The instruction mixture must be registered first; its vocabulary is the corpus's.
    """
    synthesis_dir = corpora.check_synthesis_dir(config.synthesis_dir)
    vocabulary = _vocabulary_of(config.instruction_mixture, "The instruction mixture")
    rates = part_rates(config)
    augmented = corpora.register_augmented_task(
        f"{config.name}:{AUGMENTED}",
        synthesis_dir=synthesis_dir,
        vocabulary=vocabulary,
        fraction=1.0,
        seed=config.seed,
    )
    members = {augmented: rates[AUGMENTED], config.instruction_mixture: rates[INSTRUCTIONS]}
    name = mixtures.add_mixture(config.name, sorted(members.items()))
    return IptMixture(name, members)
