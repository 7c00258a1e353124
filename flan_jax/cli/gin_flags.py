"""t5x-style gin flags: `--gin_file=PATH` (repeatable) and `--gin.NAME=VALUE`.

    flan-jax train --gin_file=runs/finetune.gin --gin_file=models/t5_1_1_small.gin \\
        --gin.MODEL_DIR=/tmp/run --gin.TRAIN_STEPS=1000

Gin files are looked up as given, then under the installed `gin_configs/` directory, so
shipped configs are named relative to it. A value that is not a gin literal or reference
(`/tmp/run`, `my_mixture`) is quoted for you; t5x would reject it.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from collections.abc import Callable, Collection, Sequence
from importlib import resources
from typing import Any, cast

import gin

from flan_jax.cli import gin_checks
from flan_jax.errors import ConfigError

_GIN_FILE = "--gin_file"
_GIN_PREFIX = "--gin."
_REFERENCE_STARTS = ("@", "%", "[", "(", "{", '"', "'")


def shipped_gin_dir() -> str:
    """The directory of the gin configs installed with flan_jax."""
    # A regular (non-zip) install: files() is a pathlib.Path, typed as the Traversable protocol.
    return os.fspath(cast("os.PathLike[str]", resources.files("flan_jax.gin_configs")))


@dataclasses.dataclass
class GinArgs:
    files: list[str] = dataclasses.field(default_factory=list)
    bindings: list[str] = dataclasses.field(default_factory=list)
    rest: list[str] = dataclasses.field(default_factory=list)


def _as_gin_value(value: str) -> str:
    stripped = value.strip()
    if stripped.startswith(_REFERENCE_STARTS) or stripped in ("True", "False", "None"):
        return stripped
    try:
        ast.literal_eval(stripped)
        return stripped
    except (ValueError, SyntaxError):
        return repr(stripped)


def split_gin_args(argv: list[str]) -> GinArgs:
    """Separates gin flags from the command's other arguments."""
    parsed = GinArgs()
    args = iter(argv)
    for arg in args:
        if arg == _GIN_FILE:
            path = next(args, None)
            if path is None:
                raise ConfigError("--gin_file needs a path.")
            parsed.files.append(path)
        elif arg.startswith(_GIN_FILE + "="):
            parsed.files.append(arg[len(_GIN_FILE) + 1 :])
        elif arg.startswith(_GIN_PREFIX):
            name, sep, value = arg[len(_GIN_PREFIX) :].partition("=")
            if not sep or not name:
                raise ConfigError(f"expected --gin.NAME=VALUE, got {arg!r}.")
            parsed.bindings.append(f"{name} = {_as_gin_value(value)}")
        else:
            parsed.rest.append(arg)
    return parsed


def resolve_gin_file(path: str) -> str:
    """Finds `path` as given or under the shipped gin_configs; errors list both places."""
    candidates = [path, os.path.join(shipped_gin_dir(), path)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(
        f"gin file {path!r} not found; looked at {candidates}. Shipped configs: "
        f"{', '.join(sorted(list_shipped_gin_files()))}"
    )


def list_shipped_gin_files() -> list[str]:
    root = shipped_gin_dir()
    return [
        os.path.relpath(os.path.join(directory, name), root)
        for directory, _, names in os.walk(root)
        for name in names
        if name.endswith(".gin")
    ]


def parse_gin(files: list[str], bindings: list[str], *, finalize: bool = True) -> list[str]:
    """Parses gin files and bindings into a fresh configuration; returns the resolved files.

    Each command invocation starts from a clean gin state (so two commands run in one
    process, as in tests, do not see each other's bindings); include statements also search
    the shipped dir.

    Args:
      files: gin files, as given or relative to the shipped gin_configs.
      bindings: `NAME = VALUE` bindings (from `split_gin_args`).
      finalize: lock the config (gin then also rejects references to unset macros).

    Raises:
      ConfigError: a file is missing or does not parse, or names an unknown configurable or
        parameter (gin's message gives the file and line).
    """
    resolved = [resolve_gin_file(f) for f in files]
    gin.clear_config()
    gin.add_config_file_search_path(shipped_gin_dir())
    try:
        gin.parse_config_files_and_bindings(resolved, bindings, finalize_config=finalize)
    except (ValueError, SyntaxError, KeyError, ImportError) as error:
        # Raised for the config text only; the message names the file, line and name.
        hint = gin_checks.suggest_parameter(str(error))
        raise ConfigError(f"bad gin config: {error}{hint}") from error
    return resolved


def parse_and_check_gin(
    files: list[str], bindings: list[str], *, used_macros: Collection[str] = ()
) -> None:
    """`parse_gin`, then the checks of `gin_checks` a command's config must pass.

    Args:
      files: gin files, as given or relative to the shipped gin_configs.
      bindings: `NAME = VALUE` bindings (from `split_gin_args`).
      used_macros: macros the command reads itself rather than through a binding.

    Raises:
      ConfigError: as `parse_gin`, or a macro nothing uses, a used macro left unset, a
        value of the wrong type.
    """
    resolved = parse_gin(files, bindings, finalize=False)
    sources = gin_checks.collect_sources(resolved, bindings)
    gin_checks.check_gin_config(sources=sources, used_macros=used_macros)
    gin.finalize()


def run_gin_command(
    argv: list[str],
    function: Callable[..., Any],
    *,
    default_files: Sequence[str] = (),
) -> int:
    """Parses and checks the gin flags, then calls the gin-bound `function`.

    Args:
      argv: the command's arguments: only `--gin_file` and `--gin.NAME=VALUE` flags.
      function: a gin configurable, called with the parsed bindings.
      default_files: the gin files used when `argv` names none.

    Raises:
      ConfigError: bad flags or gin config, before `function` runs.
    """
    args = split_gin_args(argv)
    files = args.files or list(default_files)
    if args.rest or not files:
        raise ConfigError(
            f"expected --gin_file=PATH and --gin.NAME=VALUE flags; got {args.rest or 'no gin file'}"
        )
    parse_and_check_gin(files, args.bindings)
    gin.get_configurable(function)()
    return 0
