"""Dialog tasks of the Flan 2022 collection: wiki_dialog and qrecc, plus inverted versions.

Both datasets are read in their public release formats, in place, under the dialog data
directory (`$FLAN_JAX_DATA_DIR/dialog` or `DataPaths.source_dirs["dialog"]`):

- wiki_dialog: `wiki_dialog/data_<split>.jsonl[-NNNNN-of-NNNNN][.gz]`, the WikiDialog-OQ
  release shards, one dialog per line:

      {"pid": "...", "title": "...", "passage": "...", "sentences": [...],
       "utterances": ["Who was ...?", "She was ...", ...], "author_num": [0, 1, ...]}

  A dialog becomes one example: its last utterance is the reply, the one before it the
  question, and the earlier ones the history.
- qrecc: `qrecc/qrecc_<split>.json`, the QReCC release (a JSON list of turns):

      [{"Context": ["q1", "a1", ...], "Question": "q7", "Answer": "a7",
        "Conversation_no": 12, "Turn_no": 7, ...}]

  Filtered as the Flan collection does (google-research/FLAN flan/v2 preprocessors.py,
  `filter_qrecc` and `qrecc`): only turns with `Turn_no > 6` are kept, and each kept turn
  becomes one example whose reply is a randomly drawn earlier answer of its conversation,
  one of the first min(pairs in its context, 20), with the dialog up to that answer's question
  as the history; the turn's own question and answer are not used. The draw is seeded by the
  loader's seed, conversation and turn (`templates.example_rng`), so every process picks the
  same answer. Example: turn 7 of a conversation has six earlier question/answer pairs; a draw
  of 2 makes q3 the question, a3 the reply, and q1, a1, q2, a2 the history.

When a local file is absent, the prepared TFDS datasets `wiki_dialog/OQ` and `qrecc` in the
TFDS data_dir are read instead (never downloaded). The inverted tasks ask for the question
given the history and the reply.
"""

from __future__ import annotations

import functools
import glob
import gzip
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import seqio

from flan_jax.evaluation import metrics
from flan_jax.tasks import data_paths, family, sources, templates, tfds_reading
from flan_jax.tasks import few_shot as few_shot_lib

SOURCE = "dialog"
DATASETS = ("wiki_dialog", "qrecc")
VARIANTS = ("zs_opt", "fs_opt")
# Metrics (flan_jax.evaluation.metrics): replies and inverted questions are free text.
METRICS = ("rouge",)
# FLAN's few-shot forms: 5-shot template mix, and 0 to 10 shots out of 25 candidates.
FEW_SHOT = few_shot_lib.FewShotSettings()
SPLITS = {"wiki_dialog": ("train", "validation"), "qrecc": ("train", "test")}
TFDS_NAMES = {"wiki_dialog": "wiki_dialog/OQ:1.0.0", "qrecc": "q_re_cc:1.0.0"}
_HERE = os.path.dirname(__file__)
_NO_HISTORY = "(this is the start of the conversation)"
# The Flan collection keeps QReCC turns after the sixth (preprocessors.filter_qrecc) and draws
# the reply among the first 20 earlier answers at most (preprocessors.qrecc).
QRECC_MIN_TURN = 7
QRECC_MAX_ANSWERS = 20
HOW_TO_GET = {
    "wiki_dialog": "Download the WikiDialog-OQ shards (github.com/google-research/"
    "dialog-inpainting) into <dialog dir>/wiki_dialog/, or prepare the TFDS "
    "dataset wiki_dialog/OQ in the TFDS data_dir.",
    "qrecc": "Unpack qrecc_train.json and qrecc_test.json from github.com/apple/ml-qrecc "
    "into <dialog dir>/qrecc/, or prepare the TFDS dataset q_re_cc in the TFDS "
    "data_dir.",
}


@functools.cache
def load_dialog_templates(inverted: bool) -> templates.TemplateSet:
    name = "dialog_inverted.yaml" if inverted else "dialog.yaml"
    return templates.load_template_set(os.path.join(_HERE, "templates", name))


def format_history(turns: Sequence[str]) -> str:
    """Earlier turns as alternating "User:" / "Assistant:" lines ending before the question.

    The turn right before the question is the assistant's, so labels are assigned from the
    end backwards.
    """
    if not turns:
        return _NO_HISTORY
    labels = ["Assistant", "User"]
    lines = [f"{labels[(len(turns) - 1 - i) % 2]}: {turn.strip()}" for i, turn in enumerate(turns)]
    return "\n".join(lines)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def wiki_dialog_example(dialog: dict) -> dict[str, str] | None:
    """Fields of one WikiDialog dialog; None when it has fewer than two utterances."""
    utterances = [_text(u) for u in dialog["utterances"]]
    if len(utterances) < 2:
        return None
    return {
        "history": format_history(utterances[:-2]),
        "question": utterances[-2].strip(),
        "response": utterances[-1].strip(),
    }


