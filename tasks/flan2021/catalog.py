"""The catalog of the Flan 2021 datasets: one data file, loaded and validated here.

`datasets.yaml` lists every dataset of the Flan 2021 submixture with where its data comes
from (a versioned TFDS name and the split slices to read, as FLAN reads them), which
template family renders it, and how a TFDS example becomes that family's template fields.
An entry reads like:

    - name: rte
      cluster: nli
      family: nli
      metrics: [accuracy]
      tfds: super_glue/rte:1.0.2
      splits: {train: "train[:-200]", validation: "train[-200:]", test: validation}
      fields: {premise: premise, hypothesis: hypothesis}
      label: {feature: label, names: ["yes", "no"]}

`metrics` names the evaluation metrics of the dataset's tasks
(`flan_jax.evaluation.metrics.METRIC_FNS`): accuracy for classification and multiple
choice, squad for extractive and closed-book QA, rouge for summaries and data-to-text (and
the text-rewriting tasks), bleu for translation, as FLAN's tasks.py scores them.
`splits` maps our split names to TFDS splits, optionally sliced by example index
(`tfds_reading.parse_split` says which forms). `in_flan: false` marks a dataset FLAN's code
does not register: it is left out of the default list and registered only when named.
`flan_tfds` records FLAN's TFDS name where we cannot read the same one.

`fields` maps a template field to a feature path (`a.b[0]`; a list of paths gives a list);
`label` turns a class index into the answer text and makes all label names the answer
options; `answer_index` picks the answer out of the `options` field; `constants` are fixed
field values; `preprocessor` names a function of `preprocessors.py` for what a mapping
cannot say. `preprocessors.make_fields` applies all of them.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from flan_jax.errors import UserError
from flan_jax.evaluation import metrics
from flan_jax.tasks import tfds_reading

CATALOG_PATH = os.path.join(os.path.dirname(__file__), "datasets.yaml")
TEMPLATE_DIR = os.path.join(os.path.dirname(__file__), "templates")
_TFDS_NAME_RE = re.compile(r"^[a-z0-9_]+(/[A-Za-z0-9_.\-]+)?:\d+\.\d+\.\d+$")
_REQUIRED_KEYS = ("name", "cluster", "family", "metrics", "tfds", "splits")
_OPTIONAL_KEYS = (
    "in_flan",
    "flan_tfds",
    "fields",
    "label",
    "answer_index",
    "constants",
    "preprocessor",
    "manual_download",
    "note",
)


class CatalogError(UserError, ValueError):
    """A catalog entry that does not follow the schema above."""


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    """A class-label feature and the answer text of each class.

    Attributes:
      feature: the feature path holding the class index.
      names: class index -> answer text; indices absent here (e.g. -1 for unlabeled
        examples) mark examples to skip.
    """

    feature: str
    names: Mapping[int, str]


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """One Flan 2021 dataset.

    Attributes:
      name: our dataset name (the `DATASET` part of the task names).
      cluster: the Flan 2021 task cluster (nli, reading_comprehension, ...).
      family: the template family, i.e. `templates/<family>.yaml`.
      metrics: the names of the tasks' metric functions (`metrics.METRIC_FNS`).
      tfds: the versioned TFDS name we read, e.g. "super_glue/rte:1.0.2".
      splits: our split name -> TFDS split, possibly sliced ("train[:-200]"); always has
        "train".
      fields: template field -> feature path (str) or list of feature paths.
      label: the class label turned into `answer` and `options`, if any.
      answer_index: feature path of an index into `options` giving `answer`, if any.
      constants: fixed template field values.
      preprocessor: the name of a function in `preprocessors.PREPROCESSORS`, if any.
      manual_download: whether TFDS needs files placed by hand before building.
      in_flan: whether FLAN's code registers this dataset (False: registered only when
        named explicitly).
      flan_tfds: FLAN's TFDS name where it differs from `tfds` (`note` says why), else None.
      note: free text, e.g. where and why the entry departs from FLAN.
    """

    name: str
    cluster: str
    family: str
    metrics: tuple[str, ...]
    tfds: str
    splits: Mapping[str, str]
    fields: Mapping[str, str | tuple[str, ...]] = dataclasses.field(default_factory=dict)
    label: LabelSpec | None = None
    answer_index: str | None = None
    constants: Mapping[str, str] = dataclasses.field(default_factory=dict)
    preprocessor: str | None = None
    manual_download: bool = False
    in_flan: bool = True
    flan_tfds: str | None = None
    note: str = ""

    @property
    def template_path(self) -> str:
        return os.path.join(TEMPLATE_DIR, f"{self.family}.yaml")


def _parse_label(raw: Any, where: str) -> LabelSpec:
    if not isinstance(raw, dict) or set(raw) != {"feature", "names"}:
        raise CatalogError(f"{where}: 'label' needs exactly the keys 'feature' and 'names'.")
    names = raw["names"]
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise CatalogError(f"{where}: 'label.names' must be a non-empty list or mapping.")
    return LabelSpec(str(raw["feature"]), {int(k): str(v) for k, v in names.items()})


def _parse_metrics(raw: Any, where: str) -> tuple[str, ...]:
    names = tuple(map(str, raw)) if isinstance(raw, list) else ()
    try:
        metrics.get_metric_fns(names, where=f"{where}: field 'metrics'")
    except ValueError as e:
        raise CatalogError(f"{e} Write e.g. 'metrics: [accuracy]'.") from e
    return names


def _parse_fields(raw: Any, where: str) -> dict[str, str | tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: 'fields' must map template fields to feature paths.")
    return {str(k): tuple(map(str, v)) if isinstance(v, list) else str(v) for k, v in raw.items()}


def parse_entry(raw: Any, where: str) -> DatasetEntry:
    """Validates one catalog entry; errors name the file, the entry and the field."""
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: expected a mapping, got {type(raw).__name__}.")
    where = f"{where} ({raw.get('name', '?')})"
    missing = [k for k in _REQUIRED_KEYS if k not in raw]
    unknown = sorted(set(raw) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
    if missing or unknown:
        raise CatalogError(f"{where}: missing keys {missing}, unknown keys {unknown}.")
    if not _TFDS_NAME_RE.match(str(raw["tfds"])):
        raise CatalogError(
            f"{where}: 'tfds' must be a versioned name like 'super_glue/rte:1.0.2', "
            f"got {raw['tfds']!r}."
        )
    splits = raw["splits"]
    if not isinstance(splits, dict) or "train" not in splits:
        raise CatalogError(
            f"{where}: 'splits' must map split names to TFDS splits, "
            f"with a 'train' entry; got {splits!r}."
        )
    for key, split in splits.items():
        try:
            tfds_reading.parse_split(str(split), where=f"{where}: field 'splits.{key}'")
        except ValueError as e:
            raise CatalogError(str(e)) from e
    if not isinstance(raw.get("in_flan", True), bool):
        raise CatalogError(f"{where}: 'in_flan' must be true or false, got {raw['in_flan']!r}.")
    departs_from_flan = raw.get("in_flan") is False or "flan_tfds" in raw
    if departs_from_flan and not raw.get("note"):
        raise CatalogError(
            f"{where}: an entry with 'in_flan: false' or 'flan_tfds' needs a 'note' saying "
            "how and why it departs from FLAN."
        )
    return DatasetEntry(
        name=str(raw["name"]),
        cluster=str(raw["cluster"]),
        family=str(raw["family"]),
        metrics=_parse_metrics(raw["metrics"], where),
        tfds=str(raw["tfds"]),
        splits={str(k): str(v) for k, v in splits.items()},
        fields=_parse_fields(raw.get("fields", {}), where),
        label=_parse_label(raw["label"], where) if "label" in raw else None,
        answer_index=raw.get("answer_index"),
        constants={str(k): str(v) for k, v in (raw.get("constants") or {}).items()},
        preprocessor=raw.get("preprocessor"),
        manual_download=bool(raw.get("manual_download", False)),
        in_flan=raw.get("in_flan", True),
        flan_tfds=None if raw.get("flan_tfds") is None else str(raw["flan_tfds"]),
        note=str(raw.get("note", "")),
    )


def load_catalog_file(path: str) -> tuple[DatasetEntry, ...]:
    """Loads and validates a catalog file; dataset names must be unique."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise CatalogError(f"{path}: cannot read the catalog: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), list):
        raise CatalogError(f"{path}: expected a mapping with a 'datasets' list.")
    entries = tuple(
        parse_entry(raw, f"{path}: dataset {i}") for i, raw in enumerate(data["datasets"])
    )
    seen = set()
    for entry in entries:
        if entry.name in seen:
            raise CatalogError(f"{path}: dataset {entry.name!r} is listed twice.")
        seen.add(entry.name)
    return entries


@functools.cache
def load_catalog() -> tuple[DatasetEntry, ...]:
    """The shipped catalog (read on first call, never at import)."""
    return load_catalog_file(CATALOG_PATH)


def get_entry(name: str) -> DatasetEntry:
    """The catalog entry of dataset `name`; an unknown name lists the closest ones."""
    entries = {entry.name: entry for entry in load_catalog()}
    if name not in entries:
        close = difflib.get_close_matches(name, list(entries), n=5)
        raise KeyError(f"Unknown Flan 2021 dataset {name!r}; closest: {close}.")
    return entries[name]
