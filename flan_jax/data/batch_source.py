"""The batch-source interface of the trainer.

A batch source serves this process's rows of every global training batch as numpy arrays
named like t5x's feature converters (``encoder_input_tokens``, ``decoder_target_tokens``,
...), and can say and restore where it is, so that a resumed run reads exactly the batches
an uninterrupted run would have read. Implementations:

- :class:`flan_jax.data.pipeline.TrainIterator`: a seqio task or mixture, packed or not;
- :class:`flan_jax.distill.targets.DistillationBatches`: student examples with
  ``[batch, length, k]`` teacher rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

PACKING_EFFICIENCY = "train/packing_efficiency"


@runtime_checkable
class BatchSource(Protocol):
    """What :func:`flan_jax.training.trainer.fit` reads batches from."""

    def __next__(self) -> dict[str, np.ndarray]:
        """This process's rows of the next global batch."""
        ...

    def get_state(self) -> dict[str, Any]:
        """The position after the last served batch (JSON-serialisable, saved in checkpoints)."""
        ...

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continues after the batch at which ``state`` was taken."""
        ...

    def log_scalars(self) -> dict[str, float]:
        """Scalars logged with the training metrics (e.g. ``PACKING_EFFICIENCY``)."""
        ...
