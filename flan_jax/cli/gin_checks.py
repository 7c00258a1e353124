"""Checks a parsed gin configuration before anything runs, so typos fail at once.

gin itself rejects an unknown configurable or parameter while parsing, but a macro is just
a name: `--gin.TRAIN_STPES=10` defines a new macro that nothing reads, and
`--gin.TRAIN_STEPS=abc` reaches the trainer as the string 'abc'. After parsing, this module
checks that

  * every macro set is read by some binding of the files or flags (or by the command:
    `used_macros`); an unread one is reported with where it was set and the closest
    known macros;
  * every macro used is set somewhere;
  * every literal value bound to a parameter, directly or through macros, matches the
    parameter's type annotation (int, float, str, bool, None, unions, Literal, sequences
    and mappings of those; other annotations are not checked);
  * every bound `*Config` dataclass builds, so its `__post_init__` validation runs.

Errors are `ConfigError`s naming the macro or binding, where it was set (FILE:LINE or the
flag), what was expected and what was received.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import re
import types
import typing
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import gin
from gin import config_parser

from flan_jax.errors import ConfigError, UserError

_MACRO = "gin.macro"
_SIMPLE_TYPES: Mapping[Any, tuple[type, ...]] = {
    str: (str,),
    bool: (bool,),
    int: (int,),
    float: (int, float),
    type(None): (type(None),),
}


class _ScanDelegate(config_parser.ParserDelegate):
    """Records the macros a text reads, without resolving any reference."""

    def __init__(self, referenced: set[str]):
        self._referenced = referenced

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return None

    def macro(self, macro_name):
        self._referenced.add(macro_name)
        return None


@dataclasses.dataclass
class GinSources:
    """Where each macro and binding was set ("FILE:LINE" or "--gin.NAME"), and what is read.

    Attributes:
      macros: macro name -> where it was last set.
      bindings: (selector as written, parameter) -> where it was last set.
      referenced: macros some statement reads (`%NAME`), even one a later file overrides.
    """

    macros: dict[str, str] = dataclasses.field(default_factory=dict)
    bindings: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    referenced: set[str] = dataclasses.field(default_factory=set)

    def add(self, text: str, where: Any) -> None:
        """Records the statements of gin `text`; `where(location)` names one."""
        for statement in config_parser.ConfigParser(text, _ScanDelegate(self.referenced)):
            if isinstance(statement, config_parser.BindingStatement):
                if statement.arg_name:
                    key = (statement.selector, statement.arg_name)
                    self.bindings[key] = where(statement.location)
                else:
                    self.macros[statement.selector] = where(statement.location)

    def binding(self, complete_selector: str, arg_name: str) -> str:
        for (selector, name), where in self.bindings.items():
            if name == arg_name and complete_selector.endswith(selector):
                return where
        return "the gin files"


def collect_sources(files: Sequence[str], flag_bindings: Sequence[str]) -> GinSources:
    """Where the macros and bindings of the resolved `files` and the flags were set."""
    sources = GinSources()
    for path in files:
        with open(path, encoding="utf-8") as f:
            sources.add(f.read(), lambda location, path=path: f"{path}:{location.line_num}")
    for binding in flag_bindings:
        flag = "--gin." + binding.split("=", 1)[0].strip()
        sources.add(binding, lambda location, flag=flag: flag)
    return sources


def _macro_name(value: Any) -> str | None:
    if isinstance(value, gin.config.ConfigurableReference) and value.selector == _MACRO:
        return "/".join(value.scopes)
    return None


def _used_macros(config: Mapping) -> dict[str, str]:
    """Macro name -> the first binding that reads it (`selector.param`)."""
    used: dict[str, str] = {}
    for (scope, selector), params in config.items():
        for param, value in params.items():
            reader = f"%{scope}" if selector == _MACRO else f"{selector}.{param}"
            for reference in gin.config.iterate_references(value):
                name = _macro_name(reference)
                if name is not None:
                    used.setdefault(name, reader)
    return used


def _check_macros(config: Mapping, sources: GinSources, used_macros: Collection[str]) -> None:
    defined = {scope for scope, selector in config if selector == _MACRO}
    used = _used_macros(config)
    errors = []
    # A macro read by a binding that a later file overrode is not a typo: it is known.
    known = sorted(set(used) | set(used_macros) | sources.referenced)
    for name in sorted(defined - set(known)):
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = (
            f"did you mean {', '.join(close)}?" if close else f"known macros: {', '.join(known)}."
        )
        errors.append(
            f"unknown gin macro {name} (set by {sources.macros.get(name, 'the gin files')}): "
            f"no binding reads it; {hint}"
        )
    for name in sorted(set(used) - defined):
        errors.append(
            f"gin macro {name} is used by {used[name]} but never set: set --gin.{name}=VALUE "
            "or add the gin file that defines it."
        )
    if errors:
        raise ConfigError("\n".join(errors))


def _annotations(fn: Any) -> dict[str, Any]:
    """The evaluated parameter annotations of a configurable; those that fail are left out."""
    # A dataclass's fields are its parameters; another class's are those of __init__.
    target = fn.__init__ if inspect.isclass(fn) and not dataclasses.is_dataclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:  # A TYPE_CHECKING-only name: keep the annotations that evaluate.
        namespace = vars(inspect.getmodule(fn)) if inspect.getmodule(fn) else {}
        hints = {}
        for name, annotation in inspect.get_annotations(target).items():
            try:
                hints[name] = (
                    eval(annotation, namespace) if isinstance(annotation, str) else annotation
                )
            except Exception:
                continue
        return hints


def _items_match(values: Iterator[Any], annotation: Any) -> bool:
    return all(matches_annotation(value, annotation) for value in values)


def matches_annotation(value: Any, annotation: Any) -> bool:
    """Whether a gin literal fits a type annotation; unknown annotations always fit.

    >>> matches_annotation("abc", int), matches_annotation(3, float | None)
    (False, True)
    """
    if isinstance(value, gin.config.ConfigurableReference) or annotation is Any:
        return True
    if annotation is None:
        annotation = type(None)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in _SIMPLE_TYPES:
        bool_ok = annotation is bool or not isinstance(value, bool)
        return bool_ok and isinstance(value, _SIMPLE_TYPES[annotation])
    if origin in (typing.Union, types.UnionType):
        return any(matches_annotation(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(map(matches_annotation, value, args))
        return not args or _items_match(iter(value), args[0])
    if origin in (dict, collections.abc.Mapping):
        if not isinstance(value, dict):
            return False
        return not args or (
            _items_match(iter(value), args[0]) and _items_match(iter(value.values()), args[1])
        )
    return True


def _literal_value(value: Any, config: Mapping) -> tuple[Any, list[str]]:
    """Follows macro references to the value; returns it and the macros passed through."""
    via: list[str] = []
    while (name := _macro_name(value)) is not None and (name, _MACRO) in config:
        via.append(name)
        value = config[(name, _MACRO)]["value"]
        if name in via[:-1]:  # A cycle; gin reports it when called.
            break
    return value, via


def _check_types(config: Mapping, sources: GinSources) -> None:
    errors = []
    for (_, selector), params in config.items():
        match = None if selector == _MACRO else gin.config._REGISTRY.get_match(selector)
        if match is None:
            continue
        hints = _annotations(match.wrapped)
        for param, bound in params.items():
            if param not in hints:
                continue
            value, via = _literal_value(bound, config)
            if matches_annotation(value, hints[param]):
                continue
            where = (
                f"macro {via[-1]} (set by {sources.macros.get(via[-1], 'the gin files')})"
                if via
                else sources.binding(selector, param)
            )
            expected = inspect.formatannotation(hints[param])
            fix = f"; set it with --gin.{via[-1]}=VALUE" if via and value is None else ""
            errors.append(
                f"{where}: {selector}.{param} expects {expected}, got {value!r} "
                f"({type(value).__name__}){fix}."
            )
    if errors:
        raise ConfigError("\n".join(errors))


_UNKNOWN_PARAMETER = re.compile(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'")


def suggest_parameter(gin_message: str) -> str:
    """For gin's "doesn't have a parameter named 'x'" error, the closest parameters."""
    found = _UNKNOWN_PARAMETER.search(gin_message)
    match = found and gin.config._REGISTRY.get_match(found.group(1))
    if not found or match is None:
        return ""
    try:
        names = list(inspect.signature(match.wrapped).parameters)
    except (TypeError, ValueError):  # No signature to read: gin's message stands alone.
        return ""
    close = difflib.get_close_matches(found.group(2), names, n=3, cutoff=0.6)
    return (
        f"\nDid you mean {', '.join(close)}?" if close else f"\nIts parameters: {', '.join(names)}."
    )


