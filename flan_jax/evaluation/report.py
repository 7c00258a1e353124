"""The reports of `flan-jax eval`: results.json, results.md and PNG plots.

One `CheckpointResult` per evaluated (checkpoint, step). The JSON holds everything (per
benchmark scores and breakdowns, averages, dtype, example counts, the run's settings); the
Markdown has one table per suite, a row per (checkpoint, step) and a column per benchmark;
the plots (matplotlib, from the `bench` or `test` extra, imported only here and only when
plotting) are

- `<suite>_scores.png`: each benchmark's score, a bar per checkpoint (its last step);
- `<suite>_steps_<checkpoint>.png`: score over training steps, when a checkpoint directory
  had several steps evaluated;
- `<suite>_scaling.png`: score against parameter count, when the checkpoints differ in size.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flan_jax.data import file_io
from flan_jax.evaluation.runner import safe_file_name
from flan_jax.evaluation.suites import SuiteResult

RESULTS_JSON = "results.json"
RESULTS_MARKDOWN = "results.md"


@dataclasses.dataclass(frozen=True)
class CheckpointResult:
    """The suites' results of one checkpoint step.

    Attributes:
      checkpoint: the checkpoint directory (absolute).
      label: its short name in tables and plots (unique within a report).
      step: the step evaluated.
      num_params: the model's parameter count.
      dtype: the activation dtype the evaluation ran in.
      suites: suite spec -> result.
    """

    checkpoint: str
    label: str
    step: int
    num_params: int
    dtype: str
    suites: dict[str, SuiteResult]

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "label": self.label,
            "step": self.step,
            "num_params": self.num_params,
            "dtype": self.dtype,
            "num_examples": sum(s.num_examples for s in self.suites.values()),
            "suites": {spec: result.to_dict() for spec, result in self.suites.items()},
        }


def build_results_json(
    results: Sequence[CheckpointResult], settings: Mapping[str, Any]
) -> dict[str, Any]:
    return {"settings": dict(settings), "results": [r.to_dict() for r in results]}


def _suite_specs(results: Sequence[CheckpointResult]) -> list[str]:
    return list(dict.fromkeys(spec for r in results for spec in r.suites))


def _columns(results: Sequence[CheckpointResult], spec: str) -> list[str]:
    return list(
        dict.fromkeys(
            name for r in results if spec in r.suites for name in r.suites[spec].benchmarks
        )
    )


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def to_markdown(results: Sequence[CheckpointResult]) -> str:
    """One table per suite: checkpoint, step, dtype, benchmarks' scores, average, examples."""
    sections = []
    for spec in _suite_specs(results):
        columns = _columns(results, spec)
        rows = [r for r in results if spec in r.suites]
        average_name = rows[0].suites[spec].average_name
        header = ["checkpoint", "step", "params", "dtype", *columns, average_name, "examples"]
        lines = [f"## {spec}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            suite = r.suites[spec]
            scores = [
                _cell(suite.benchmarks[c].score if c in suite.benchmarks else None) for c in columns
            ]
            cells = [r.label, str(r.step), f"{r.num_params:,}", r.dtype, *scores]
            cells += [_cell(suite.average), str(suite.num_examples)]
            lines.append("| " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


def _last_steps(results: Sequence[CheckpointResult], spec: str) -> list[CheckpointResult]:
    """Each checkpoint's last evaluated step that has `spec`, in the order given."""
    last: dict[str, CheckpointResult] = {}
    for r in results:
        if spec in r.suites and (r.label not in last or r.step > last[r.label].step):
            last[r.label] = r
    return list(last.values())


def _series(rows: Sequence[CheckpointResult], spec: str, column: str) -> list[float]:
    """`column`'s score in each row (NaN where a row lacks it)."""
    return [_row_scores(r, spec, [column])[0] for r in rows]


def _save(figure: Any, path: str) -> str:
    figure.tight_layout()
    file_io.write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=100), mode="wb")
    return path


