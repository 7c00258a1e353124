"""Teacher store: round trips, appends, atomic shards and the OpenAI JSONL producer."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from flan_jax.distill import teacher_store as ts


def _example(rng: np.random.Generator, length: int, width: int, vocab: int = 50):
    tokens = rng.integers(0, vocab, size=length)
    ids = np.array([rng.choice(vocab, size=width, replace=False) for _ in range(length)])
    logprobs = np.log(rng.dirichlet(np.ones(width), size=length) * 0.9).astype(np.float32)
    return tokens, ids.reshape(length, width), logprobs.reshape(length, width)


def test_round_trip_sorts_pads_and_appends_across_shards(tmp_path):
    rng = np.random.default_rng(0)
    vocab = [f"tok{i}" for i in range(50)]
    written = {}
    with ts.TeacherStoreWriter(
        str(tmp_path), k=4, vocabulary=vocab, examples_per_shard=2, metadata={"teacher": "test"}
    ) as writer:
        for i, (length, width) in enumerate([(3, 6), (5, 2), (0, 4), (4, 4), (1, 3)]):
            example = _example(rng, length, width)
            writer.add(f"ex{i}", *example, metadata={"i": i})
            written[f"ex{i}"] = example
    with ts.TeacherStoreWriter(str(tmp_path), k=4, examples_per_shard=10) as writer:
        example = _example(rng, 2, 5)
        writer.add("appended", *example, token_logprobs=np.array([-0.5, -1.0]))
        written["appended"] = example

    store = ts.TeacherStore(str(tmp_path))
    assert len(store) == 6 and store.k == 4 and store.vocabulary == vocab
    assert store.metadata == {"teacher": "test"}
    assert [shard["file"] for shard in ts._read_index(str(tmp_path))["shards"]] == [
        "shard-00000.npz",
        "shard-00001.npz",
        "shard-00002.npz",
        "shard-00003.npz",
    ]
    for read in store:
        tokens, ids, logprobs = written[read.key]
        np.testing.assert_array_equal(read.tokens, tokens)
        assert read.top_ids.shape == read.top_logprobs.shape == (len(tokens), 4)
        for position in range(len(tokens)):
            order = np.argsort(-logprobs[position], kind="stable")[:4]
            kept = len(order)
            np.testing.assert_array_equal(read.top_ids[position, :kept], ids[position, order])
            np.testing.assert_array_equal(
                read.top_logprobs[position, :kept], logprobs[position, order]
            )
            assert np.all(read.top_ids[position, kept:] == ts.PAD_ID)
            assert np.all(read.top_logprobs[position, kept:] == -np.inf)
    assert store[0].metadata == {"i": 0}
    np.testing.assert_array_equal(store[-1].token_logprobs, [-0.5, -1.0])
    assert np.all(np.isnan(store[0].token_logprobs))
    with pytest.raises(IndexError):
        store[6]


def test_failed_shard_write_leaves_store_readable_and_no_temp_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    writer = ts.TeacherStoreWriter(str(tmp_path), k=3)
    writer.add("kept", *_example(rng, 4, 3))
    writer.flush()

    def broken_savez(handle, **arrays):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ts.np, "savez", broken_savez)
    writer.add("lost", *_example(rng, 4, 3))
    with pytest.raises(OSError, match="disk full"):
        writer.flush()
    assert sorted(os.listdir(tmp_path)) == ["index.json", "shard-00000.npz", "vocabulary.json"]
    store = ts.TeacherStore(str(tmp_path))
    assert [example.key for example in store] == ["kept"]


def test_reopening_with_different_k_or_vocabulary_is_an_error(tmp_path):
    with ts.TeacherStoreWriter(str(tmp_path), k=2, vocabulary=["a", "b"]):
        pass
    with pytest.raises(ts.TeacherStoreError, match="k=2"):
        ts.TeacherStoreWriter(str(tmp_path), k=3)
    with pytest.raises(ts.TeacherStoreError, match="does not extend"):
        ts.TeacherStoreWriter(str(tmp_path), vocabulary=["b", "a"])
    with pytest.raises(ts.TeacherStoreError, match="not a teacher store"):
        ts.TeacherStore(str(tmp_path / "missing"))


def _completion(choices, **extra):
    return json.dumps({"id": "cmpl-1", "object": "text_completion", "choices": choices, **extra})


def _choice(index, tokens, tops, text="", token_logprobs=None):
    return {
        "text": text,
        "index": index,
        "finish_reason": "stop",
        "logprobs": {
            "tokens": tokens,
            "token_logprobs": token_logprobs or [max(t.values()) for t in tops],
            "top_logprobs": tops,
            "text_offset": list(range(len(tokens))),
        },
    }


def test_ingest_openai_jsonl_maps_strings_to_store_ids(tmp_path):
    path = tmp_path / "teacher.jsonl"
    good = _choice(
        0,
        [" 3", " +", " 4"],
        [{" 3": -0.1, " 4": -2.5}, {" +": -0.01}, {" 4": -0.2, " 5": -1.9, " 6": -3.0}],
        text=" 3 + 4",
    )
    wrong = _choice(1, [" 9"], [{" 9": -0.7}], text=" 9")
    path.write_text(_completion([good, wrong], metadata={"question": "3+4?"}) + "\n\n", "utf-8")
    with ts.TeacherStoreWriter(str(tmp_path / "store"), k=2) as writer:
        added, skipped = ts.ingest_openai_jsonl(
            str(path), writer, keep=lambda record, choice: choice["text"] != " 9"
        )
    assert (added, skipped) == (1, 1)
    store = ts.TeacherStore(str(tmp_path / "store"))
    (example,) = list(store)
    assert example.key == "cmpl-1/0"
    assert store.token_strings(example.tokens) == [" 3", " +", " 4"]
    assert store.token_strings(example.top_ids[0]) == [" 3", " 4"]
    assert store.token_strings(example.top_ids[1]) == [" +", ""]
    assert store.token_strings(example.top_ids[2]) == [" 4", " 5"]  # cut to k=2
    np.testing.assert_allclose(example.top_logprobs[2], [-0.2, -1.9])
    assert example.metadata["question"] == "3+4?" and example.metadata["text"] == " 3 + 4"
    assert example.metadata["source"].endswith("teacher.jsonl:1")


@pytest.mark.parametrize(
    "line,message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"id": "x"}), "'choices' list"),
        (_completion([{"text": "a", "logprobs": None}]), "no 'logprobs'"),
        (_completion([_choice(0, ["a", "b"], [{"a": -0.1}])]), "2 tokens but 1 top_logprobs"),
        (_completion([_choice(0, ["a"], [{"a": 0.5}], token_logprobs=[-0.1])]), "log-probs <= 0"),
        (_completion([_choice(0, [7], [{"a": -0.5}])]), "not a string"),
    ],
)
def test_ingest_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(_completion([_choice(0, ["a"], [{"a": -0.1}])]) + "\n" + line + "\n")
    with ts.TeacherStoreWriter(str(tmp_path / "store"), k=2) as writer:
        with pytest.raises(ts.TeacherStoreError, match=message) as error:
            ts.ingest_openai_jsonl(str(path), writer)
    assert f"{path}:2" in str(error.value)
