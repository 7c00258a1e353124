"""The instruction synthesizer's text format: the one definition every part of `ipt/` uses.

A synthesis record is a raw text and the instruction-response pairs about it. The
synthesizer reads the text and writes the pairs, so both its training data and its prompts
render a record the same way:

    render_context("Tides follow the moon.")   == "Tides follow the moon.\\n\\n"
    render_pairs([Pair("What do tides follow?", "The moon.")])
        == "Q: What do tides follow?\\n\\nA: The moon."

Raw text, instruction and response are separated by blank lines (Instruction Pre-Training,
arXiv 2406.14491, section 2.1). Blank lines alone cannot delimit pairs, though: a T5-layout
SentencePiece vocabulary (the demo's) normalises every newline to a space, so a decoded
generation is one line. Each instruction therefore starts with `INSTRUCTION_MARKER` and each
response with `RESPONSE_MARKER` (our own markers, chosen as plain ASCII that any vocabulary
encodes without unknown pieces). A marker counts at the start of the text or after
whitespace, so "FAQ: " holds no marker.

At the token level (`encode_example`) a record is

    [BOS] tok(render_context(text)) tok(render_pairs(pairs)) [EOS]

with a loss mask of 1 on the pair tokens and the EOS and 0 on BOS and the text: the
synthesizer learns to write pairs, not to reproduce texts. BOS is the model's start token
(`DecoderConfig.start_token_id`; 0 for the demo's T5-layout vocabulary, which has no BOS
piece) and EOS the vocabulary's `eos_id`.

`parse_pairs` reads a generation back into pairs, dropping and counting malformed ones
(`DROP_REASONS`) rather than failing: a synthesizer's output is untrusted text.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import seqio

from flan_jax.data import file_io
from flan_jax.errors import UserError

INSTRUCTION_MARKER = "Q: "
RESPONSE_MARKER = "A: "
SEPARATOR = "\n\n"

# A marker at the start of the text or right after whitespace; group 1 is its letter.
_MARKER_PATTERN = re.compile(r"(?:^|(?<=\s))(Q|A): ")
_INSTRUCTION, _RESPONSE = INSTRUCTION_MARKER[0], RESPONSE_MARKER[0]

# Why `parse_pairs` drops a part of a generation (the keys of `ParseResult.dropped`).
EMPTY = "empty"  # the generation, or a pair's instruction or response, is blank
TRUNCATED = "truncated"  # the generation stops inside a pair (see `finished`)
MISSING_RESPONSE = "missing_response"  # an instruction followed by another instruction
MISSING_INSTRUCTION = "missing_instruction"  # a response with no instruction before it
REPEATED_SEPARATOR = "repeated_separator"  # a marker twice in a row ("Q: Q: ...")
UNMARKED_TEXT = "unmarked_text"  # text before the first marker, or no marker at all
DUPLICATE = "duplicate"  # a pair equal to an earlier one of the same generation
DROP_REASONS = (
    EMPTY,
    TRUNCATED,
    MISSING_RESPONSE,
    MISSING_INSTRUCTION,
    REPEATED_SEPARATOR,
    UNMARKED_TEXT,
    DUPLICATE,
)


class SynthesisFormatError(UserError, ValueError):
    """A synthesis record (a JSONL line or a field) is malformed; the message says where."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """One instruction about a text and its response."""

    instruction: str
    response: str

    def __post_init__(self):
        for field in ("instruction", "response"):
            if not isinstance(getattr(self, field), str):
                raise SynthesisFormatError(
                    f"Pair.{field} must be a string, got {type(getattr(self, field)).__name__}."
                )

    def key(self) -> tuple[str, str]:
        """What makes two pairs duplicates: their words, case-folded."""
        return (_normalize(self.instruction), _normalize(self.response))


@dataclasses.dataclass(frozen=True)
class SynthesisRecord:
    """A raw text and the instruction-response pairs about it.

    JSONL form (one object a line):
    `{"text": "...", "pairs": [{"instruction": "...", "response": "..."}, ...]}`.
    """

    text: str
    pairs: tuple[Pair, ...] = ()

    def __post_init__(self):
        if not isinstance(self.text, str):
            raise SynthesisFormatError(
                f"SynthesisRecord.text must be a string, got {type(self.text).__name__}."
            )
        object.__setattr__(self, "pairs", tuple(self.pairs))

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict."""
        return {
            "text": self.text,
            "pairs": [{"instruction": p.instruction, "response": p.response} for p in self.pairs],
        }

    @classmethod
    def from_json(cls, data: Any, *, where: str = "record") -> SynthesisRecord:
        """Reads `to_json`'s form; `where` (e.g. "FILE:LINE") starts every error message."""
        if not isinstance(data, dict):
            raise SynthesisFormatError(
                f"{where}: expected a JSON object, got {type(data).__name__}."
            )
        unknown = sorted(set(data) - {"text", "pairs"})
        if unknown:
            raise SynthesisFormatError(
                f"{where}: unknown field(s) {unknown}; a record has 'text' and 'pairs'."
            )
        text = data.get("text")
        if not isinstance(text, str):
            raise SynthesisFormatError(
                f"{where}: field 'text' must be a string, got {type(text).__name__}."
            )
        raw_pairs = data.get("pairs", [])
        if not isinstance(raw_pairs, list):
            raise SynthesisFormatError(
                f"{where}: field 'pairs' must be a list, got {type(raw_pairs).__name__}."
            )
        return cls(
            text, tuple(_pair_from_json(p, f"{where}: pairs[{i}]") for i, p in enumerate(raw_pairs))
        )


