"""Dialog tasks: the local wiki_dialog and qrecc formats, templates and inversion."""

import gzip
import json
import re

import pytest
import seqio

from flan_jax.tasks import data_paths, dialog, templates
from flan_jax.testing.tasks import forget_tasks


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
    (qrecc / "qrecc_train.json").write_text(json.dumps(QRECC_TURNS))
    return data_paths.DataPaths(source_dirs={"dialog": str(tmp_path)})


def qrecc_turn(conversation: int, turn: int) -> dict:
    """Turn `turn` of a QReCC conversation in the release format (context: earlier turns)."""
    context = []
    for earlier in range(1, turn):
        context += [f"c{conversation} question {earlier}?", f"c{conversation} reply {earlier}."]
    return {
        "Context": context,
        "Question": f"c{conversation} question {turn}?",
        "Rewrite": "",
        "Answer": f"c{conversation} reply {turn}.",
        "Conversation_no": conversation,
        "Turn_no": turn,
    }


# Six conversations of turns 1-9 each.
QRECC_TURNS = [qrecc_turn(c, t) for c in range(1, 7) for t in range(1, 10)]


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
    qrecc = dict(dialog.load_dialog_split("qrecc", split="train", paths=paths))
    assert "train:6" in qrecc and "train:5" not in qrecc  # Turn 7 of conversation 1 is kept.


def flan_qrecc_examples(turns: list[dict], seed: int) -> dict[str, dict[str, str]]:
    """The qrecc examples the Flan collection makes, computed here from the turns' fields.

    FLAN keeps turns with turn_id > 6; each yields the dialog up to a randomly drawn earlier
    answer (among the first min(pairs, 20)), that answer being the reply.
    """
    examples = {}
    for index, turn in enumerate(turns):
        if turn["Turn_no"] <= 6:
            continue
        num_answers = min(turn["Turn_no"] - 1, 20)  # Earlier answers it may draw from.
        key = f"train:{turn['Conversation_no']}:{turn['Turn_no']}"
        drawn = templates.example_rng(seed, "qrecc_reply_turn", key).integers(num_answers)
        conversation, answer_turn = turn["Conversation_no"], drawn + 1
        earlier = []
        for t in range(1, answer_turn):
            earlier += [
                f"User: c{conversation} question {t}?",
                f"Assistant: c{conversation} reply {t}.",
            ]
        examples[f"train:{index}"] = {
            "history": "\n".join(earlier) or "(this is the start of the conversation)",
            "question": f"c{conversation} question {answer_turn}?",
            "response": f"c{conversation} reply {answer_turn}.",
        }
    return examples


def test_qrecc_keeps_the_turns_flan_keeps_with_one_drawn_reply_each(paths):
    examples = dict(dialog.load_dialog_split("qrecc", split="train", paths=paths, seed=3))
    assert examples == flan_qrecc_examples(QRECC_TURNS, seed=3)
    assert len(examples) == 6 * 3  # Turns 7, 8 and 9 of each of the six conversations.
    again = dict(dialog.load_dialog_split("qrecc", split="train", paths=paths, seed=3))
    assert again == examples
    # Turn 7 of each conversation (row 9 * c + 6): conversations draw different answers.
    turn7_replies = {examples[f"train:{9 * c + 6}"]["response"][3:] for c in range(6)}
    assert len(turn7_replies) > 1
    other_seed = dict(dialog.load_dialog_split("qrecc", split="train", paths=paths, seed=4))
    assert other_seed.keys() == examples.keys() and other_seed != examples


def test_qrecc_draws_among_the_first_twenty_answers():
    assert dialog.qrecc_example(qrecc_turn(1, 6), split="train", seed=0) is None
    turn = qrecc_turn(1, 30)
    drawn = {
        dialog.qrecc_example(turn, split="train", seed=seed)["response"] for seed in range(400)
    }
    assert drawn == {f"c1 reply {t}." for t in range(1, 21)}


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
    forget_tasks("dialog")  # Registered earlier in this process without these paths.
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
