"""Multi-round synthesis: a synthesizer writes instruction-response pairs about raw texts.

The texts are split into rounds (Instruction Pre-Training, arXiv 2406.14491, multi-round
inference): consecutive texts form groups of `rounds`, and text `i` is the text of round
`i % rounds` of group `i // rounds`. Round r runs for every group of a shard as one batched
generation; the prompt of a text carries the texts of its group's earlier rounds with the
pairs generated for them, in order, as complete records, then the new text:

    texts t0 t1 t2 t3 t4, rounds=3  ->  groups (t0 t1 t2) (t3 t4)
    round 0 prompts:  [BOS] t0          [BOS] t3
    round 1 prompts:  [BOS] t0 p0 [EOS] [BOS] t1          [BOS] t3 p3 [EOS] [BOS] t4
    round 2 prompts:  [BOS] t0 p0 [EOS] [BOS] t1 p1 [EOS] [BOS] t2

Records and the new text are tokenised as `flan_jax.ipt.format` defines them
(`encode_example`, `encode_context`), so a prompt is a prefix of the synthesizer's training
sequence. BOS is the model's start token, which the decoder-only model prepends to every
prompt row itself: the row handed to the predictor is the prompt without its first BOS.

The prompt (its BOS included) holds at most `context_budget` tokens. When the earlier
records and the new text do not fit, the oldest records are left out whole, never cut; a
text that alone exceeds the budget is cut to it (counted as `cut_texts`) and carried
without earlier records. A record with no pairs is not carried: it would teach the
synthesizer to stop at once. A blank text is not sent to the model (`empty_texts`)
and gets no pairs.

Each generation is parsed with `format.parse_pairs`; the first `pairs_per_text` pairs are
kept and the rest count as dropped (`BEYOND_PAIRS_PER_TEXT`) with parse_pairs' reasons.

Output directory (the export's resumable protocol, `export.open_sharded_output`):

    OUT/
      manifest.json             settings, completed shards and their counts
      synthesis-00000.jsonl     SynthesisRecords of texts 0 .. shard_size - 1
      synthesis-00001.jsonl     ...

A shard holds whole groups, is generated from its own texts only and is renamed into place
when complete; a killed run resumes after its last recorded shard and produces the same
output as an uninterrupted one. Memory holds one shard of texts and records.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np
import seqio

from flan_jax.data import export, file_io
from flan_jax.errors import ConfigError, UserError
from flan_jax.inference import DecodeConfig, TokenPredictions
from flan_jax.ipt import format as ipt_format

BEYOND_PAIRS_PER_TEXT = "beyond_pairs_per_text"  # a well-formed pair past `pairs_per_text`
SHARD_PREFIX = "synthesis"
# The decoding options that change the output (a resume must repeat them).
_DECODING_FIELDS = (
    "method",
    "max_decode_len",
    "temperature",
    "top_k",
    "top_p",
    "num_beams",
    "alpha",
    "seed",
    "batch_size",  # sampling folds the batch's first row into the key
)


class SynthesisInputError(UserError, ValueError):
    """A bad input file of raw texts; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class SynthesisConfig:
    """How texts are split into rounds and shards, and how much each prompt may hold.

    Attributes:
      rounds: texts per group; text i is round i % rounds of its group.
      pairs_per_text: the most pairs kept per text (the paper's synthesizer writes about 5).
      context_budget: the most tokens of a prompt, its BOS included (the paper's
        synthesizer sequences are 4,096 tokens); generation adds `max_decode_len`.
      shard_size: texts per output shard, a multiple of `rounds` (whole groups).
    """

    rounds: int
    pairs_per_text: int
    context_budget: int = 4096
    shard_size: int = 1000

    def __post_init__(self):
        for name in ("rounds", "pairs_per_text", "shard_size"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"SynthesisConfig.{name} must be >= 1; got {getattr(self, name)}."
                )
        if self.context_budget < 2:
            raise ConfigError(
                "SynthesisConfig.context_budget must be >= 2 (BOS and one text token); got "
                f"{self.context_budget}."
            )
        if self.shard_size % self.rounds:
            raise ConfigError(
                f"SynthesisConfig.shard_size ({self.shard_size}) must be a multiple of "
                f"rounds ({self.rounds}) so a shard holds whole groups; use "
                f"{self.shard_size - self.shard_size % self.rounds or self.rounds}."
            )