def _pair_from_json(data: Any, where: str) -> Pair:
    if not isinstance(data, dict) or set(data) != {"instruction", "response"}:
        raise SynthesisFormatError(
            f'{where}: expected {{"instruction": str, "response": str}}, got {data!r:.200}.'
        )
    for field in ("instruction", "response"):
        if not isinstance(data[field], str):
            raise SynthesisFormatError(
                f"{where}.{field} must be a string, got {type(data[field]).__name__}."
            )
    return Pair(data["instruction"], data["response"])


def read_records(path: str | os.PathLike) -> Iterator[SynthesisRecord]:
    """Yields the records of a JSONL file; a malformed line raises naming FILE:LINE."""
    for line_number, data in file_io.read_jsonl_objects(path, error_type=SynthesisFormatError):
        yield SynthesisRecord.from_json(data, where=f"{path}:{line_number}")


def write_records(path: str | os.PathLike, records: Iterable[SynthesisRecord]) -> None:
    """Writes `records` as JSONL, atomically."""
    file_io.write_jsonl(path, (record.to_json() for record in records))


def _normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def has_marker(text: str) -> bool:
    """Whether `text` holds a marker `parse_pairs` would split on (so it cannot be a field)."""
    return _MARKER_PATTERN.search(text) is not None


def render_context(text: str) -> str:
    """The raw text, then a blank line."""
    return text + SEPARATOR


def render_pairs(pairs: Sequence[Pair]) -> str:
    """Each pair as "Q: instruction", blank line, "A: response"; pairs separated by blank lines.

    Raises:
      SynthesisFormatError: a field is blank or holds a marker, so the rendering would not
        parse back into the same pairs (filter such pairs with `has_marker` first).
    """
    blocks = []
    for index, pair in enumerate(pairs):
        for field in ("instruction", "response"):
            value = getattr(pair, field)
            if not value.strip() or has_marker(value):
                raise SynthesisFormatError(
                    f"pairs[{index}].{field} {value!r:.120} is blank or holds a marker "
                    f"({INSTRUCTION_MARKER.strip()!r} or {RESPONSE_MARKER.strip()!r} after "
                    "whitespace); it would not parse back."
                )
        blocks.append(
            f"{INSTRUCTION_MARKER}{pair.instruction.strip()}{SEPARATOR}"
            f"{RESPONSE_MARKER}{pair.response.strip()}"
        )
    return SEPARATOR.join(blocks)


@dataclasses.dataclass(frozen=True)
class ParseResult:
    """The pairs recovered from a generation, and how many parts were dropped, by reason."""

    pairs: tuple[Pair, ...]
    dropped: collections.Counter[str]


def _split_marked(generated: str) -> tuple[str, list[tuple[str, str]]]:
    """(text before the first marker, [(marker letter, stripped body), ...])."""
    matches = list(_MARKER_PATTERN.finditer(generated))
    if not matches:
        return generated.strip(), []
    segments = []
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(generated)
        segments.append((match.group(1), generated[match.end() : end].strip()))
    return generated[: matches[0].start()].strip(), segments


