"""Runs a suite unit by unit: one predict call per unit, progress lines, stored results.

Each finished unit's scores (and predictions) are written at once (atomically, `file_io`)
into a `UnitStore` directory, one JSON file per unit, together with the settings that produced
them (dtype, decoding length, example cap ...). A rerun with the same settings reads those
files instead of predicting again, so an interrupted `flan-jax eval` resumes where it
stopped; a unit stored under other settings is run again.

    store = UnitStore("out/units/ckpt-1a2b3c4d/step_2000/math_gsm8k", settings)
    result = run_suite(suite, predictor.predict, store=store, log=print)
    # math [1/1] gsm8k/gsm8k: 1319 examples in 512.0s (2.6 examples/s)
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flan_jax.data import file_io
from flan_jax.evaluation.suites import Scores, Suite, SuiteResult, Unit

Predict = Callable[[list[str]], Sequence[Any]]
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.=-]+")


def safe_file_name(text: str) -> str:
    """`"tasks:a,b"` -> `"tasks_a_b"`: a name every file system accepts."""
    return _UNSAFE_RE.sub("_", text).strip("_") or "_"


class UnitStore:
    """The stored unit results of one (checkpoint, step, suite), keyed by unit.

    Args:
      directory: where the unit files go (created on the first write).
      settings: what the results depend on besides the unit (JSON-serialisable); a stored
        result with other settings is ignored.
    """

    def __init__(self, directory: str | os.PathLike, settings: Mapping[str, Any]) -> None:
        self.directory = os.fspath(directory)
        self.settings = json.loads(json.dumps(dict(settings)))  # as it reads back

    def _path(self, unit: Unit) -> str:
        return os.path.join(self.directory, f"{safe_file_name(unit.key)}.json")

    def get(self, unit: Unit) -> Scores | None:
        """The stored scores of `unit` under these settings, or None."""
        path = self._path(unit)
        if not os.path.isfile(path):
            return None
        try:
            record = json.loads(file_io.read_text(path))
        except ValueError:  # not JSON (a foreign file): run the unit again
            return None
        if record.get("unit") != unit.key or record.get("settings") != self.settings:
            return None
        return {k: float(v) for k, v in record["scores"].items()}

    def put(self, unit: Unit, scores: Scores, predictions: Sequence[Any] = ()) -> None:
        """Stores a finished unit: its scores, and its predictions for inspection."""
        record = {
            "unit": unit.key,
            "settings": self.settings,
            "scores": scores,
            "predictions": list(predictions),
        }
        file_io.write_json_atomically(self._path(unit), record)


def run_suite(
    suite: Suite,
    predict: Predict,
    *,
    store: UnitStore | None = None,
    log: Callable[[str], None] | None = None,
) -> SuiteResult:
    """Scores every unit of `suite` (stored ones are read back) and combines them.

    Args:
      suite: what to score.
      predict: prompts -> one completion text per prompt (e.g. `Predictor.predict`).
      store: where finished units are kept; None keeps nothing.
      log: receives one progress line per unit; None is silent.
    """
    units = suite.units()
    results: dict[Unit, Scores] = {}
    for position, unit in enumerate(units, 1):
        prefix = f"{suite.spec} [{position}/{len(units)}] {unit.key}"
        stored = store.get(unit) if store is not None else None
        if stored is not None:
            results[unit] = stored
            if log:
                log(f"{prefix}: stored ({int(stored.get('num_examples', 0))} examples)")
            continue
        start = time.perf_counter()
        data = suite.load(unit)
        predictions = list(predict(list(data.prompts))) if data.prompts else []
        results[unit] = suite.score(unit, data, predictions)
        if store is not None:
            store.put(unit, results[unit], predictions)
        if log:
            seconds = time.perf_counter() - start
            rate = len(data.prompts) / seconds if seconds > 0 else 0.0
            log(f"{prefix}: {len(data.prompts)} examples in {seconds:.1f}s ({rate:.1f} examples/s)")
    return suite.combine(results)