class TokenPredictor(Protocol):
    """What synthesis needs of `flan_jax.inference.Predictor` (tests pass a stub)."""

    vocabulary: seqio.Vocabulary
    config: DecodeConfig

    def predict_tokens(
        self, token_rows: Sequence[Sequence[int]], *, rng: jax.Array | None = None
    ) -> TokenPredictions: ...

    def detokenize(self, tokens: Sequence[int] | np.ndarray) -> str: ...


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One text's prompt.

    Attributes:
      tokens: the whole prompt, starting with BOS (the model's start token).
      num_context_records: how many earlier records it carries (the newest ones).
      text_cut: whether the new text was cut to fit the budget alone.
    """

    tokens: np.ndarray
    num_context_records: int
    text_cut: bool

    @property
    def model_row(self) -> list[int]:
        """The predictor's input row: the model prepends the start token (= BOS) itself."""
        return [int(token) for token in self.tokens[1:]]


def build_prompt(
    vocabulary: seqio.Vocabulary,
    *,
    context: Sequence[ipt_format.SynthesisRecord],
    text: str,
    bos_id: int,
    budget: int,
) -> Prompt:
    """The newest records of `context` that fit with `text` in `budget` tokens, then `text`.

    Args:
      vocabulary: the synthesizer's vocabulary.
      context: the group's earlier records, oldest first (records without pairs are skipped).
      text: the new text (it must have at least one token).
      bos_id: the model's start token.
      budget: the most tokens of the prompt, BOS included.
    """
    new = ipt_format.encode_context(vocabulary, text, bos_id=bos_id)
    text_cut = len(new) > budget
    if text_cut:
        return Prompt(new[:budget], 0, True)
    room = budget - len(new)
    carried: list[np.ndarray] = []
    for record in reversed([r for r in context if r.pairs]):
        tokens, _ = ipt_format.encode_example(vocabulary, record, bos_id=bos_id)
        if len(tokens) > room:
            break  # older records are left out whole, so the carried ones stay contiguous
        carried.insert(0, tokens)
        room -= len(tokens)
    return Prompt(np.concatenate([*carried, new]).astype(np.int32), len(carried), False)


def select_pairs(
    generated: str, *, finished: bool, pairs_per_text: int
) -> tuple[tuple[ipt_format.Pair, ...], collections.Counter[str]]:
    """The first `pairs_per_text` well-formed pairs of a generation and the drops by reason."""
    parsed = ipt_format.parse_pairs(generated, finished=finished)
    dropped = collections.Counter(parsed.dropped)
    if len(parsed.pairs) > pairs_per_text:
        dropped[BEYOND_PAIRS_PER_TEXT] += len(parsed.pairs) - pairs_per_text
    return parsed.pairs[:pairs_per_text], dropped


def new_counts() -> dict[str, Any]:
    """Zero counts of a shard (or of a whole run)."""
    return {"texts": 0, "pairs": 0, "empty_texts": 0, "cut_texts": 0, "dropped": {}}


def add_counts(total: dict[str, Any], counts: Mapping[str, Any]) -> None:
    """Adds `counts` into `total` (both `new_counts()`'s shape)."""
    for key in ("texts", "pairs", "empty_texts", "cut_texts"):
        total[key] += counts[key]
    dropped = collections.Counter(total["dropped"]) + collections.Counter(counts["dropped"])
    total["dropped"] = dict(sorted(dropped.items()))


def synthesize_texts(
    texts: Sequence[str],
    *,
    predictor: TokenPredictor,
    bos_id: int,
    config: SynthesisConfig,
    rng: jax.Array,
) -> tuple[list[ipt_format.SynthesisRecord], dict[str, Any]]:
    """Synthesizes pairs for consecutive texts (whole groups), round by round.

    Args:
      texts: the texts; text i is round i % config.rounds of group i // config.rounds.
      predictor: generates completions of token rows (`num_samples` 1).
      bos_id: the model's start token.
      config: rounds, pairs per text and the prompt budget.
      rng: the sampling key; round r samples with `fold_in(rng, r)`.

    Returns:
      One record per text, in order, and the counts (`new_counts()`'s shape).
    """
    if predictor.config.num_samples != 1:
        raise ConfigError(
            f"synthesis decodes one completion per text; got num_samples="
            f"{predictor.config.num_samples}."
        )
    vocabulary, max_len = predictor.vocabulary, predictor.config.max_decode_len
    records: list[ipt_format.SynthesisRecord | None] = [None] * len(texts)
    counts = new_counts()
    counts["texts"] = len(texts)
    dropped: collections.Counter[str] = collections.Counter()
    for round_index in range(config.rounds):
        members = range(round_index, len(texts), config.rounds)
        prompts: dict[int, Prompt] = {}
        for i in members:
            if not texts[i].strip():
                records[i] = ipt_format.SynthesisRecord(texts[i])
                counts["empty_texts"] += 1
                continue
            group = records[i - round_index : i]
            prompts[i] = build_prompt(
                vocabulary,
                context=[r for r in group if r is not None],
                text=texts[i],
                bos_id=bos_id,
                budget=config.context_budget,
            )
            counts["cut_texts"] += prompts[i].text_cut
        completions = predictor.predict_tokens(
            [prompt.model_row for prompt in prompts.values()],
            rng=jax.random.fold_in(rng, round_index),
        )
        for i, completion in zip(prompts, completions, strict=True):
            completion = np.asarray(completion)
            # A completion is cut before EOS; one as long as the limit never reached EOS.
            pairs, text_dropped = select_pairs(
                predictor.detokenize(completion),
                finished=len(completion) < max_len,
                pairs_per_text=config.pairs_per_text,
            )
            records[i] = ipt_format.SynthesisRecord(texts[i], pairs)
            counts["pairs"] += len(pairs)
            dropped.update(text_dropped)
    counts["dropped"] = dict(sorted(dropped.items()))
    assert all(record is not None for record in records)
    return [r for r in records if r is not None], counts


# ------------------------------------------------------------------------------------------
# Input texts and the resumable output directory
# ------------------------------------------------------------------------------------------
def read_texts(path: str | os.PathLike) -> Iterator[str]:
    """Yields the "text" field of every line of a JSONL file, one line at a time.

    Raises:
      SynthesisInputError: "FILE:LINE: ..." for the first line that is not a JSON object
        with a string field "text".
    """
    for line_number, record in file_io.read_jsonl_objects(path, error_type=SynthesisInputError):
        text = record.get("text")
        if not isinstance(text, str):
            problem = (
                "missing field 'text'"
                if "text" not in record
                else (f"field 'text' must be a string, got {type(text).__name__}")
            )
            raise SynthesisInputError(
                f'{path}:{line_number}: {problem}; each line is {{"text": "..."}}.'
            )
        yield text


@dataclasses.dataclass(frozen=True)
class InputSummary:
    """What identifies an input file: its text count and content hash."""

    num_texts: int
    sha256: str


def check_input(path: str | os.PathLike) -> InputSummary:
    """Reads the whole input once (constant memory): every line valid, and its identity.

    Raises:
      SynthesisInputError: the file is missing, or a line is bad (see `read_texts`).
    """
    if not os.path.isfile(path):
        raise SynthesisInputError(f"{path}: no such file; --input is a JSONL file of texts.")
    num_texts = sum(1 for _ in read_texts(path))
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return InputSummary(num_texts, digest.hexdigest())


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}-{index:05d}.jsonl"