def _plot_scores(plt: Any, results, spec: str, out_dir: str) -> str:
    rows, columns = _last_steps(results, spec), _columns(results, spec)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(columns) * max(len(rows), 1)), 4))
    width = 0.8 / max(len(rows), 1)
    for i, r in enumerate(rows):
        positions = [c + i * width for c in range(len(columns))]
        axes.bar(
            positions, _row_scores(r, spec, columns), width, label=f"{r.label} (step {r.step})"
        )
    axes.set_xticks([c + 0.4 - width / 2 for c in range(len(columns))], columns, rotation=30)
    axes.set_ylabel("score")
    axes.set_ylim(0, 100)
    axes.set_title(spec)
    axes.legend(fontsize="small")
    path = _save(figure, os.path.join(out_dir, f"{safe_file_name(spec)}_scores.png"))
    plt.close(figure)
    return path


def _row_scores(r: CheckpointResult, spec: str, columns: Sequence[str]) -> list[float]:
    benchmarks = r.suites[spec].benchmarks
    return [benchmarks[c].score if c in benchmarks else float("nan") for c in columns]


def _plot_lines(plt: Any, rows, x: Sequence[float], spec: str, title: str, xlabel: str):
    """One line per benchmark (and the average, dashed) over `x`."""
    figure, axes = plt.subplots(figsize=(6, 4))
    for column in _columns(rows, spec):
        axes.plot(x, _series(rows, spec, column), marker="o", label=column)
    averages = [r.suites[spec].average for r in rows]
    if all(a is not None for a in averages):
        axes.plot(
            x,
            averages,
            marker="s",
            linestyle="--",
            color="black",
            label=rows[0].suites[spec].average_name,
        )
    axes.set_xlabel(xlabel)
    axes.set_ylabel("score")
    axes.set_ylim(0, 100)
    axes.set_title(title)
    axes.legend(fontsize="small")
    return figure, axes


def write_plots(results: Sequence[CheckpointResult], out_dir: str) -> list[str] | None:
    """Writes the PNGs; returns their paths, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    paths = []
    for spec in _suite_specs(results):
        paths.append(_plot_scores(plt, results, spec, out_dir))
        for label in dict.fromkeys(r.label for r in results):
            rows = sorted(
                (r for r in results if r.label == label and spec in r.suites), key=lambda r: r.step
            )
            if len(rows) > 1:
                name = f"{safe_file_name(spec)}_steps_{safe_file_name(label)}.png"
                figure, _ = _plot_lines(
                    plt, rows, [r.step for r in rows], spec, f"{spec}: {label}", "training step"
                )
                paths.append(_save(figure, os.path.join(out_dir, name)))
                plt.close(figure)
        last = sorted(_last_steps(results, spec), key=lambda r: r.num_params)
        if len({r.num_params for r in last}) > 1:
            figure, axes = _plot_lines(
                plt, last, [r.num_params for r in last], spec, f"{spec}: scaling", "parameters"
            )
            axes.set_xscale("log")
            name = f"{safe_file_name(spec)}_scaling.png"
            paths.append(_save(figure, os.path.join(out_dir, name)))
            plt.close(figure)
    return paths


def write_report(
    out_dir: str,
    results: Sequence[CheckpointResult],
    settings: Mapping[str, Any],
    *,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Writes results.json, results.md and the plots into `out_dir`; returns the JSON."""
    data = build_results_json(results, settings)
    file_io.write_json_atomically(os.path.join(out_dir, RESULTS_JSON), data)
    file_io.write_text_atomically(os.path.join(out_dir, RESULTS_MARKDOWN), to_markdown(results))
    plots = write_plots(results, out_dir)
    if plots is None:
        log("plots skipped: matplotlib is not installed (pip install 'flan_jax[bench]')")
    else:
        log(f"wrote {len(plots)} plots to {out_dir}")
    return data
