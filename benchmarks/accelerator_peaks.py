"""Published bfloat16 peaks per accelerator (``accelerator_peaks.tsv``), for MFU.

    >>> published_peak("NVIDIA H100 80GB HBM3")["flops_per_s"]
    989000000000000.0

The benchmarks' MFU divides the model's matmul FLOPs per second (all devices) by
``flops_per_s * jax.device_count()``. A device kind the table lacks (a CPU) has no published
peak: the benchmarks then fall back to a measured matmul peak and say so.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

PEAKS_TSV = Path(__file__).with_name("accelerator_peaks.tsv")


def load_peaks() -> list[dict[str, str]]:
    """The table's rows, in file order (``#`` lines are its notes)."""
    with open(PEAKS_TSV, newline="") as table:
        lines = [line for line in table if not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


def published_peak(device_kind: str) -> dict | None:
    """``{"flops_per_s", "device", "source"}`` of the first row matching ``device_kind``."""
    for row in load_peaks():
        if re.search(row["pattern"], device_kind, re.IGNORECASE):
            return {
                "flops_per_s": float(row["tflops_per_device"]) * 1e12,
                "device": row["device"],
                "source": row["source"],
            }
    return None
