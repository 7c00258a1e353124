"""Atomic file writes and JSON-lines files, shared by the CLIs, loaders and stores.

A write goes to a temporary file beside its target (`.tmp-<random>.tmp`) and is renamed
over it, so a reader never sees half a file and a killed writer leaves only the old file
(or nothing) behind.

A JSONL file holds one JSON object per line; blank lines are skipped. A bad line is
reported with the file and its 1-based line number, through the exception type the caller
picks (so each layer keeps its own error class):

    {"inputs": "fine"}
    {"inputs": oops}      -> ValueError("in.jsonl:2: not valid JSON (Expecting value).")
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import IO, Any, Callable, Iterable, Iterator


def write_atomically(path: str | os.PathLike, write: Callable[[IO], Any], *,
                     mode: str = "w") -> None:
    """Calls `write(file)` on a temporary file beside `path`, then renames it into place.

    Args:
      path: the target; its directory is created if missing.
      write: fills the open temporary file.
      mode: "w" (UTF-8 text) or "wb".

    On any error the temporary file is removed and the target is left untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(handle, mode, encoding=encoding) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def read_jsonl_objects(path: str | os.PathLike, *,
                       error_type: type[Exception] = ValueError
                       ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (1-based line number, object) for every non-blank line of a JSONL file.

    Args:
      path: the file.
      error_type: the exception raised for a line that is not a JSON object.

    Raises:
      error_type: "<path>:<line>: ..." for the first malformed line.
    """
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise error_type(
                    f"{path}:{line_number}: not valid JSON ({error.msg}).") from error
            if not isinstance(record, dict):
                raise error_type(f"{path}:{line_number}: expected a JSON object, "
                                 f"got {type(record).__name__}.")
            yield line_number, record


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Writes `records` one JSON object per line (UTF-8, not ASCII-escaped), atomically."""

    def write_records(f: IO) -> None:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    write_atomically(path, write_records)
