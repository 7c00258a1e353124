"""Instruction-augmented corpora as seqio tasks (Instruction Pre-Training, arXiv 2406.14491).

A synthesis record (`format.SynthesisRecord`: a raw text and the instruction-response pairs
the synthesizer wrote about it) becomes one pre-training document through a template of
`tasks/ipt/augmented_templates.yaml`, drawn per record with `templates.example_rng`. The
templates come in three layouts (`LAYOUTS`):

- text_then_pairs: the text, then its pairs;
- pairs_then_text: the pairs, then the text they are about;
- interleaved: the text cut into parts (`split_text_parts`), pair j placed after the first
  ceil((j + 1) * n / k) of the n parts (k pairs), so the last pair ends the document.

Worked example (text "Tides rise. They fall.", one pair ("Why?", "The moon."), the
interleaved template with pair "Q: {instruction}\\nA: {response}" and separator "\\n\\n"):

    parts    -> ["Tides rise.", "They fall."]
    document -> "Tides rise.\\n\\nThey fall.\\n\\nQ: Why?\\nA: The moon."

A record without pairs renders as its text alone. Documents are registered as targets-only
tasks (`pretrain_text.register_document_task`): tokenised, EOS appended once, cut into
chunks of the target length, inputs empty, so `flan-jax train` puts the plain next-token
loss on every token.

Which texts are augmented is decided per text, by a seeded hash of its content
(`is_augmented_text`), so the augmented and the raw parts of a corpus are disjoint and the
same in every process and run: the augmented task keeps the synthesis records whose text
falls in the augmented part, the raw task the corpus texts that do not.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence

import seqio
import yaml

from flan_jax.data import export
from flan_jax.errors import UserError
from flan_jax.ipt import format as ipt_format
from flan_jax.ipt import synthesis
from flan_jax.tasks import templates
from flan_jax.tasks.optiml import pretrain_text

LAYOUTS = ("text_then_pairs", "pairs_then_text", "interleaved")
# The placeholders each layout's `document` frame must hold, and a pair's.
_FRAME_PLACEHOLDERS = {
    "text_then_pairs": frozenset({"text", "pairs"}),
    "pairs_then_text": frozenset({"text", "pairs"}),
    "interleaved": frozenset({"body"}),
}
_PAIR_PLACEHOLDERS = frozenset({"instruction", "response"})
_TEMPLATE_KEYS = ("layout", "document", "pair", "separator")
TEMPLATES_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "tasks",
    "ipt",
    "augmented_templates.yaml",
)
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")
# 64-bit hash values: a text is augmented when its value is below fraction * 2**64.
_HASH_RANGE = 2**64


class AugmentedCorpusError(UserError, ValueError):
    """A template file, synthesis directory or corpus split that cannot be used."""


@dataclasses.dataclass(frozen=True)
class AugmentedTemplate:
    """One way to lay out an augmented text (schema in the templates file's header).

    Attributes:
      layout: one of `LAYOUTS`.
      document: the frame, with {text} and {pairs} or, interleaved, {body}.
      pair: one pair, with {instruction} and {response}.
      separator: what joins the pairs, or the text parts and pairs of {body}.
      index: the template's position in its file.
    """

    layout: str
    document: str
    pair: str
    separator: str
    index: int


def _check_template(entry: object, where: str) -> None:
    if not isinstance(entry, dict) or set(entry) != set(_TEMPLATE_KEYS):
        raise AugmentedCorpusError(f"{where}: needs exactly the string keys {_TEMPLATE_KEYS}.")
    if not all(isinstance(entry[key], str) for key in _TEMPLATE_KEYS):
        raise AugmentedCorpusError(f"{where}: {_TEMPLATE_KEYS} must all be strings.")
    if entry["layout"] not in LAYOUTS:
        raise AugmentedCorpusError(
            f"{where}: layout must be one of {LAYOUTS}, got {entry['layout']!r}."
        )
    for key, wanted in (
        ("document", _FRAME_PLACEHOLDERS[entry["layout"]]),
        ("pair", _PAIR_PLACEHOLDERS),
    ):
        found = set(templates.find_placeholders(entry[key]))
        if found != wanted:
            raise AugmentedCorpusError(
                f"{where}: {key} must hold the placeholders {sorted(wanted)}, got {sorted(found)}."
            )


@functools.cache
def load_augmented_templates(path: str = TEMPLATES_PATH) -> tuple[AugmentedTemplate, ...]:
    """The templates of `path`, checked; an error names the file and the template."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise AugmentedCorpusError(f"{path}: cannot read the template file: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("templates"), list):
        raise AugmentedCorpusError(f"{path}: expected a mapping with a 'templates' list.")
    loaded = []
    for index, entry in enumerate(data["templates"]):
        _check_template(entry, f"{path}: template {index}")
        loaded.append(AugmentedTemplate(**{k: entry[k] for k in _TEMPLATE_KEYS}, index=index))
    missing = set(LAYOUTS) - {t.layout for t in loaded}
    if missing:
        raise AugmentedCorpusError(f"{path}: no template of the layouts {sorted(missing)}.")
    return tuple(loaded)