def decoding_settings(decode: DecodeConfig) -> dict[str, Any]:
    """The decoding options recorded in the manifest (those that change the output)."""
    return {field: getattr(decode, field) for field in _DECODING_FIELDS}


def synthesize_corpus(
    *,
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    predictor: TokenPredictor,
    bos_id: int,
    config: SynthesisConfig,
    synthesizer: Mapping[str, Any],
    on_shard: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Synthesizes (or resumes synthesizing) pairs for every text of a JSONL file.

    Args:
      input_path: JSONL, one `{"text": ...}` per line.
      out_dir: the output directory; a run with the same settings there is resumed.
      predictor: generates completions of token rows.
      bos_id: the model's start token.
      config: rounds, pairs per text, budget and shard size.
      synthesizer: what identifies the model (checkpoint path, step, dtype); recorded and
        checked on resume with the other settings.
      on_shard: called with the number of texts of each shard once it is recorded.

    Returns:
      The final manifest.

    Raises:
      SynthesisInputError: a bad input line.
      ExportError: `out_dir` holds a run with other settings.
    """
    out_dir = os.fspath(out_dir)
    summary = check_input(input_path)
    settings = {
        "synthesizer": dict(synthesizer),
        "input_sha256": summary.sha256,
        "num_input_texts": summary.num_texts,
        **dataclasses.asdict(config),
        "decoding": decoding_settings(predictor.config),
    }
    manifest = export.open_sharded_output(
        out_dir,
        settings=settings,
        start=lambda: {
            "input": os.path.abspath(input_path),
            "shards": [],
            "num_texts": 0,
            "totals": new_counts(),
            "complete": summary.num_texts == 0,
        },
    )
    # Past the texts of the shards already recorded.
    texts = itertools.islice(read_texts(input_path), manifest["num_texts"], None)
    key = jax.random.key(predictor.config.seed)
    while not manifest["complete"]:
        index = len(manifest["shards"])
        shard_texts = list(itertools.islice(texts, config.shard_size))
        records, counts = synthesize_texts(
            shard_texts,
            predictor=predictor,
            bos_id=bos_id,
            config=config,
            rng=jax.random.fold_in(key, index),
        )
        ipt_format.write_records(os.path.join(out_dir, shard_name(index)), records)
        manifest["shards"].append({"file": shard_name(index), **counts})
        manifest["num_texts"] += len(shard_texts)
        add_counts(manifest["totals"], counts)
        manifest["complete"] = manifest["num_texts"] >= summary.num_texts
        export.write_manifest(out_dir, manifest)
        if on_shard is not None:
            on_shard(len(shard_texts))
    return manifest


def read_synthesized_records(out_dir: str | os.PathLike) -> Iterator[ipt_format.SynthesisRecord]:
    """Yields the records of a synthesis directory's recorded shards, in input order."""
    manifest = export.read_manifest(os.fspath(out_dir))
    if manifest is None:
        raise export.ExportError(
            f"{out_dir}: no {export.MANIFEST_NAME}; not a synthesis output directory."
        )
    for shard in manifest["shards"]:
        yield from ipt_format.read_records(os.path.join(out_dir, shard["file"]))
