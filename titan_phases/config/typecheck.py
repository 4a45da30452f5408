"""Whether a value read from TOML can be of an annotated type, and how to name that type.

TOML values reach config dataclasses and ``init_args`` without conversion (torchtitan's
ConfigManager only converts command-line flags), so a quoted number or a list where a number
belongs would otherwise surface as a TypeError deep inside a training step.

**Limitations** Only what TOML can express is judged: bool, int, float, str, lists, tables,
``Literal``, unions and ``None``. Any other class is an ``isinstance`` check (a TOML value is
never a tensor), and typing constructs not listed here (type variables, protocols) accept
anything.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from typing import Any, Literal, Union

_SEQUENCES = (list, tuple, collections.abc.Sequence, collections.abc.Iterable,
              collections.abc.Collection)
_MAPPINGS = (dict, collections.abc.Mapping)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` can be of type ``hint``; an int fits a float, a bool fits neither."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
    if _is_union(hint):
        return any(fits(value, a) for a in typing.get_args(hint))
    if hint is None or hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint in _SEQUENCES or origin in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args))
        return not args or all(fits(v, args[0]) for v in value)
    if hint in _MAPPINGS or origin in _MAPPINGS:
        args = typing.get_args(hint)
        return isinstance(value, collections.abc.Mapping) and (
            not args or all(fits(v, args[1]) for v in value.values()))
    if origin is collections.abc.Callable or hint is collections.abc.Callable:
        return callable(value)
    if isinstance(hint, type):
        try:
            return isinstance(value, hint)
        except TypeError:  # a protocol that cannot be checked at run time
            return True
    return True


def _toml_can_write(hint: Any) -> bool:
    return (hint in (bool, int, float, str) or typing.get_origin(hint) is Literal
            or hint in _SEQUENCES or typing.get_origin(hint) in _SEQUENCES
            or hint in _MAPPINGS or typing.get_origin(hint) in _MAPPINGS)


def describe(hint: Any) -> str:
    """``hint`` in a user's words: "an integer", "'min' or 'max'", "a list of numbers"."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if _is_union(hint):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        # A tensor or a callable is no alternative for someone writing TOML, nor an integer
        # next to a number.
        members = [a for a in members if _toml_can_write(a)] or members
        if float in members:
            members = [a for a in members if a is not int]
        return " or ".join(dict.fromkeys(describe(a) for a in members))
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in simple:
        return simple[hint]
    if hint in _SEQUENCES or origin in _SEQUENCES:
        args = typing.get_args(hint)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values"
        plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
        return f"a list of {plural[args[0]]}" if args and args[0] in plural else "a list"
    if hint in _MAPPINGS or origin in _MAPPINGS:
        return "a table"
    if origin is collections.abc.Callable or hint is collections.abc.Callable:
        return "a function"
    return f"a {getattr(hint, '__name__', hint)}"
