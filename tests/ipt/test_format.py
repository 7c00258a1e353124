"""The synthesizer's text format: rendering, parsing, JSONL records, tokens and loss mask."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest

from flan_jax.data import vocabularies
from flan_jax.ipt import format as ipt_format
from flan_jax.ipt.format import Pair, SynthesisFormatError, SynthesisRecord
from flan_jax.testing import hf_decoders, models

TIDES = SynthesisRecord(
    "Tides follow the moon.\nThey rise twice a day.",
    (Pair("What do tides follow?", "The moon."), Pair("How often do tides rise?", "Twice a day.")),
)


def test_golden_rendering():
    assert ipt_format.render_context(TIDES.text) == (
        "Tides follow the moon.\nThey rise twice a day.\n\n"
    )
    assert ipt_format.render_pairs(TIDES.pairs) == (
        "Q: What do tides follow?\n\nA: The moon.\n\nQ: How often do tides rise?\n\nA: Twice a day."
    )


@pytest.mark.parametrize("newlines_kept", [True, False])
def test_parse_recovers_rendered_pairs(newlines_kept):
    rendered = ipt_format.render_pairs(TIDES.pairs)
    if not newlines_kept:  # what a T5-layout SentencePiece vocabulary decodes to
        rendered = " ".join(rendered.split())
    result = ipt_format.parse_pairs(rendered)
    assert result.pairs == TIDES.pairs
    assert result.dropped == collections.Counter()


def test_words_ending_in_a_marker_letter_are_not_markers():
    pairs = (Pair("Where is the FAQ: page?", "See the QA: list."),)
    assert ipt_format.parse_pairs(ipt_format.render_pairs(pairs)).pairs == pairs


GOOD = "Q: What do tides follow? A: The moon."
# (generation, finished, pairs kept as (instruction, response), dropped counts)
MALFORMED = [
    ("", True, [], {"empty": 1}),
    ("   \n\n ", True, [], {"empty": 1}),
    ("The moon pulls the sea.", True, [], {"unmarked_text": 1}),
    ("Sure! " + GOOD, True, [("What do tides follow?", "The moon.")], {"unmarked_text": 1}),
    # Cut at the length limit inside the second response: that pair goes.
    (
        GOOD + " Q: How often? A: Twice a",
        False,
        [("What do tides follow?", "The moon.")],
        {"truncated": 1},
    ),
    # Cut after an instruction: with or without EOS, no response to keep.
    (GOOD + " Q: How often?", True, [("What do tides follow?", "The moon.")], {"truncated": 1}),
    ("Q: How often?", False, [], {"truncated": 1}),
    ("Q: How often? Q: Why? A: Gravity.", True, [("Why?", "Gravity.")], {"missing_response": 1}),
    (
        "A: The moon. " + GOOD,
        True,
        [("What do tides follow?", "The moon.")],
        {"missing_instruction": 1},
    ),
    (
        GOOD + " A: And the sun.",
        True,
        [("What do tides follow?", "The moon.")],
        {"missing_instruction": 1},
    ),
    ("Q: Q: Why? A: Gravity.", True, [], {"repeated_separator": 1}),
    ("Q: Why? A: A: Gravity.", True, [], {"repeated_separator": 1}),
    ("Q: Why? A: Gravity. A: A: Mass.", True, [("Why?", "Gravity.")], {"repeated_separator": 1}),
    ("Q: A: Gravity.", True, [], {"empty": 1}),
    ("Q: Why? A:  " + GOOD, True, [("What do tides follow?", "The moon.")], {"empty": 1}),
    (
        GOOD + " " + GOOD.upper(),
        True,
        [("What do tides follow?", "The moon.")],
        {"duplicate": 1},
    ),
    (
        GOOD + "\n\n" + GOOD + " " + GOOD,
        True,
        [("What do tides follow?", "The moon.")],
        {"duplicate": 2},
    ),
]


@pytest.mark.parametrize("generated,finished,kept,dropped", MALFORMED)
def test_malformed_generations_are_dropped_and_counted(generated, finished, kept, dropped):
    result = ipt_format.parse_pairs(generated, finished=finished)
    assert [(p.instruction, p.response) for p in result.pairs] == kept
    assert result.dropped == collections.Counter(dropped)
    assert set(result.dropped) <= set(ipt_format.DROP_REASONS)


def test_unfinished_generation_keeps_complete_earlier_pairs():
    rendered = ipt_format.render_pairs(TIDES.pairs)
    result = ipt_format.parse_pairs(rendered, finished=False)
    assert result.pairs == TIDES.pairs[:1]
    assert result.dropped == {"truncated": 1}


@pytest.mark.parametrize(
    "pair", [Pair("", "x"), Pair("x", "  "), Pair("Why? A: because", "x"), Pair("x", "Q: y")]
)
def test_render_rejects_fields_that_would_not_parse_back(pair):
    with pytest.raises(SynthesisFormatError, match=r"pairs\[0\]"):
        ipt_format.render_pairs([pair])


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "records.jsonl"
    records = [TIDES, SynthesisRecord("No pairs yet.")]
    ipt_format.write_records(path, records)
    lines = path.read_text().splitlines()
    assert json.loads(lines[1]) == {"text": "No pairs yet.", "pairs": []}
    assert list(ipt_format.read_records(path)) == records


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"text": 3}', "field 'text' must be a string"),
        ('{"text": "t", "pairs": {}}', "field 'pairs' must be a list"),
        ('{"text": "t", "pairs": [{"instruction": "i"}]}', r"pairs\[0\]: expected"),
        ('{"text": "t", "pairs": [{"instruction": "i", "response": 1}]}', r"response must"),
        ('{"text": "t", "extra": 1}', "unknown field"),
        ("[1]", "expected a JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(TIDES.to_json()) + "\n\n" + line + "\n")
    with pytest.raises(SynthesisFormatError, match=rf"records.jsonl:3: .*{message}"):
        list(ipt_format.read_records(path))


def _check_encoding(vocabulary, bos_id):
    tokens, loss_mask = ipt_format.encode_example(vocabulary, TIDES, bos_id=bos_id)
    # Independently: the pieces of the format, tokenised one by one.
    context = vocabulary.encode("Tides follow the moon.\nThey rise twice a day.\n\n")
    pairs = vocabulary.encode(
        "Q: What do tides follow?\n\nA: The moon.\n\nQ: How often do tides rise?\n\nA: Twice a day."
    )
    np.testing.assert_array_equal(tokens, [bos_id, *context, *pairs, vocabulary.eos_id])
    np.testing.assert_array_equal(loss_mask, [0] * (1 + len(context)) + [1] * (len(pairs) + 1))
    assert tokens.dtype == loss_mask.dtype == np.int32
    parsed = ipt_format.parse_pairs(vocabulary.decode(tokens[loss_mask == 1].tolist()))
    np.testing.assert_array_equal(
        ipt_format.encode_context(vocabulary, TIDES.text, bos_id=bos_id), tokens[: 1 + len(context)]
    )
    return parsed


def test_encode_example_t5_layout_sentencepiece(tmp_path):
    vocabulary = vocabularies.get_vocabulary(str(models.write_test_sentencepiece(tmp_path)))
    assert vocabulary.eos_id == 1
    _check_encoding(vocabulary, bos_id=0)  # its pieces lack "Q" and ":", so no parse check


def test_encode_example_byte_level_bpe(tmp_path):
    vocabulary = vocabularies.get_vocabulary(str(hf_decoders.write_test_tokenizer(tmp_path)))
    assert vocabulary.eos_id == 2
    parsed = _check_encoding(vocabulary, bos_id=0)
    assert parsed.pairs == TIDES.pairs  # byte-level BPE decodes exactly
