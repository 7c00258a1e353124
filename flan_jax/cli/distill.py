"""`flan-jax distill`: teacher stores, alignment, student training and checkpoint selection.

    flan-jax distill ingest-openai --input completions.jsonl --out STORE [--k 5]
        [--keep_correct]
    flan-jax distill generate --teacher CKPT --questions q.jsonl --out STORE
        --num_samples 40 --temperature 0.5 [--top_k 5] [--dataset gsm8k]
    flan-jax distill align --store STORE --student_vocab spiece.model --out ALIGNED
        [--teacher_vocab vocab.json] [--k 5]
    flan-jax distill train --gin_file=runs/distill.gin --gin.STORE=STORE \\
        --gin.STUDENT=CKPT_DIR --gin.MODEL_DIR=OUT [--gin.TRAIN_STEPS=N ...]
    flan-jax distill select --checkpoint_dir OUT --eval gsm8k=PATH --eval svamp=PATH
        --dev svamp [--format zs_cot] [--num_samples N --temperature T] [--max_decode_len 256]
        [--max_examples N] [--train_questions PATH [--train_dataset gsm8k]] --out RESULTS.json

`--questions` is a JSONL file of {"question", "answer"[, "id"]} objects, or with `--dataset`
a file in that data set's original format (gsm8k, multiarith, asdiv, svamp). `align` writes
`ALIGNED/aligned.npz` (per example: student ids, top-k rows, fallback flags) and
`ALIGNED/summary.json` with the fallback rate, which it also prints. Training aligns on the
fly (`flan_jax.distill.targets`); `align` reports the rate before a run and keeps the result.

`train` runs `flan_jax.distill.train_student.train_student` as bound by the gin files (see
`runs/distill.gin` for its macros; sample matching is `--gin.LOSS_KIND='"cross_entropy"'
--gin.KIND_OPTIONS={}`). `select` decodes every step of a checkpoint directory
on the `--eval` sets (each NAME is the set's original format: gsm8k, multiarith, asdiv,
svamp), prints the accuracy table and the step that is best on the `--dev` sets, and writes
both to `--out`; with `--train_questions`, a dev set sharing a question with them is an error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

import numpy as np

from flan_jax.cli import flag_types
from flan_jax.cli.infer import InputError, read_jsonl


def _add_ingest(sub) -> None:
    parser = sub.add_parser("ingest-openai", help="OpenAI-style completion JSONL -> store")
    parser.add_argument("--input", required=True, nargs="+", help="completion JSONL file(s)")
    parser.add_argument("--out", required=True, help="teacher store directory (appended)")
    parser.add_argument(
        "--k", type=flag_types.positive_int, default=5, help="top-k kept per position"
    )
    parser.add_argument(
        "--keep_correct",
        action="store_true",
        help="keep only choices whose answer equals metadata.answer",
    )


def _add_generate(sub) -> None:
    parser = sub.add_parser("generate", help="sample a local teacher, store correct samples")
    parser.add_argument("--teacher", required=True, help="flan_jax checkpoint directory")
    parser.add_argument(
        "--step",
        type=flag_types.non_negative_int,
        default=None,
        help="checkpoint step (default latest)",
    )
    parser.add_argument("--questions", required=True, help="questions file")
    parser.add_argument(
        "--dataset", default=None, help="read --questions in this data set's format (e.g. gsm8k)"
    )
    parser.add_argument("--out", required=True, help="teacher store directory (appended)")
    parser.add_argument("--num_samples", type=flag_types.positive_int, default=4)
    parser.add_argument("--temperature", type=flag_types.positive_float, default=0.5)
    parser.add_argument(
        "--top_k",
        type=flag_types.positive_int,
        default=5,
        help="entries of the teacher distribution stored per position",
    )
    parser.add_argument("--max_decode_len", type=flag_types.positive_int, default=128)
    parser.add_argument(
        "--batch_size",
        type=flag_types.positive_int,
        default=16,
        help="questions per sampling call (each sampled num_samples times)",
    )
    parser.add_argument("--seed", type=flag_types.non_negative_int, default=0)


def _add_align(sub) -> None:
    parser = sub.add_parser("align", help="align a store to a student tokenizer")
    parser.add_argument("--store", required=True)
    parser.add_argument("--student_vocab", required=True, help="student SentencePiece model")
    parser.add_argument(
        "--teacher_vocab",
        default=None,
        help="JSON list of teacher token strings (default: the store's)",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--k", type=flag_types.positive_int, default=None, help="target width (default: store k)"
    )


def _add_select(sub) -> None:
    parser = sub.add_parser("select", help="accuracy of every saved step; best step on dev")
    parser.add_argument("--checkpoint_dir", required=True, help="directory of step dirs")
    parser.add_argument(
        "--eval",
        required=True,
        action="append",
        metavar="NAME=PATH",
        help="an evaluation set in its original format (repeatable)",
    )
    parser.add_argument("--dev", required=True, help="comma-separated selection sets")
    parser.add_argument("--format", default="zs_cot", choices=("zs_cot", "zs_answer_only"))
    parser.add_argument(
        "--num_samples",
        type=flag_types.positive_int,
        default=1,
        help="1: greedy; N > 1: N samples and a majority vote",
    )
    parser.add_argument("--temperature", type=flag_types.non_negative_float, default=0.7)
    parser.add_argument("--max_decode_len", type=flag_types.positive_int, default=256)
    parser.add_argument("--max_input_len", type=flag_types.positive_int, default=512)
    parser.add_argument(
        "--batch_size",
        type=flag_types.positive_int,
        default=32,
        help="questions per decoding call (each decoded num_samples times)",
    )
    parser.add_argument(
        "--max_examples", type=flag_types.positive_int, default=None, help="per evaluation set"
    )
    parser.add_argument("--seed", type=flag_types.non_negative_int, default=0)
    parser.add_argument(
        "--train_questions",
        default=None,
        help="training questions; the dev sets must not overlap them",
    )
    parser.add_argument(
        "--train_dataset",
        default=None,
        help="read --train_questions in this format (default: JSONL)",
    )
    parser.add_argument("--out", required=True, help="results JSON (written atomically)")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flan-jax distill", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_ingest, _add_generate, _add_align, _add_select):
        add(sub)
    sub.add_parser("train", help="train a student from gin configs (runs/distill.gin)")
    return parser


def run_ingest(args: argparse.Namespace) -> str:
    from flan_jax.distill.teacher_store import TeacherStoreWriter, ingest_openai_jsonl
    from flan_jax.evaluation.answers import answers_match

    def keep(record, choice) -> bool:
        gold = (record.get("metadata") or {}).get("answer")
        if gold is None:
            raise InputError(
                f"--keep_correct needs metadata.answer in every record; record "
                f"{record.get('id')!r} has none"
            )
        return answers_match(str(choice.get("text") or ""), str(gold))

    added = skipped = 0
    with TeacherStoreWriter(args.out, k=args.k, metadata={"producer": "openai"}) as writer:
        for path in args.input:
            a, s = ingest_openai_jsonl(path, writer, keep=keep if args.keep_correct else None)
            added, skipped = added + a, skipped + s
    return f"added {added} samples to {args.out} ({skipped} skipped as incorrect)"


def _read_questions(path: str, dataset: str | None):
    from flan_jax.evaluation.math_datasets import MathExample, load_math_dataset

    if dataset is not None:
        return load_math_dataset(dataset, path)
    records = read_jsonl(path, required=("question", "answer"))
    return [
        MathExample(
            question=r["question"],
            answer=r["answer"],
            rationale=None,
            source=os.path.basename(path),
            id=str(r.get("id", f"q{i}")),
        )
        for i, r in enumerate(records)
    ]


def run_generate(args: argparse.Namespace) -> str:
    from flan_jax.checkpoints import load_model_checkpoint
    from flan_jax.distill import teacher_generation
    from flan_jax.distill.teacher_store import TeacherStoreWriter

    questions = _read_questions(args.questions, args.dataset)
    loaded = load_model_checkpoint(args.teacher, step=args.step)
    decode = dataclasses.replace(
        teacher_generation.TEACHER_SAMPLING,
        num_samples=args.num_samples,
        temperature=args.temperature,
        max_decode_len=args.max_decode_len,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    generation = teacher_generation.GenerationConfig(decode=decode, store_top_k=args.top_k)
    names = teacher_generation.teacher_vocabulary(loaded.vocabulary, loaded.config.vocab_size)
    with TeacherStoreWriter(
        args.out,
        k=args.top_k,
        vocabulary=names,
        metadata={"producer": "flan_jax", "teacher": args.teacher},
    ) as writer:
        stats = teacher_generation.generate_teacher_store(
            model=loaded.model,
            params=loaded.params,
            vocabulary=loaded.vocabulary,
            examples=questions,
            writer=writer,
            generation=generation,
        )
    return (
        f"kept {stats.num_kept} of {stats.num_samples} samples "
        f"({stats.kept_rate:.1%}) for {stats.num_questions} questions in {args.out}"
    )


def run_align(args: argparse.Namespace) -> str:
    from flan_jax.data import file_io
    from flan_jax.data.vocabularies import get_vocabulary
    from flan_jax.distill import alignment, targets
    from flan_jax.distill.teacher_store import TeacherStore

    store = TeacherStore(args.store)
    if args.teacher_vocab is not None:
        text = file_io.read_text(args.teacher_vocab, error_type=InputError)
        try:
            store.vocabulary = list(json.loads(text))
        except json.JSONDecodeError as error:
            raise InputError(
                f"--teacher_vocab {args.teacher_vocab}:{error.lineno}: not valid JSON "
                f"({error.msg}); expected a JSON list of token strings."
            ) from None
    encode, pieces = targets.sentencepiece_encoder(get_vocabulary(args.student_vocab))
    stats = alignment.AlignmentStats()
    keys, student_ids, rows = [], [], []
    for key, ids, aligned in alignment.align_teacher_store(
        store, encode, pieces, k=args.k, stats=stats
    ):
        keys.append(key)
        student_ids.append(np.asarray(ids, np.int32))
        rows.append(aligned)
    os.makedirs(args.out, exist_ok=True)
    offsets = np.cumsum([0] + [len(ids) for ids in student_ids])
    k = rows[0].ids.shape[1] if rows else (args.k or store.k)
    # Any values: numpy's savez stub would match a **dict[str, ndarray] to allow_pickle.
    arrays: dict[str, Any] = {
        "keys": np.asarray(keys, str),
        "offsets": offsets,
        "student_ids": np.concatenate(student_ids or [np.zeros((0,), np.int32)]),
        "ids": np.concatenate([r.ids for r in rows] or [np.zeros((0, k), np.int32)]),
        "logprobs": np.concatenate([r.logprobs for r in rows] or [np.zeros((0, k), np.float32)]),
        "fallback": np.concatenate([r.fallback for r in rows] or [np.zeros((0,), bool)]),
    }
    file_io.write_atomically(
        os.path.join(args.out, "aligned.npz"), lambda f: np.savez(f, **arrays), mode="wb"
    )
    summary = {
        "store": args.store,
        "student_vocab": args.student_vocab,
        "num_examples": stats.num_examples,
        "num_student_tokens": stats.num_student_tokens,
        "num_fallback": stats.num_fallback,
        "fallback_rate": stats.fallback_rate,
    }
    file_io.write_json_atomically(os.path.join(args.out, "summary.json"), summary)
    return (
        f"aligned {stats.num_examples} examples ({stats.num_student_tokens} student tokens); "
        f"fallback rate {stats.fallback_rate:.2%}; wrote {args.out}"
    )


def run_select(args: argparse.Namespace) -> str:
    from flan_jax.data import file_io
    from flan_jax.distill import select_checkpoints as select
    from flan_jax.inference import DecodeConfig

    file_io.check_writable(args.out)  # before decoding every step

    eval_sets = select.load_eval_sets(
        select.parse_eval_specs(args.eval), max_examples=args.max_examples
    )
    training = (
        _read_questions(args.train_questions, args.train_dataset) if args.train_questions else None
    )
    decode = DecodeConfig(
        method="sample" if args.num_samples > 1 else "greedy",
        num_samples=args.num_samples,
        temperature=args.temperature,
        max_decode_len=args.max_decode_len,
        max_input_len=args.max_input_len,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    result = select.run_selection(
        checkpoint_dir=args.checkpoint_dir,
        eval_sets=eval_sets,
        dev_sets=[name for name in args.dev.split(",") if name],
        decode=decode,
        format_name=args.format,
        training=training,
    )
    select.write_selection(args.out, result)
    chosen = result.selection
    return (
        f"{result.table.to_markdown()}\n\nselected step {chosen.step} (mean dev accuracy "
        f"{chosen.dev_accuracy:.3f} on {', '.join(chosen.dev_sets)}); wrote {args.out}"
    )


def run_train(argv: list[str]) -> int:
    """`flan-jax distill train`: the gin-bound `train_student.train_student`."""
    import logging

    from flan_jax.cli import gin_flags
    from flan_jax.distill import train_student

    if argv and argv[0] in ("-h", "--help"):
        print(train_student.__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return gin_flags.run_gin_command(argv, train_student.train_student)


_COMMANDS = {
    "ingest-openai": run_ingest,
    "generate": run_generate,
    "align": run_align,
    "select": run_select,
}


def main(argv: list[str]) -> int:
    """Entry point of `flan-jax distill`."""
    if argv and argv[0] == "train":  # gin flags are not argparse flags
        return run_train(argv[1:])
    args = _build_parser().parse_args(argv)
    print(_COMMANDS[args.command](args))
    return 0
