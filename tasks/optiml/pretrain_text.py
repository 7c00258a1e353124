"""Pre-training text as a seqio task: a local corpus, targets only, cut to the target length.

OPT-IML mixes about 5% of pre-training text into instruction tuning (arXiv 2212.12017,
section 3; REFERENCE.md) so the model keeps its language-modelling ability. This task reads
a local corpus, one document at a time:

- a `.jsonl` file: one JSON object per line, the document in field `text` (configurable);
- any other file: UTF-8 text whose documents are paragraphs (separated by blank lines), or
  lines (`documents="lines"`).

Each document is tokenised, EOS is appended once (at its end), and the tokens are cut into
chunks of the target length; every chunk becomes one example with empty `inputs`, so a
decoder-only row holds the chunk alone and (as in OPT-IML) its every token is a target.
Example with targets length 4 and EOS id 1:

    document tokens [5, 6, 7, 8, 9]  ->  {"inputs": [], "targets": [5, 6, 7, 8]},
                                         {"inputs": [], "targets": [9, 1]}

A missing file, a malformed line, or a corpus with no document is a `CorpusError` naming
the file (and line).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping

import seqio
import tensorflow as tf

from flan_jax import errors
from flan_jax.data import file_io
from flan_jax.tasks import sources

DOCUMENT_UNITS = ("paragraphs", "lines")
JSONL_SUFFIXES = (".jsonl", ".jsonl.txt")


class CorpusError(errors.UserError, ValueError):
    """A pre-training corpus that is missing or malformed (the message names file:line)."""


def check_corpus_path(path: str | None, *, macro: str = "PRETRAIN_TEXT_PATH") -> str:
    """`path` when it is a readable file, else a `CorpusError` naming the gin macro to set."""
    if not path:
        raise CorpusError(
            f"No pre-training text corpus: set the gin macro {macro} "
            f"(--gin.{macro}=/path/corpus.jsonl or a .txt file), or set its share to 0."
        )
    if not os.path.isfile(path):
        raise CorpusError(f"{path}: pre-training text corpus not found ({macro}).")
    return path


def _paragraphs(path: str) -> Iterator[tuple[int, str]]:
    """(first line number, paragraph) of a text file; blank lines separate paragraphs."""
    lines: list[str] = []
    first = 0
    for number, line in file_io.read_text_lines(path, error_type=CorpusError):
        if line.strip():
            first = first or number
            lines.append(line.rstrip("\n"))
        elif lines:
            yield first, "\n".join(lines)
            lines, first = [], 0
    if lines:
        yield first, "\n".join(lines)


def iterate_documents(
    path: str, *, documents: str = "paragraphs", jsonl_field: str = "text"
) -> Iterator[tuple[int, str]]:
    """(line number, document text) of a corpus (formats in the module docstring).

    Raises:
      CorpusError: "<path>:<line>: ..." for a malformed line, or when no document is found.
    """
    if documents not in DOCUMENT_UNITS:
        raise CorpusError(f"documents must be one of {DOCUMENT_UNITS}, got {documents!r}.")
    check_corpus_path(path)
    found = False
    if path.endswith(JSONL_SUFFIXES):
        for number, record in file_io.read_jsonl_objects(path, error_type=CorpusError):
            text = record.get(jsonl_field)
            if not isinstance(text, str):
                raise CorpusError(
                    f"{path}:{number}: expected a string field {jsonl_field!r}, got "
                    f"{type(text).__name__ if jsonl_field in record else 'no such field'}."
                )
            if text.strip():
                found = True
                yield number, text
    elif documents == "lines":
        for number, line in file_io.read_text_lines(path, error_type=CorpusError):
            if line.strip():
                found = True
                yield number, line.rstrip("\n")
    else:
        for number, paragraph in _paragraphs(path):
            found = True
            yield number, paragraph
    if not found:
        raise CorpusError(f"{path}: the pre-training text corpus holds no document.")


def chunk_targets(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None,
    output_features: Mapping[str, seqio.Feature],
    *,
    append_eos: bool = True,
) -> tf.data.Dataset:
    """Appends EOS to each tokenised document and cuts it into target-length chunks.

    With `append_eos=False` the tokens are cut as they are (token streams that already end
    with an EOS, e.g. the instruction synthesizer's training data).
    """
    vocabulary = output_features["targets"].vocabulary
    length = None if sequence_length is None else sequence_length.get("targets")

    def split(example):
        tokens = example["targets"]
        if append_eos:
            eos = tf.constant([vocabulary.eos_id], tokens.dtype)
            tokens = tf.concat([tokens, eos], axis=0)
        chunk = (
            tf.size(tokens, out_type=tf.int64) if length is None else tf.constant(length, tf.int64)
        )
        count = (tf.size(tokens, out_type=tf.int64) + chunk - 1) // chunk

        def take_chunk(index):
            return {
                "inputs": tf.zeros([0], tokens.dtype),
                "targets": tokens[index * chunk : (index + 1) * chunk],
            }

        return tf.data.Dataset.range(count).map(take_chunk)

    return dataset.flat_map(split)


def register_document_task(
    name: str,
    *,
    iterate_texts: Callable[[], Iterable[str]],
    vocabulary: seqio.Vocabulary,
) -> str:
    """Registers (or replaces) task `name`: the texts of `iterate_texts()`, targets only.

    Each text is tokenised and cut by `chunk_targets`, so the task's examples hold empty
    `inputs` and every token is a target. `iterate_texts` is called each time the task's
    data is read (a new epoch), never at registration. The output features are the
    instruction tasks' (`sources.make_output_features`), so the task mixes with them. Other
    corpora of plain documents (e.g. the instruction-augmented ones of `flan_jax.ipt`)
    register through this function too.
    """

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del split, shuffle_files, seed  # One stream; the pipeline shuffles examples.

        def examples() -> Iterator[dict[str, str]]:
            for text in iterate_texts():
                yield {"inputs": "", "targets": text}

        # carry_user_errors lets the CLI report the user error (e.g. a CorpusError naming
        # file:line) that tf.data wraps.
        return tf.data.Dataset.from_generator(
            lambda: errors.carry_user_errors(examples),
            output_signature={
                "inputs": tf.TensorSpec([], tf.string),
                "targets": tf.TensorSpec([], tf.string),
            },
        )

    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)  # A new corpus or vocabulary replaces the old task.
    seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        preprocessors=[seqio.preprocessors.tokenize, chunk_targets],
        output_features=sources.make_output_features(vocabulary),
    )
    return name


def register_pretrain_text_task(
    name: str,
    *,
    path: str,
    vocabulary: seqio.Vocabulary,
    documents: str = "paragraphs",
    jsonl_field: str = "text",
) -> str:
    """Registers (or replaces) task `name` over the corpus at `path`; returns `name`.

    The corpus is checked to exist now and read when the task's data is read
    (`register_document_task`).
    """
    check_corpus_path(path)

    def iterate_texts() -> Iterator[str]:
        for _, text in iterate_documents(path, documents=documents, jsonl_field=jsonl_field):
            yield text

    return register_document_task(name, iterate_texts=iterate_texts, vocabulary=vocabulary)
