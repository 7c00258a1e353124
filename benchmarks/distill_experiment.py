"""The end-to-end CoT distillation comparison on this CPU (not a timed test).

A small T5 teacher is trained on the demo collection's multi-step arithmetic CoT problems,
sampled on the training questions (correct samples and their top-5 kept in a teacher store),
and three smaller students are trained for the same steps from the same initialisation:
answer-only fine-tuning, CoT sample matching and CoT distribution matching. See
`flan_jax.distill.experiment` for the phases and what is measured.

Usage: python benchmarks/distill_experiment.py [--preset cpu|smoke] [--out_dir DIR]
Prints the table and writes distill_experiment.{md,json,png} to benchmarks/results/.
"""
from __future__ import annotations

import argparse
import logging
import os

from flan_jax.distill import experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--out_dir", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--work_dir", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = experiment.run_experiment(out_dir=args.out_dir, work_dir=args.work_dir,
                                       config=experiment.get_preset(args.preset))
    with open(result.table_path, encoding="utf-8") as f:
        print(f.read())


if __name__ == "__main__":
    main()