def parse_pairs(generated: str, *, finished: bool = True) -> ParseResult:
    """Recovers the pairs of a generation written in `render_pairs`' format.

    Example: `parse_pairs("Q: a? A: b Q: c? Q: d? A: e A: f")` gives the pairs (a?, b) and
    (d?, e) and drops {"missing_response": 1, "missing_instruction": 1}.

    Args:
      generated: the decoded generation (blank lines may have become spaces).
      finished: whether the generation ended with EOS. When False it was cut at the length
        limit, so its last pair's response may be cut too and the pair is dropped as
        "truncated".

    Returns:
      The well-formed pairs in order, each once, and `dropped` counting the rest by reason
      (`DROP_REASONS`); a blank generation counts one "empty".
    """
    dropped: collections.Counter[str] = collections.Counter()
    leading, segments = _split_marked(generated)
    if leading:
        dropped[UNMARKED_TEXT] += 1
    if not segments:
        if not leading:
            dropped[EMPTY] += 1
        return ParseResult((), dropped)
    candidates: list[tuple[Pair, str | None]] = []  # (pair, reason to drop it or None)
    index = 0
    while index < len(segments):
        letter, body = segments[index]
        repeated = False
        # "Q: Q: x" or "A: A: x": an empty segment followed by the same marker.
        while not body and index + 1 < len(segments) and segments[index + 1][0] == letter:
            repeated = True
            index += 1
            body = segments[index][1]
        if letter == _RESPONSE:
            dropped[REPEATED_SEPARATOR if repeated else MISSING_INSTRUCTION] += 1
            index += 1
            continue
        if index + 1 == len(segments):
            dropped[TRUNCATED] += 1
            break
        if segments[index + 1][0] == _INSTRUCTION:
            dropped[REPEATED_SEPARATOR if repeated else MISSING_RESPONSE] += 1
            index += 1
            continue
        response = segments[index + 1][1]
        index += 2
        while not response and index < len(segments) and segments[index][0] == _RESPONSE:
            repeated = True
            response = segments[index][1]
            index += 1
        reason = REPEATED_SEPARATOR if repeated else None
        if reason is None and (not body or not response):
            reason = EMPTY
        candidates.append((Pair(body, response), reason))
    if not finished and candidates and segments[-1][0] == _RESPONSE:
        candidates[-1] = (candidates[-1][0], TRUNCATED)
    pairs: list[Pair] = []
    seen: set[tuple[str, str]] = set()
    for pair, reason in candidates:
        if reason is None and pair.key() in seen:
            reason = DUPLICATE
        if reason is not None:
            dropped[reason] += 1
            continue
        seen.add(pair.key())
        pairs.append(pair)
    return ParseResult(tuple(pairs), dropped)


def encode_context(vocabulary: seqio.Vocabulary, text: str, *, bos_id: int) -> np.ndarray:
    """`[BOS] tok(render_context(text))`: what the synthesizer reads before writing pairs.

    Returns:
      int32 token ids [length].
    """
    return np.asarray([bos_id, *vocabulary.encode(render_context(text))], dtype=np.int32)


def encode_example(
    vocabulary: seqio.Vocabulary, record: SynthesisRecord, *, bos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """One record as synthesizer training tokens and their loss mask.

    Example (ids made up): text "T" -> [7], pairs -> [4, 5, 6], bos 0, eos 1 gives
    tokens [0, 7, 4, 5, 6, 1] and loss_mask [0, 0, 1, 1, 1, 1].

    Args:
      vocabulary: the synthesizer's vocabulary (its `eos_id` ends the example).
      record: the text and its pairs (the pairs must render: see `render_pairs`).
      bos_id: the model's start token (`DecoderConfig.start_token_id`).

    Returns:
      (tokens, loss_mask), int32 arrays [length] of equal length; the mask is 1 on the pair
      tokens and the EOS.
    """
    context = encode_context(vocabulary, record.text, bos_id=bos_id)
    pairs = [*vocabulary.encode(render_pairs(record.pairs)), vocabulary.eos_id]
    tokens = np.asarray([*context, *pairs], dtype=np.int32)
    loss_mask = np.concatenate([np.zeros(len(context), np.int32), np.ones(len(pairs), np.int32)])
    return tokens, loss_mask