def split_text_parts(text: str) -> list[str]:
    """The parts an interleaved document puts pairs between: paragraphs, else sentences."""
    parts = [p.strip() for p in _PARAGRAPH_BREAK.split(text.strip()) if p.strip()]
    if len(parts) == 1:
        parts = [s.strip() for s in _SENTENCE_END.split(parts[0]) if s.strip()]
    return parts


def _interleave(parts: Sequence[str], pair_texts: Sequence[str]) -> list[str]:
    """Parts and pairs in document order; pair j follows the first ceil((j+1)n/k) parts."""
    pieces: list[str] = []
    taken = 0
    for j, pair_text in enumerate(pair_texts):
        until = -(-(j + 1) * len(parts) // len(pair_texts))  # ceil((j + 1) * n / k)
        pieces.extend(parts[taken:until])
        taken = until
        pieces.append(pair_text)
    return pieces


def render_with_template(
    record: ipt_format.SynthesisRecord, template: AugmentedTemplate, *, where: str = ""
) -> str:
    """`record` as one document laid out by `template` (see the module docstring)."""
    if not record.pairs:
        return record.text
    where = f"{where} augmented template {template.index} ({template.layout})".strip()
    pair_texts = [
        templates.fill_placeholders(
            template.pair, {"instruction": p.instruction, "response": p.response}, where
        )
        for p in record.pairs
    ]
    if template.layout == "interleaved":
        body = template.separator.join(_interleave(split_text_parts(record.text), pair_texts))
        return templates.fill_placeholders(template.document, {"body": body}, where)
    values = {"text": record.text, "pairs": template.separator.join(pair_texts)}
    return templates.fill_placeholders(template.document, values, where)


def text_key(text: str) -> str:
    """A stable key of a text (its SHA-256), the example key its rendering is seeded by."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def render_augmented(
    record: ipt_format.SynthesisRecord,
    *,
    task_name: str,
    seed: int = 0,
    augmented_templates: Sequence[AugmentedTemplate] | None = None,
) -> str:
    """`record` rendered with a template drawn by `example_rng(seed, task_name, text_key)`."""
    pool = augmented_templates or load_augmented_templates()
    rng = templates.example_rng(seed, task_name, text_key(record.text))
    template = pool[int(rng.integers(len(pool)))]
    return render_with_template(record, template, where=task_name)


def check_fraction(fraction: float, *, field: str = "augmented_fraction") -> float:
    """`fraction` when it is in [0, 1], else an error naming `field`."""
    if not 0.0 <= fraction <= 1.0:
        raise AugmentedCorpusError(f"{field} must be in [0, 1], got {fraction!r}.")
    return fraction


def is_augmented_text(text: str, *, fraction: float, seed: int = 0) -> bool:
    """Whether `text` falls in the augmented `fraction` of a corpus.

    value = first 8 bytes (little-endian) of SHA-256(f"{seed}\\x1f{text}")
    augmented  <=>  value < fraction * 2**64
    """
    digest = hashlib.sha256(f"{seed}\x1f{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") < check_fraction(fraction) * _HASH_RANGE


def check_synthesis_dir(directory: str | None, *, macro: str = "SYNTHESIS_DIR") -> str:
    """`directory` when it holds a synthesis manifest, else an error naming the gin macro."""
    if not directory:
        raise AugmentedCorpusError(
            f"No synthesis output: set the gin macro {macro} to the directory "
            "`flan-jax synthesize --out DIR` wrote."
        )
    manifest = export.read_manifest(directory)
    if manifest is None:
        raise AugmentedCorpusError(
            f"{directory}: no {export.MANIFEST_NAME}; not a synthesis output directory "
            f"(write one with `flan-jax synthesize --out DIR`; gin macro {macro})."
        )
    if not manifest.get("complete", False):
        logging.warning(
            "%s: the synthesis run is not complete; its %d recorded shards are used.",
            directory,
            len(manifest.get("shards", [])),
        )
    return directory


def iterate_corpus_part(
    path: str,
    *,
    augmented: bool,
    fraction: float,
    seed: int = 0,
    documents: str = "paragraphs",
    jsonl_field: str = "text",
) -> Iterator[str]:
    """The texts of a corpus in its augmented part (`augmented`) or in its raw part.

    The corpus is read by `pretrain_text.iterate_documents`. The augmented part is what
    to give `flan-jax synthesize --input`; the raw part is what the raw task trains on.
    """
    for _, text in pretrain_text.iterate_documents(
        path, documents=documents, jsonl_field=jsonl_field
    ):
        if is_augmented_text(text, fraction=fraction, seed=seed) == augmented:
            yield text


def _nonempty(texts: Callable[[], Iterator[str]], what: str) -> Callable[[], Iterator[str]]:
    """`texts` that raises when it yields nothing (an empty task would never end an epoch)."""

    def iterate() -> Iterator[str]:
        found = False
        for text in texts():
            found = True
            yield text
        if not found:
            raise AugmentedCorpusError(f"{what} holds no text.")

    return iterate


def register_augmented_task(
    name: str,
    *,
    synthesis_dir: str,
    vocabulary: seqio.Vocabulary,
    fraction: float = 1.0,
    seed: int = 0,
    templates_path: str = TEMPLATES_PATH,
) -> str:
    """Registers (or replaces) `name`: the augmented documents of a synthesis directory.

    Args:
      name: the task name.
      synthesis_dir: the output of `flan-jax synthesize` (read by
        `synthesis.read_synthesized_records`).
      vocabulary: the model's vocabulary.
      fraction: keep the records whose text is in the augmented `fraction` of texts
        (`is_augmented_text`; 1: all of them).
      seed: the seed of that split and of the template draws.
      templates_path: the augmented templates file.
    """
    check_fraction(fraction)
    check_synthesis_dir(synthesis_dir)  # Fails now, naming the directory.
    pool = load_augmented_templates(templates_path)

    def documents() -> Iterator[str]:
        for record in synthesis.read_synthesized_records(synthesis_dir):
            if is_augmented_text(record.text, fraction=fraction, seed=seed):
                yield render_augmented(record, task_name=name, seed=seed, augmented_templates=pool)

    what = f"{synthesis_dir} (records in the augmented fraction {fraction:g}, seed {seed})"
    return pretrain_text.register_document_task(
        name, iterate_texts=_nonempty(documents, what), vocabulary=vocabulary
    )


def register_raw_part_task(
    name: str,
    *,
    path: str,
    vocabulary: seqio.Vocabulary,
    fraction: float,
    seed: int = 0,
    documents: str = "paragraphs",
    jsonl_field: str = "text",
) -> str:
    """Registers (or replaces) `name`: the corpus texts outside the augmented `fraction`."""
    pretrain_text.check_corpus_path(path, macro="RAW_TEXT_PATH")
    check_fraction(fraction)

    def texts() -> Iterator[str]:
        return iterate_corpus_part(
            path,
            augmented=False,
            fraction=fraction,
            seed=seed,
            documents=documents,
            jsonl_field=jsonl_field,
        )

    what = f"{path} (texts outside the augmented fraction {fraction:g}, seed {seed})"
    return pretrain_text.register_document_task(
        name, iterate_texts=_nonempty(texts, what), vocabulary=vocabulary
    )