def _check_config_objects(config: Mapping) -> None:
    """Builds every bound `*Config` dataclass once, so its `__post_init__` checks run now.

    The house style validates each knob in its config dataclass; built here, a bad field
    fails before the command starts (the objects are small, frozen and side-effect free).
    """
    for scope, selector in config:
        match = None if selector == _MACRO else gin.config._REGISTRY.get_match(selector)
        configurable = match.wrapped if match is not None else None
        if match is None or not (
            inspect.isclass(configurable)
            and dataclasses.is_dataclass(configurable)
            and configurable.__name__.endswith("Config")
        ):
            continue
        try:
            with gin.config_scope(scope or None):
                match.wrapper()
        except UserError:
            raise
        except Exception:  # E.g. a field only the caller passes: the real call reports it.
            continue


def check_gin_config(*, sources: GinSources, used_macros: Collection[str] = ()) -> None:
    """Checks the parsed gin config (see the module docstring).

    Args:
      sources: where the macros and bindings were set, for the messages.
      used_macros: macros the command reads itself (`gin.query_parameter`).

    Raises:
      ConfigError: listing every problem found.
    """
    config = gin.config._CONFIG  # gin has no public view of the parsed bindings.
    _check_macros(config, sources, used_macros)
    _check_types(config, sources)
    _check_config_objects(config)
