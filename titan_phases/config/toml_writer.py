"""A small TOML writer for what schedules contain (no TOML-writing dependency needed), and
values quoted for messages as the TOML files that hold them write them (:func:`as_written`).

Supports tables, strings, booleans, integers, floats, and arrays / inline tables of those.
Tables nested up to ``header_depth`` get ``[a.b]`` headers; deeper ones are written inline.
Not supported: dates and times, and None (TOML has no null), which raises ValueError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    "\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r",
}
# Arrays of strings longer than this are written one element per line.
_WRAP_AT = 60


def _key(key: Any) -> str:
    key = str(key)
    return key if _BARE_KEY.fullmatch(key) else _basic_string(key)


def _basic_string(value: str) -> str:
    out = []
    for ch in value:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _string(value: str) -> str:
    # Literal strings keep regexes readable: no doubled backslashes.
    literal_ok = "\\" in value and "'" not in value and all(
        ord(ch) >= 0x20 and ord(ch) != 0x7F for ch in value)
    return f"'{value}'" if literal_ok else _basic_string(value)


def value_to_toml(value: Any) -> str:
    """One value, inline (arrays on one line, tables as inline tables)."""
    if value is None:
        raise ValueError("TOML has no null value")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value)  # 'inf', '-inf', '1e-05' and '0.1' are all valid TOML
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        items = ", ".join(f"{_key(k)} = {value_to_toml(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(value_to_toml(v) for v in value) + "]"
    raise ValueError(f"cannot write {type(value).__name__} values to TOML: {value!r}")


def as_written(value: Any) -> str:
    """``value`` for a message, as a TOML file writes it: a string in single quotes, so a
    regex reads as it was written (``'layers\\.3\\..+'``, not Python's doubled backslashes);
    one holding a single quote or a control character as a TOML basic string; a list as a
    list of such values. Anything else as Python prints it."""
    if isinstance(value, str):
        if "'" in value or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
            return _basic_string(value)
        return f"'{value}'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(as_written(v) for v in value) + "]"
    return repr(value)


def _array(value: Sequence[Any]) -> str:
    inline = value_to_toml(value)
    if len(value) > 1 and all(isinstance(v, str) for v in value) and len(inline) > _WRAP_AT:
        return "[\n" + "".join(f"    {value_to_toml(v)},\n" for v in value) + "]"
    return inline


def _table(path: list[str], table: Mapping[str, Any], header_depth: int, comment: str,
           out: list[str]) -> None:
    subtables = {k: v for k, v in table.items()
                 if isinstance(v, Mapping) and len(path) < header_depth}
    if path:
        if out:
            out.append("")
        out.extend(f"# {line}".rstrip() for line in comment.splitlines())
        out.append("[" + ".".join(path) + "]")
    for key, value in table.items():
        if key in subtables:
            continue
        text = _array(value) if isinstance(value, (list, tuple)) else value_to_toml(value)
        out.append(f"{_key(key)} = {text}")
    for key, value in subtables.items():
        _table([*path, _key(key)], value, header_depth, "", out)


def dumps(data: Mapping[str, Any], *, header: str = "",
          comments: Mapping[str, str] | None = None, header_depth: int = 2) -> str:
    """``data`` as a TOML document; ``header`` and ``comments[top_level_key]`` become ``#``
    comment lines at the top and above the top-level tables."""
    out = [f"# {line}".rstrip() for line in header.splitlines()]
    comments = comments or {}
    top_scalars = {k: v for k, v in data.items() if not isinstance(v, Mapping)}
    _table([], top_scalars, header_depth, "", out)
    for key, value in data.items():
        if isinstance(value, Mapping):
            _table([_key(key)], value, header_depth, comments.get(key, ""), out)
    return "\n".join(out) + "\n"
