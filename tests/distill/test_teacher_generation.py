"""Producer (b), the student targets built from a store, and `flan-jax distill` commands."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from flan_jax.cli import distill as distill_cli
from flan_jax.cli import main as cli
from flan_jax.data.vocabularies import get_vocabulary
from flan_jax.distill import alignment, targets, teacher_generation
from flan_jax.distill.teacher_store import TeacherStore, TeacherStoreWriter
from flan_jax.evaluation.math_datasets import MathExample
from flan_jax.inference import DecodeConfig, Predictor, pad_token_rows
from flan_jax.models import t5
from flan_jax.testing.models import make_tiny_t5_config, write_test_sentencepiece

QUESTIONS = [
    MathExample(
        question=f"Tara has {i} shells and finds 2 more. How many now?",
        answer=str(i + 2),
        rationale=None,
        source="toy",
        id=f"toy/{i}",
    )
    for i in range(3)
]


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory):
    path = write_test_sentencepiece(tmp_path_factory.mktemp("spm"), vocab_size=96)
    return get_vocabulary(str(path))


@pytest.fixture(scope="module")
def teacher():
    config = make_tiny_t5_config(vocab_size=96)
    return config, t5.init_params(config, jax.random.key(0))


def _sampling(num_samples: int) -> DecodeConfig:
    return DecodeConfig(
        method="sample", num_samples=num_samples, temperature=1.0, max_decode_len=10, batch_size=2
    )


def _generate(tmp_path, vocabulary, teacher, *, sample_fn, is_correct, num_samples=3):
    config, params = teacher
    generation = teacher_generation.GenerationConfig(decode=_sampling(num_samples), store_top_k=4)
    names = teacher_generation.teacher_vocabulary(vocabulary, config.vocab_size)
    store_dir = str(tmp_path / "store")
    with TeacherStoreWriter(store_dir, k=4, vocabulary=names) as writer:
        stats = teacher_generation.generate_teacher_store(
            model=t5.T5Model(config),
            params=params,
            vocabulary=vocabulary,
            examples=QUESTIONS,
            writer=writer,
            generation=generation,
            sample_fn=sample_fn,
            is_correct=is_correct,
        )
    return TeacherStore(store_dir), stats


def test_keeps_only_checked_samples_with_exact_teacher_top_k(tmp_path, vocabulary, teacher):
    config, params = teacher
    sampler = teacher_generation.make_sampler(
        Predictor(t5.T5Model(config), params, vocabulary, _sampling(3))
    )
    seen = []

    def recording_sampler(prompt_rows, rng):
        samples = sampler(prompt_rows, rng)
        seen.extend(
            (row, tokens)
            for row, row_samples in zip(prompt_rows, samples)
            for tokens in row_samples
        )
        return samples

    # A fake answer check; the sampling, scoring and storage paths are the real ones.
    def is_correct(text: str, gold: str) -> bool:
        return len(text) % 2 == 0

    store, stats = _generate(
        tmp_path, vocabulary, teacher, sample_fn=recording_sampler, is_correct=is_correct
    )
    encoder = pad_token_rows([row for row, _ in seen], length_multiple=1)
    samples = pad_token_rows([tokens for _, tokens in seen], length_multiple=1)
    texts = [vocabulary.decode(tokens.tolist()) for _, tokens in seen]
    expected = [i for i, text in enumerate(texts) if is_correct(text, "")]
    assert stats.num_samples == 9 and stats.num_kept == len(expected) == len(store)
    logits = t5.EncoderDecoder(config).apply(
        {"params": params}, encoder, np.pad(samples[:, :-1], ((0, 0), (1, 0)))
    )
    logprobs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    for stored, row in zip(store, expected):
        question, sample = divmod(row, 3)
        assert stored.key == f"{QUESTIONS[question].id}/{sample}"
        assert stored.metadata["text"] == texts[row]
        assert stored.metadata["answer"] == QUESTIONS[question].answer
        length = len(seen[row][1])
        np.testing.assert_array_equal(stored.tokens, samples[row, :length])
        want_logprobs = np.sort(logprobs[row, :length], axis=-1)[:, ::-1][:, :4]
        np.testing.assert_allclose(stored.top_logprobs, want_logprobs, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            np.take_along_axis(logprobs[row, :length], stored.top_ids.astype(int), axis=-1),
            stored.top_logprobs,
            rtol=1e-5,
            atol=1e-5,
        )
        np.testing.assert_allclose(
            stored.token_logprobs,
            logprobs[row, np.arange(length), samples[row, :length]],
            rtol=1e-5,
            atol=1e-5,
        )


def test_real_answer_check_keeps_correct_completions(tmp_path):
    from flan_jax.tasks.demo import get_demo_vocabulary

    vocabulary = get_demo_vocabulary()  # it spells digits, unlike the tiny test model
    config = make_tiny_t5_config(vocab_size=1024)
    teacher = (config, t5.init_params(config, jax.random.key(0)))
    completions = ["2 + 2 = 4. The answer is 4.", "The answer is 9."]  # gold of toy/0 is 2

    def fake_sampler(prompt_rows, rng):
        rows = [
            list(vocabulary.encode(completions[i % 2].replace("4", "2")))
            if i % 3 == 0
            else list(vocabulary.encode(completions[1]))
            for i in range(3 * len(prompt_rows))
        ]
        return [[np.array(row) for row in rows[3 * p : 3 * p + 3]] for p in range(len(prompt_rows))]

    store, stats = _generate(
        tmp_path,
        vocabulary,
        teacher,
        sample_fn=fake_sampler,
        is_correct=teacher_generation.answers.answers_match,
    )
    assert stats.correct_per_question == [1, 0, 0]
    assert [example.key for example in store] == ["toy/0/0"]
    assert store[0].metadata["text"] == "2 + 2 = 2. The answer is 2."


def test_distribution_targets_carry_the_teacher_top_k(tmp_path, vocabulary, teacher):
    store, _ = _generate(
        tmp_path,
        vocabulary,
        teacher,
        sample_fn=None,
        is_correct=lambda text, gold: True,
        num_samples=2,
    )
    stats = alignment.AlignmentStats()
    common = {"vocabulary": vocabulary, "ratios": {"zs_cot": 1.0}, "seed": 0}
    dist = targets.build_teacher_examples(store, distribution=True, stats=stats, **common)
    samp = targets.build_teacher_examples(store, distribution=False, **common)
    assert len(dist) == len(samp) == len(store) == 6
    for stored, d, s in zip(store, dist, samp):
        np.testing.assert_array_equal(d.targets, s.targets)
        np.testing.assert_array_equal(d.inputs, s.inputs)
        assert d.targets[-1] == 1 and d.teacher_logprobs[-1, 0] == 0.0
        np.testing.assert_array_equal(s.teacher_ids[:, 0], s.targets)
        if np.array_equal(d.targets[:-1], stored.tokens):  # the student re-tokenised alike
            matched = d.teacher_logprobs[:-1, 1] > -np.inf
            np.testing.assert_array_equal(d.teacher_ids[:-1][matched], stored.top_ids[matched])
    assert 0.0 <= stats.fallback_rate < 1.0


def _completion(text: str, tokens: list[str], tops: list[dict[str, float]], answer: str) -> dict:
    return {
        "id": f"q-{answer}",
        "metadata": {"answer": answer},
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": {
                    "tokens": tokens,
                    "token_logprobs": [max(t.values()) for t in tops],
                    "top_logprobs": tops,
                },
            }
        ],
    }


def test_cli_ingest_openai_and_align(tmp_path, vocabulary, capsys):
    lines = [
        _completion(
            " 3 + 4 = 7. The answer is 7.",
            [" 3", " +", " 4", " =", " 7", "."],
            [
                {" 3": -0.1, " 2": -2.5},
                {" +": -0.01},
                {" 4": -0.2, " 5": -1.9},
                {" =": -0.05},
                {" 7": -0.3, " 8": -1.4},
                {".": -0.02},
            ],
            "7",
        ),
        _completion(
            " The answer is 9.",
            [" The", " answer", " is", " 9", "."],
            [{" The": -0.1}, {" answer": -0.1}, {" is": -0.1}, {" 9": -0.4}, {".": -0.1}],
            "8",
        ),
    ]
    source = tmp_path / "completions.jsonl"
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    store_dir = str(tmp_path / "store")
    assert (
        distill_cli.main(
            [
                "ingest-openai",
                "--input",
                str(source),
                "--out",
                store_dir,
                "--k",
                "3",
                "--keep_correct",
            ]
        )
        == 0
    )
    assert "added 1 samples" in capsys.readouterr().out
    store = TeacherStore(store_dir)
    assert len(store) == 1 and store.k == 3
    assert store.token_strings(store[0].tokens) == [" 3", " +", " 4", " =", " 7", "."]
    assert math.isclose(float(store[0].top_logprobs[0, 1]), -2.5, rel_tol=1e-6)

    out_dir = tmp_path / "aligned"
    assert (
        distill_cli.main(
            [
                "align",
                "--store",
                store_dir,
                "--student_vocab",
                vocabulary.sentencepiece_model_file,
                "--out",
                str(out_dir),
            ]
        )
        == 0
    )
    assert "fallback rate" in capsys.readouterr().out
    summary = json.loads((out_dir / "summary.json").read_text())
    with np.load(out_dir / "aligned.npz") as aligned:
        assert aligned["fallback"].sum() == summary["num_fallback"]
        assert len(aligned["student_ids"]) == summary["num_student_tokens"] > 0


def test_cli_ingest_names_the_bad_line(tmp_path, capsys):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"choices": []}\nnot json\n')
    argv = ["distill", "ingest-openai", "--input", str(source), "--out", str(tmp_path / "s")]
    assert cli.main(argv) == 2
    assert f"{source}:2" in capsys.readouterr().err


def test_cli_generate_from_a_checkpoint(tmp_path, vocabulary, teacher, capsys):
    from flan_jax.checkpoints import save_model_checkpoint

    config, params = teacher
    ckpt = save_model_checkpoint(
        tmp_path / "teacher",
        params=params,
        config=config,
        vocab_path=vocabulary.sentencepiece_model_file,
        extra_ids=0,
    )
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        "".join(
            json.dumps({"question": q.question, "answer": q.answer, "id": q.id}) + "\n"
            for q in QUESTIONS
        )
    )
    store_dir = tmp_path / "store"
    assert (
        distill_cli.main(
            [
                "generate",
                "--teacher",
                str(ckpt),
                "--questions",
                str(questions),
                "--out",
                str(store_dir),
                "--num_samples",
                "2",
                "--temperature",
                "1.0",
                "--top_k",
                "3",
                "--max_decode_len",
                "8",
            ]
        )
        == 0
    )
    assert "of 6 samples" in capsys.readouterr().out
    store = TeacherStore(str(store_dir))
    assert store.k == 3 and len(store.vocabulary) == config.vocab_size
    for example in store:  # whatever the random teacher got right is stored whole
        assert example.metadata["question_id"] in {q.id for q in QUESTIONS}
        assert example.top_ids.shape == (len(example.tokens), 3)