def qrecc_example(turn: dict, *, split: str, seed: int) -> dict[str, str] | None:
    """Fields of one QReCC turn as the Flan collection uses it (see the module docstring).

    None when the turn is one of the first six of its conversation, when its context holds
    no question/answer pair, or when the drawn answer is empty.
    """
    if int(turn["Turn_no"]) < QRECC_MIN_TURN:
        return None
    context = [_text(t).strip() for t in turn["Context"]]
    num_answers = min(len(context) // 2, QRECC_MAX_ANSWERS)
    if num_answers == 0:
        return None
    key = f"{split}:{turn['Conversation_no']}:{turn['Turn_no']}"
    drawn = int(templates.example_rng(seed, "qrecc_reply_turn", key).integers(num_answers))
    question, answer = context[2 * drawn], context[2 * drawn + 1]
    if not answer:
        return None
    return {
        "history": format_history(context[: 2 * drawn]),
        "question": question,
        "response": answer,
    }


def local_files(dataset: str, split: str, paths: data_paths.DataPaths) -> list[str]:
    """The local release files of `dataset`'s `split` ([] when none, or no directory is set)."""
    try:
        directory = os.path.join(paths.source_dir(SOURCE), dataset)
    except data_paths.MissingDataError:
        return []  # No local directory configured: TFDS may still have the dataset.
    if dataset == "qrecc":
        candidates = [os.path.join(directory, f"qrecc_{split}.json")]
        return [path for path in candidates if os.path.exists(path)]
    return sorted(glob.glob(os.path.join(directory, f"data_{split}.jsonl*")))


def _read_local(dataset: str, files: Sequence[str]) -> Iterator[dict]:
    for path in files:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            if dataset == "qrecc":
                yield from json.load(f)
            else:
                for line_number, line in enumerate(f, start=1):
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{line_number}: invalid JSON: {e.msg}.") from e


def _read_tfds(dataset: str, split: str, paths: data_paths.DataPaths) -> Iterator[dict]:
    for row in tfds_reading.read_tfds_split(
        TFDS_NAMES[dataset],
        split,
        paths.tfds_data_dir,
        dataset=dataset,
        how_to_get=HOW_TO_GET[dataset],
    ):
        if dataset == "qrecc":  # TFDS renames the release's fields.
            row = {
                "Context": row["context"],
                "Question": row["question"],
                "Answer": row["answer"],
                "Conversation_no": row["conversation_id"],
                "Turn_no": row["turn_id"],
            }
        yield row


def list_dialog_datasets() -> tuple[str, ...]:
    """The dialog catalog: `DATASETS`."""
    return DATASETS


def missing_data(dataset: str, *, paths: data_paths.DataPaths | None = None) -> str | None:
    """A message when `dataset` has neither local train files nor a prepared TFDS copy."""
    paths = data_paths.resolve_data_paths(paths)
    if local_files(dataset, "train", paths):
        return None
    return tfds_reading.missing_tfds_message(
        TFDS_NAMES[dataset], paths.tfds_data_dir, dataset=dataset, how_to_get=HOW_TO_GET[dataset]
    )


def load_dialog_split(
    dataset: str, *, split: str, paths: data_paths.DataPaths | None = None, seed: int = 0
) -> Iterator[sources.RawExample]:
    """The examples of `dataset`'s `split`, local files first, then TFDS.

    `seed` draws the reply turn of each qrecc example (wiki_dialog rows are read as they are).
    """
    paths = data_paths.resolve_data_paths(paths)
    files = local_files(dataset, split, paths)
    rows = _read_local(dataset, files) if files else _read_tfds(dataset, split, paths)
    for index, row in enumerate(rows):
        if dataset == "qrecc":
            fields = qrecc_example(row, split=split, seed=seed)
        else:
            fields = wiki_dialog_example(row)
        if fields is not None:
            yield f"{split}:{index}", fields


def register_dialog_tasks(
    vocabulary: seqio.Vocabulary,
    *,
    datasets: Sequence[str] | None = None,
    paths: data_paths.DataPaths | None = None,
    seed: int = 0,
    few_shot: few_shot_lib.FewShotSettings | None = None,
) -> list[str]:
    """Registers the dialog tasks (originals and inverted, zero- and few-shot).

    Args:
      vocabulary: the output features' vocabulary (also counts few-shot prompt tokens).
      datasets: which of `DATASETS` to register (None: all).
      paths: data locations; None resolves them when data is read.
      seed: the rendering seed.
      few_shot: few-shot prompt settings (None: `FEW_SHOT`).
    """
    names = []
    for dataset in family.select_datasets(SOURCE, datasets, DATASETS):
        names += family.register_original_and_inverted(
            SOURCE,
            dataset,
            VARIANTS,
            load_dialog_templates,
            family.bind_split(load_dialog_split, dataset, paths=paths, seed=seed),
            vocabulary,
            splits=SPLITS[dataset],
            seed=seed,
            few_shot=few_shot or FEW_SHOT,
            metric_fns=metrics.get_metric_fns(METRICS, where=__name__),
            inverted_metric_fns=metrics.get_metric_fns(METRICS, where=__name__),
        )
    return names


FAMILY = family.TaskFamily(
    SOURCE, list_dialog_datasets, load_dialog_split, missing_data, register_dialog_tasks
)
