"""Multi-round synthesis: prompts against an independent construction, drop counting end to
end with a stub predictor, `flan-jax synthesize` on a tiny random decoder checkpoint, and a
run killed with SIGKILL and resumed against an uninterrupted one.

The kill test runs this file as a child process (see `_main` at the bottom).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import seqio

from flan_jax import checkpoints, inference
from flan_jax.cli import main as cli
from flan_jax.data import export
from flan_jax.inference import DecodeConfig
from flan_jax.ipt import synthesis
from flan_jax.ipt.format import Pair, SynthesisRecord
from flan_jax.models import t5
from flan_jax.testing.models import make_tiny_t5_config, save_tiny_demo_decoder_checkpoint

BYTES = seqio.ByteVocabulary()  # lossless, so a prompt decodes back to its exact text
BOS = 0
EOS = BYTES.eos_id


# ------------------------------------------------------------------------------------------
# An independent construction of the prompts, from the format's written definition
# ------------------------------------------------------------------------------------------
def _record_tokens(text: str, pairs: list[tuple[str, str]]) -> list[int]:
    """[BOS] text, blank line, "Q: i", blank line, "A: r" (pairs joined by blank lines) [EOS]."""
    rendered = "\n\n".join(f"Q: {i}\n\nA: {r}" for i, r in pairs)
    return [BOS, *BYTES.encode(text + "\n\n"), *BYTES.encode(rendered), EOS]


def _expected_prompt(context: list[tuple[str, list]], text: str, budget: int) -> list[int]:
    """The newest whole records (with pairs) that fit before [BOS] text, in order."""
    new = [BOS, *BYTES.encode(text + "\n\n")]
    if len(new) > budget:
        return new[:budget]
    records = [_record_tokens(t, p) for t, p in context if p]
    for first in range(len(records) + 1):  # drop the oldest first
        prompt = [token for record in records[first:] for token in record] + new
        if len(prompt) <= budget:
            return prompt
    raise AssertionError("unreachable: the new text alone fits")


def _words(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(f"w{int(x)}" for x in rng.integers(0, 50, size=n))


@pytest.mark.parametrize("budget", [20, 60, 90, 140, 400])
def test_build_prompt_keeps_the_newest_whole_records_within_the_budget(budget):
    context = [
        (_words(5, 1), [("what is it?", "a thing")]),
        (_words(2, 2), []),  # no pairs: never carried
        (_words(8, 3), [("why?", "because"), ("who?", "nobody")]),
        (_words(3, 4), [("when?", "now")]),
    ]
    records = [SynthesisRecord(t, tuple(Pair(*p) for p in ps)) for t, ps in context]
    text = _words(4, 5)
    prompt = synthesis.build_prompt(BYTES, context=records, text=text, bos_id=BOS, budget=budget)
    expected = _expected_prompt(context, text, budget)
    assert prompt.tokens.tolist() == expected
    assert len(prompt.tokens) <= budget
    assert prompt.model_row == expected[1:]  # the model prepends its start token (= BOS)
    assert prompt.text_cut == (len(BYTES.encode(text)) + 3 > budget)
    if budget == 400:
        assert prompt.num_context_records == 3


class StubPredictor:
    """Answers each prompt row with a generation chosen by its new text; records the rows.

    The new text is what follows the row's last EOS, up to the final blank line.
    """

    def __init__(self, generations, *, max_decode_len=200, method="greedy", default=None):
        self.vocabulary = BYTES
        self.config = DecodeConfig(method=method, max_decode_len=max_decode_len, batch_size=4)
        self.generations = generations
        self.default = default
        self.calls: list[list[list[int]]] = []

    def new_text(self, row) -> str:
        row = list(row)
        tail = row[len(row) - row[::-1].index(EOS) :] if EOS in row else row
        return BYTES.decode([t for t in tail if t != BOS]).removesuffix("\n\n")

    def predict_tokens(self, token_rows, *, rng=None):
        self.calls.append([list(row) for row in token_rows])
        out = []
        for row in token_rows:
            text = self.new_text(row)
            generated = self.generations(text) if callable(self.generations) else None
            if generated is None:
                generated = self.generations.get(text, self.default)
            out.append(np.asarray(BYTES.encode(generated)[: self.config.max_decode_len]))
        return out

    def detokenize(self, tokens):
        return BYTES.decode([int(t) for t in tokens])


def _pair_of(text: str) -> tuple[str, str]:
    return (f"what about {text}?", f"{text} indeed")


def _answer(text: str) -> str:
    return "Q: {}\n\nA: {}".format(*_pair_of(text))


@pytest.mark.parametrize("budget", [40, 120, 180, 10_000])
def test_each_round_carries_exactly_the_earlier_rounds_of_its_group_in_order(budget):
    rounds = 3
    texts = [_words(1 + (i * 7) % 9, i) + f" t{i}" for i in range(10)]
    texts[4] = ""  # an empty text: no generation, no context record
    texts[7] = _words(40, 77) + " t7"  # longer than the small budgets alone
    config = synthesis.SynthesisConfig(
        rounds=rounds, pairs_per_text=3, context_budget=budget, shard_size=12
    )
    # A cut prompt shows the model a prefix of its text; the stub answers for the whole text.
    stub = StubPredictor(
        lambda seen: _answer(next(t for t in texts if t and t.startswith(seen))),
        max_decode_len=1000,
    )
    records, counts = synthesis.synthesize_texts(
        texts, predictor=stub, bos_id=BOS, config=config, rng=jax.random.key(0)
    )
    assert [r.text for r in records] == texts
    pairs = {t: ([] if not t else [_pair_of(t)]) for t in texts}
    assert [[(p.instruction, p.response) for p in r.pairs] for r in records] == [
        pairs[t] for t in texts
    ]
    # One call per round, rows in text order; each row the independent prompt.
    assert len(stub.calls) == rounds
    for round_index, rows in enumerate(stub.calls):
        members = [i for i in range(round_index, len(texts), rounds) if texts[i]]
        assert len(rows) == len(members)
        for i, row in zip(members, rows):
            group = [(t, pairs[t]) for t in texts[i - round_index : i]]
            expected = _expected_prompt(group, texts[i], budget)
            assert [BOS, *row] == expected, (round_index, i)
            assert len(row) + 1 <= budget
    if budget == 180:  # text 2's prompt has room for text 1's record, not for text 0's too
        carried = BYTES.decode([t for t in stub.calls[2][0] if t not in (BOS, EOS)])
        assert texts[1] in carried and texts[0] not in carried
    cut = sum(len(BYTES.encode(t)) + 3 > budget for t in texts if t)
    assert counts == {
        "texts": 10,
        "pairs": 9,
        "empty_texts": 1,
        "cut_texts": cut,
        "dropped": {},
    }


# Generations -> (kept pairs, drops by reason) with pairs_per_text=2 and max_decode_len=60.
MALFORMED = {
    "good": ("Q: a?\n\nA: b\n\nQ: c?\n\nA: d", [("a?", "b"), ("c?", "d")], {}),
    "three": ("Q: a? A: b Q: c? A: d Q: e? A: f", [("a?", "b"), ("c?", "d")], {"beyond": 1}),
    "empty": ("", [], {"empty": 1}),
    "duplicate": ("Q: a? A: b Q: A? A: B", [("a?", "b")], {"duplicate": 1}),
    "no_response": ("Q: a? Q: c? A: d", [("c?", "d")], {"missing_response": 1}),
    "no_instruction": ("A: lone Q: c? A: d", [("c?", "d")], {"missing_instruction": 1}),
    "repeated": ("Q: Q: a? A: b", [], {"repeated_separator": 1}),
    "unmarked": ("just words", [], {"unmarked_text": 1}),
    "ends_in_q": ("Q: a? A: b Q: half", [("a?", "b")], {"truncated": 1}),
    # 60 tokens without EOS: the last response may be cut, so its pair is dropped.
    "cut": ("Q: a? A: b Q: c? A: " + "d" * 60, [("a?", "b")], {"truncated": 1}),
}
_REASON = {"beyond": synthesis.BEYOND_PAIRS_PER_TEXT}


def _write_texts(path: Path, texts) -> Path:
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def test_malformed_generations_are_dropped_and_counted_end_to_end(tmp_path):
    names = list(MALFORMED) * 2  # 20 texts, 7 shards of 3 (the last holds 2)
    input_path = _write_texts(tmp_path / "in.jsonl", names)
    stub = StubPredictor({name: MALFORMED[name][0] for name in MALFORMED}, max_decode_len=60)
    config = synthesis.SynthesisConfig(rounds=1, pairs_per_text=2, shard_size=3)
    manifest = synthesis.synthesize_corpus(
        input_path=input_path,
        out_dir=tmp_path / "out",
        predictor=stub,
        bos_id=BOS,
        config=config,
        synthesizer={"checkpoint": "stub"},
    )
    records = list(synthesis.read_synthesized_records(tmp_path / "out"))
    assert [r.text for r in records] == names
    for name, record in zip(names, records):
        assert [(p.instruction, p.response) for p in record.pairs] == MALFORMED[name][1], name
    expected_drops: dict[str, int] = {}
    for name in names:
        for reason, n in MALFORMED[name][2].items():
            key = _REASON.get(reason, reason)
            expected_drops[key] = expected_drops.get(key, 0) + n
    totals = manifest["totals"]
    assert totals["dropped"] == dict(sorted(expected_drops.items()))
    assert totals["pairs"] == sum(len(MALFORMED[n][1]) for n in names)
    assert totals["texts"] == manifest["num_texts"] == 20 and manifest["complete"]
    assert [s["texts"] for s in manifest["shards"]] == [3] * 6 + [2]
    # The shards' counts add up to the totals.
    summed = synthesis.new_counts()
    for shard in manifest["shards"]:
        synthesis.add_counts(summed, shard)
    assert summed == totals


def test_a_resume_with_other_settings_is_refused(tmp_path):
    input_path = _write_texts(tmp_path / "in.jsonl", ["good", "empty"])
    stub = StubPredictor({"good": MALFORMED["good"][0]}, default="")
    run = dict(input_path=input_path, out_dir=tmp_path / "out", predictor=stub, bos_id=BOS)
    config = synthesis.SynthesisConfig(rounds=2, pairs_per_text=2, shard_size=2)
    synthesis.synthesize_corpus(**run, config=config, synthesizer={"checkpoint": "a"})
    other = synthesis.SynthesisConfig(rounds=2, pairs_per_text=3, shard_size=2)
    with pytest.raises(export.ExportError, match="'pairs_per_text' is 2 but this run asks for 3"):
        synthesis.synthesize_corpus(**run, config=other, synthesizer={"checkpoint": "a"})
    with pytest.raises(export.ExportError, match="'synthesizer'"):
        synthesis.synthesize_corpus(**run, config=config, synthesizer={"checkpoint": "b"})


def test_shards_must_hold_whole_groups():
    with pytest.raises(ValueError, match="multiple of rounds \\(3\\).*use 9"):
        synthesis.SynthesisConfig(rounds=3, pairs_per_text=1, shard_size=10)


# ------------------------------------------------------------------------------------------
# `flan-jax synthesize` on a tiny random decoder checkpoint
# ------------------------------------------------------------------------------------------
TEXTS = [
    f"the river {word} runs past the old mill number {i}"
    for i, word in enumerate(["slowly", "quickly", "north", "south", "today", "again", "twice"] * 3)
]


@pytest.fixture(scope="module")
def synthesizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthesizer")
    ckpt, _, _ = save_tiny_demo_decoder_checkpoint(root, step=1)
    return root, ckpt, _write_texts(root / "texts.jsonl", TEXTS)


def _synthesize_argv(ckpt, texts, out, *extra) -> list[str]:
    return [
        "synthesize",
        "--synthesizer",
        str(ckpt),
        "--input",
        str(texts),
        "--out",
        str(out),
        "--rounds",
        "3",
        "--pairs_per_text",
        "2",
        "--shard_size",
        "3",
        "--max_decode_len",
        "12",
        "--context_budget",
        "64",
        "--batch_size",
        "4",
        *extra,
    ]


def test_the_cli_matches_the_library_on_a_decoder_checkpoint(synthesizer, tmp_path, capsys):
    _, ckpt, texts = synthesizer
    argv = _synthesize_argv(ckpt, texts, tmp_path / "out", "--decode", "greedy")
    assert cli.main(argv) == 0
    assert f"for {len(TEXTS)} texts in 7 shards" in capsys.readouterr().out
    records = list(synthesis.read_synthesized_records(tmp_path / "out"))
    assert [r.text for r in records] == TEXTS

    loaded = checkpoints.load_model_checkpoint(ckpt)
    predictor = inference.Predictor(
        loaded.model,
        loaded.params,
        loaded.vocabulary,
        DecodeConfig(max_decode_len=12, batch_size=4),
    )
    config = synthesis.SynthesisConfig(rounds=3, pairs_per_text=2, context_budget=64, shard_size=3)
    direct = []
    for start in range(0, len(TEXTS), 3):
        shard, _ = synthesis.synthesize_texts(
            TEXTS[start : start + 3],
            predictor=predictor,
            bos_id=loaded.config.start_token_id,
            config=config,
            rng=jax.random.key(0),
        )
        direct += shard
    assert records == direct
    manifest = export.read_manifest(str(tmp_path / "out"))
    assert manifest["synthesizer"]["step"] == 1 and manifest["decoding"]["method"] == "greedy"
    # A random model writes no Q:/A: pairs: everything it wrote is counted as dropped.
    assert manifest["totals"]["dropped"] and manifest["totals"]["texts"] == len(TEXTS)


def test_a_t5_synthesizer_is_refused_with_one_message(synthesizer, tmp_path, capsys):
    root, _, texts = synthesizer
    config = make_tiny_t5_config(vocab_size=1024)
    ckpt = checkpoints.save_model_checkpoint(
        tmp_path / "t5",
        params=t5.init_params(config, jax.random.key(0)),
        config=config,
        vocab_path=root / "ckpt" / checkpoints.VOCAB_FILENAME,
        extra_ids=0,
    )
    assert cli.main(_synthesize_argv(ckpt, texts, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "T5Config (encoder-decoder) model" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_killed_synthesis_resumes_to_the_uninterrupted_output(synthesizer, tmp_path):
    _, ckpt, texts = synthesizer
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    sampling = ("--decode", "sample", "--temperature", "0.8", "--seed", "3")
    child = subprocess.Popen(
        [sys.executable, __file__, *_synthesize_argv(ckpt, texts, killed, *sampling)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    manifest_path = killed / export.MANIFEST_NAME
    deadline = time.time() + 240
    while time.time() < deadline and child.poll() is None:
        if manifest_path.exists() and json.loads(manifest_path.read_text())["shards"]:
            break
        time.sleep(0.02)
    assert child.poll() is None, f"the child ended before the kill: {child.communicate()}"
    child.send_signal(signal.SIGKILL)
    child.wait()
    at_kill = json.loads(manifest_path.read_text())
    assert not at_kill["complete"] and 1 <= len(at_kill["shards"]) < 7

    assert cli.main(_synthesize_argv(ckpt, texts, killed, *sampling)) == 0
    assert cli.main(_synthesize_argv(ckpt, texts, whole, *sampling)) == 0
    resumed = list(synthesis.read_synthesized_records(killed))
    assert resumed == list(synthesis.read_synthesized_records(whole))
    assert [r.text for r in resumed] == TEXTS
    names = sorted(os.listdir(killed))
    assert names == sorted(os.listdir(whole))  # no temporary file left behind
    for name in names:
        assert (killed / name).read_text() == (whole / name).read_text()


def _main(argv: list[str]) -> int:
    """Child process: `flan-jax synthesize ARGS`, slowed so the kill lands mid-way."""
    original = inference.Predictor.predict_tokens

    def slow_predict_tokens(self, token_rows, **kwargs):
        time.sleep(0.3)
        return original(self, token_rows, **kwargs)

    inference.Predictor.predict_tokens = slow_predict_tokens  # type: ignore[method-assign]
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
