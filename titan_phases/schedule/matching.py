"""Resolve a phase's ``params`` patterns to parameter names.

Names are compared in canonical form: the path segments that torch.compile
(``_orig_mod``), activation checkpointing (``_checkpoint_wrapped_module``) and FSDP1
(``_fsdp_wrapped_module``) insert are dropped, so a schedule matches the same parameters before
and after the model is wrapped. FSDP2 (``fully_shard``) does not rename parameters.

A pattern equal to a parameter name matches exactly that parameter; any other pattern is a
regex that must match a whole name (``re.fullmatch``). Patterns are never matched against
wrapper segments: write names as ``model.named_parameters()`` prints them on the bare model.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence

from .errors import Problems
from .schema import PhaseSchedule

WRAPPER_SEGMENTS = frozenset({"_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module"})

# Listing a few names is enough to locate an overlap; the rest is summarised.
_MAX_NAMES_SHOWN = 3


def canonical_param_name(name: str) -> str:
    """``layers.0._checkpoint_wrapped_module.attention.wq.weight`` ->
    ``layers.0.attention.wq.weight``; ``_orig_mod.output.weight`` -> ``output.weight``."""
    return ".".join(part for part in name.split(".") if part not in WRAPPER_SEGMENTS)


def _pattern_matches(pattern: str, names: Sequence[str], name_set: frozenset[str]) -> list[str]:
    if pattern in name_set:
        return [pattern]
    regex = re.compile(pattern)
    return [n for n in names if regex.fullmatch(n)]


def _shorten(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES_SHOWN])
    more = len(names) - _MAX_NAMES_SHOWN
    return f"{shown} (+{more} more)" if more > 0 else shown


def _no_match_hint(pattern: str, names: Sequence[str]) -> str:
    if pattern.startswith(("model.", "model\\.")):
        return "drop the Lightning 'model.' prefix (titan-phases import-fts --strip-prefix)"
    close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.6)
    if close:
        return f"closest parameter names: {', '.join(close)}"
    return f"parameter names look like {names[0]!r}; see `titan-phases show --params`"


def match_phase_params(
    schedule: PhaseSchedule, param_names: Iterable[str], problems: Problems
) -> list[list[str]]:
    """Per phase, the canonical names its patterns select, in model order.

    Reports into ``problems`` a pattern matching no parameter, and a parameter selected by
    more than one phase (against the later phase; the earlier phase keeps it).
    """
    names = list(dict.fromkeys(canonical_param_name(n) for n in param_names))
    name_set = frozenset(names)
    order = {n: i for i, n in enumerate(names)}
    owner: dict[str, int] = {}
    resolved: list[list[str]] = []
    for phase in schedule.phases:
        selected: set[str] = set()
        for i, pattern in enumerate(phase.params):
            matched = _pattern_matches(pattern, names, name_set)
            if not matched:
                problems.error(schedule.source, phase.index, f"params[{i}]",
                               f"{pattern!r} matches no parameter of the model",
                               _no_match_hint(pattern, names))
                continue
            taken: dict[int, list[str]] = {}
            for name in matched:
                if name in owner and owner[name] != phase.index:
                    taken.setdefault(owner[name], []).append(name)
                else:
                    selected.add(name)
            for other, overlap in taken.items():
                problems.error(
                    schedule.source, phase.index, f"params[{i}]",
                    f"{pattern!r} also selects {len(overlap)} parameter(s) already in phase "
                    f"{other}: {_shorten(overlap)}",
                    f"a parameter belongs to exactly one phase: narrow this pattern or remove "
                    f"the parameter(s) from phase {other}",
                )
        for name in selected:
            owner[name] = phase.index
        resolved.append(sorted(selected, key=order.__getitem__))
    return resolved


def resolve_phase_params(schedule: PhaseSchedule, param_names: Iterable[str]) -> list[list[str]]:
    """Per phase, the canonical parameter names it thaws. Raises ScheduleError when a pattern
    matches nothing or a parameter is selected by two phases."""
    problems = Problems()
    resolved = match_phase_params(schedule, param_names, problems)
    problems.raise_if_any()
    return resolved
