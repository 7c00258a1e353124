"""Dialog tasks: the local wiki_dialog and qrecc formats, templates and inversion."""

import gzip
import json
import re

import pytest
import seqio

from flan_jax.tasks import data_paths, dialog, templates


@pytest.fixture
def paths(tmp_path):
    wiki = tmp_path / "wiki_dialog"
    wiki.mkdir()
    dialogs = [
        {
            "pid": "p1",
            "title": "Ada",
            "passage": "...",
            "sentences": [],
            "utterances": [
                "Who was Ada?",
                "A mathematician.",
                "What did she write?",
                "Notes on the engine.",
            ],
            "author_num": [0, 1, 0, 1],
        },
        {
            "pid": "p2",
            "title": "X",
            "passage": "",
            "sentences": [],
            "utterances": ["Only one turn."],
            "author_num": [0],
        },
    ]
    with gzip.open(wiki / "data_train.jsonl-00000-of-00001.gz", "wt") as f:
        f.write("".join(json.dumps(d) + "\n" for d in dialogs))
    qrecc = tmp_path / "qrecc"
    qrecc.mkdir()
    (qrecc / "qrecc_train.json").write_text(
        json.dumps(
            [
                {
                    "Context": [],
                    "Question": "What is QReCC?",
                    "Rewrite": "",
                    "Answer": "A dataset.",
                },
                {
                    "Context": ["What is QReCC?", "A dataset."],
                    "Question": "Who made it?",
                    "Rewrite": "",
                    "Answer": "Apple.",
                },
                {"Context": [], "Question": "Unanswered?", "Rewrite": "", "Answer": ""},
            ]
        )
    )
    return data_paths.DataPaths(source_dirs={"dialog": str(tmp_path)})


def test_local_formats_become_examples(paths):
    wiki = list(dialog.load_dialog_split("wiki_dialog", split="train", paths=paths))
    assert wiki == [
        (
            "train:0",
            {
                "history": "User: Who was Ada?\nAssistant: A mathematician.",
                "question": "What did she write?",
                "response": "Notes on the engine.",
            },
        )
    ]
    qrecc = list(dialog.load_dialog_split("qrecc", split="train", paths=paths))
    assert [k for k, _ in qrecc] == ["train:0", "train:1"]
    assert qrecc[1][1]["history"] == "User: What is QReCC?\nAssistant: A dataset."


# Fixture conversations as `load_dialog_split` gives them: one mid-conversation, one first turn.
CONVERSATIONS = [
    {
        "history": "User: Who was Ada Lovelace?\nAssistant: A mathematician, born in 1815.",
        "question": "What did she write about?",
        "response": "Notes on Babbage's Analytical Engine.",
    },
    {
        "history": dialog.format_history([]),
        "question": "What is QReCC?",
        "response": "A conversational question answering dataset.",
    },
]
PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


@pytest.mark.parametrize("inverted", [False, True])
def test_ten_distinct_templates_each_render_and_inverted_ones_invert(inverted):
    template_set = dialog.load_dialog_templates(inverted)
    assert len(template_set.templates) == 10
    # No two templates alike, even up to case, spacing and punctuation.
    normalized = {re.sub(r"\W+", " ", t.inputs).strip().lower() for t in template_set.templates}
    assert len(normalized) == 10
    # The original predicts the reply from history + question; the inverted one predicts
    # the question from history + reply.
    hidden, shown = ("question", "response") if inverted else ("response", "question")
    for template in template_set.templates:
        assert template.type == ("dialog_inverted" if inverted else "dialog")
        assert template.targets == "{" + hidden + "}"
        input_fields = set(re.findall(r"\{(\w+)\}", template.inputs))
        assert input_fields == {"history", shown}, template.index
        for index, fields in enumerate(CONVERSATIONS):
            rng = templates.example_rng(0, "dialog", f"train:{index}")
            out = templates.render(template, fields, with_options=True, rng=rng)
            assert not PLACEHOLDER.search(out.inputs + out.targets), template.index
            assert out.targets == fields[hidden]
            assert fields[hidden] not in out.inputs
            assert fields["history"] in out.inputs and fields[shown] in out.inputs


def test_registration_and_missing_data(paths, tmp_path):
    vocab = seqio.PassThroughVocabulary(10)
    names = dialog.register_dialog_tasks(vocab, paths=paths)
    assert len(names) == 8 and sum("__inverted__" in n for n in names) == 4
    ex = next(
        seqio.get_mixture_or_task("dialog__qrecc__inverted__fs_opt")
        .source.get_dataset("train")
        .as_numpy_iterator()
    )
    assert ex["_template_type"] == b"dialog_inverted"
    empty = data_paths.DataPaths(
        source_dirs={"dialog": str(tmp_path / "nothing")}, tfds_data_dir=str(tmp_path / "tfds")
    )
    message = dialog.missing_data("qrecc", paths=empty)
    assert "'qrecc'" in message and "ml-qrecc" in message
    with pytest.raises(data_paths.MissingDataError, match="WikiDialog"):
        list(dialog.load_dialog_split("wiki_dialog", split="train", paths=empty))
