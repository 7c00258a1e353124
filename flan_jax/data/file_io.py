"""Atomic file writes and JSON-lines files, shared by the CLIs, loaders, stores and benchmarks.

A write goes to a temporary file beside its target (`.tmp-<random>.tmp`) and is renamed
over it, so a reader never sees half a file and a killed writer leaves only the old file
(or nothing) behind. The files and directories get the modes the user's umask gives (0644
and 0755 under umask 022), as `open` would, not `tempfile`'s private 0600 / 0700. A
directory that cannot be written is a `PathError` naming it. This module is the only place
that does it:

    write_json_atomically(path, data)             a JSON document
    write_text_atomically(path, text)             a text file
    write_atomically(path, write, mode="wb")      whatever `write(file)` puts in (npz, png)
    with atomic_output_path(path) as temp_path:   a writer that wants a path (ArrayRecord)
    with atomic_output_directory(path) as temp:   a whole directory, renamed into place

A JSONL file holds one JSON object per line; blank lines are skipped. A bad line is
reported with the file and its 1-based line number, through the exception type the caller
picks (so each layer keeps its own error class), and so is a line that is not UTF-8:

    {"inputs": "fine"}
    {"inputs": oops}      -> ValueError("in.jsonl:2: not valid JSON (Expecting value).")
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from flan_jax.errors import PathError

_TEMP_PREFIX, _TEMP_SUFFIX = ".tmp-", ".tmp"


@contextlib.contextmanager
def _writing_into(directory: str | os.PathLike) -> Iterator[None]:
    """Turns an OS error creating files in `directory` into a `PathError` naming it."""
    try:
        yield
    except OSError as error:
        if isinstance(error, PathError):
            raise
        raise PathError(
            f"cannot write into {os.fspath(directory)} ({error.strerror or error}); "
            "choose a directory you can write to, or fix its permissions or free space",
        ) from error


def _new_temp_path(directory: str, make: Callable[[str], Any]) -> str:
    """Calls `make(path)` on a new random `.tmp-*` path in `directory` until one is free.

    `make` creates the file or directory with os.open / os.mkdir, whose modes pass through
    the umask (tempfile.mkstemp / mkdtemp would force 0600 / 0700).
    """
    with _writing_into(directory):
        while True:
            path = os.path.join(directory, f"{_TEMP_PREFIX}{secrets.token_hex(8)}{_TEMP_SUFFIX}")
            try:
                make(path)
            except FileExistsError:
                continue
            return path


def _create_file(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def check_writable(path: str | os.PathLike) -> None:
    """Raises `PathError` unless a file can be written at `path` (its directory is created).

    For commands that write their output after long work: they check before it.
    """
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    with _writing_into(directory):
        os.makedirs(directory, exist_ok=True)
    os.remove(_new_temp_path(directory, _create_file))


@contextlib.contextmanager
def atomic_output_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path beside `path`; renames it over `path` when the block succeeds.

    For writers that open the file themselves (ArrayRecord, `savefig`). The temporary file
    exists (empty) when the block starts; the writer may overwrite it. If the block raises,
    the temporary file is removed and `path` is left untouched.

    Args:
      path: the target; its directory is created if missing.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    with _writing_into(directory):
        os.makedirs(directory, exist_ok=True)
    temp_path = _new_temp_path(directory, _create_file)
    try:
        yield temp_path
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def remove_temporary_files(directory: str | os.PathLike) -> list[str]:
    """Removes the temporary files a killed writer left in `directory`; returns their names.

    Only for a directory that one writer owns (an export being resumed): a temporary file
    of a writer that is still running would be removed too.
    """
    names = sorted(
        name
        for name in os.listdir(directory)
        if name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX)
    )
    for name in names:
        os.remove(os.path.join(directory, name))
    return names


def write_atomically(
    path: str | os.PathLike, write: Callable[[IO], Any], *, mode: str = "w"
) -> None:
    """Calls `write(file)` on a temporary file beside `path`, then renames it into place.

    Args:
      path: the target; its directory is created if missing.
      write: fills the open temporary file.
      mode: "w" (UTF-8 text) or "wb".

    On any error the temporary file is removed and the target is left untouched. The data
    is fsynced before the rename, so after a crash the target holds the old or the new
    contents, never an empty file. A URL path (`gs://...`) is written through TF's file
    systems as one upload.
    """
    if "://" in os.fspath(path):
        # An object store (gs://) makes an upload visible whole when it closes: no rename.
        import tensorflow as tf  # only remote paths need TF's file systems

        with tf.io.gfile.GFile(os.fspath(path), mode) as f:
            write(f)
        return
    with atomic_output_path(path) as temp_path:
        encoding = None if "b" in mode else "utf-8"
        with open(temp_path, mode, encoding=encoding) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    write_atomically(path, lambda f: f.write(text))


def write_json_atomically(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> None:
    """Writes `data` as JSON (UTF-8, not ASCII-escaped, a final newline) atomically.

    Args:
      path: the target.
      data: a JSON-serialisable value.
      indent: spaces per level; None writes one line (for large machine-read files).
    """
    write_text_atomically(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_output_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary directory beside `path`, renamed to `path` when the block succeeds.

    A reader sees either no directory (or the empty one that was there) or the complete
    one. If the block raises, the temporary directory and its contents are removed.

    Args:
      path: the target directory; it must not exist or must be empty.

    Raises:
      FileExistsError: `path` exists and is not an empty directory (checked on entry).
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(
            f"{path} already exists and is not an empty directory; "
            "remove it or choose another output directory."
        )
    with _writing_into(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = Path(_new_temp_path(os.fspath(path.parent), lambda p: os.mkdir(p, 0o777)))
    try:
        yield temp_dir
        if path.exists():
            path.rmdir()  # Empty (checked above): os.replace cannot replace a directory.
        os.replace(temp_dir, path)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise


def _utf8_error(
    path: str | os.PathLike, data: bytes, error: UnicodeDecodeError, first_line: int = 1
) -> str:
    """ "FILE:LINE: ..." for the first byte of `data` (from line `first_line`) not UTF-8."""
    line = first_line + data.count(b"\n", 0, error.start)
    column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
    return (
        f"{path}:{line}: not valid UTF-8 (byte 0x{data[error.start]:02x} at column {column}); "
        "save the file as UTF-8."
    )


def read_text(path: str | os.PathLike, *, error_type: type[Exception] = ValueError) -> str:
    """The UTF-8 text of a file; bytes that are not UTF-8 raise `error_type` naming the line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise error_type(_utf8_error(path, data, error)) from error


def read_text_lines(
    path: str | os.PathLike, *, error_type: type[Exception] = ValueError
) -> Iterator[tuple[int, str]]:
    """Yields (1-based line number, line) of a UTF-8 file, reading one line at a time.

    Raises:
      error_type: "<path>:<line>: not valid UTF-8 ..." for the first line that is not.
    """
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                yield line_number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise error_type(_utf8_error(path, raw, error, line_number)) from error


def read_jsonl_objects(
    path: str | os.PathLike, *, error_type: type[Exception] = ValueError
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (1-based line number, object) for every non-blank line of a JSONL file.

    Args:
      path: the file.
      error_type: the exception raised for a line that is not UTF-8 or not a JSON object.

    Raises:
      error_type: "<path>:<line>: ..." for the first malformed line.
    """
    for line_number, line in read_text_lines(path, error_type=error_type):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise error_type(f"{path}:{line_number}: not valid JSON ({error.msg}).") from error
        if not isinstance(record, dict):
            raise error_type(
                f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}."
            )
        yield line_number, record


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Writes `records` one JSON object per line (UTF-8, not ASCII-escaped), atomically."""

    def write_records(f: IO) -> None:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

    write_atomically(path, write_records)
