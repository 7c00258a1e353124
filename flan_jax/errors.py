"""What a user error is, and how one is found again after TensorFlow has wrapped it.

A user error is input the user can fix: a flag, a gin file or binding, an input file, a path
that cannot be written, missing data, a checkpoint directory that is not one. Its message
names the culprit (file and line, flag, macro, field or path), says what was expected and
how to fix it. The `flan-jax` command prints it as one message and exits with status 2;
every other exception is a bug and keeps its traceback (`flan_jax.cli.main`).

Every flan_jax exception for bad input derives from `UserError`; the existing ones keep
their older base too (`ExportError(UserError, ValueError)`), so `except ValueError` callers
still work:

    raise ConfigError("DecodeConfig.batch_size must be >= 1; got 0.")

Python code that tf.data runs (`from_generator` sources render examples in Python) cannot
raise through TensorFlow: TF re-raises the exception as an `OpError` holding its text only.
Generators wrapped by `carry_user_errors` remember the user errors they raise, and
`find_user_error` maps the `OpError` back to the original.
"""

from __future__ import annotations

import collections
import errno
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

_T = TypeVar("_T")


class UserError(Exception):
    """Input the user can fix; the message names the culprit and the fix."""


class ConfigError(UserError, ValueError):
    """A config value (a flag, a gin macro or binding, a config field) is not allowed."""


class PathError(UserError, OSError):
    """A path cannot be read or written (permissions, read-only file system, not a dir)."""


# OS errors about a path the user named: the path and the reason are all a traceback adds.
_PATH_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)
_PATH_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG)

# The user errors raised lately inside tf.data generators (any thread), newest last.
_CARRIED: collections.deque[UserError] = collections.deque(maxlen=32)
_CARRIED_LOCK = threading.Lock()
# gin appends "In call to configurable 'T5Config' (<class ...T5Config>)": keep the name.
_GIN_OBJECT_REPR = re.compile(r" \(<(?:function|class) [^>]*>\)")


def carry_user_errors(make_items: Callable[[], Iterable[_T]]) -> Iterator[_T]:
    """Yields the items of `make_items()`, remembering a `UserError` so it survives tf.data.

    `make_items` is called inside, so an error opening the data is carried too. Wrap the
    generator handed to `tf.data.Dataset.from_generator`:

        tf.data.Dataset.from_generator(lambda: carry_user_errors(lambda: render(split)), ...)
    """
    try:
        yield from make_items()
    except UserError as error:
        with _CARRIED_LOCK:
            _CARRIED.append(error)
        raise


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, then its causes and contexts (gin re-raises with `from None`)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_tensorflow_error(error: BaseException) -> bool:
    # By module name: this module must not import TensorFlow.
    return any(cls.__module__.startswith("tensorflow") for cls in type(error).__mro__)


def _carried_error_in(message: str) -> UserError | None:
    with _CARRIED_LOCK:
        carried = list(_CARRIED)
    for error in reversed(carried):
        if str(error) and str(error) in message:
            return error
    return None


def is_path_error(error: BaseException) -> bool:
    """An OS error about a path (missing, unwritable, read-only, full), not a bug."""
    return isinstance(error, _PATH_ERRORS) or (
        isinstance(error, OSError) and error.errno in _PATH_ERRNOS
    )


def find_user_error(error: BaseException) -> BaseException | None:
    """The user error `error` stands for, or None when it is a bug.

    Looks along the chain of causes for a `UserError`, or for a TensorFlow error wrapping
    one raised in a `carry_user_errors` generator; an OS error about a path counts when it
    is `error` itself (deeper in a chain it was turned into something else on purpose).
    """
    for link in _chain(error):
        if isinstance(link, UserError):
            return link
        if _is_tensorflow_error(link):
            carried = _carried_error_in(str(link))
            if carried is not None:
                return carried
    return error if is_path_error(error) else None


def describe(error: BaseException) -> str:
    """The message printed for a user error."""
    if isinstance(error, OSError) and not isinstance(error, UserError) and error.filename:
        return f"{error.filename}: {error.strerror or error}; check the path and its permissions."
    return _GIN_OBJECT_REPR.sub("", str(error))
