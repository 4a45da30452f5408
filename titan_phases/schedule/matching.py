"""Resolve a phase's ``params`` and ``freeze`` patterns to parameter names.

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
import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

from titan_phases.config.toml_writer import as_written

from .errors import Problems
from .schema import Phase, PhaseSchedule

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


def _tied_hint(pattern: str, tied: Mapping[str, str]) -> str | None:
    """What to write instead of a pattern that selects only other names of tied parameters."""
    aliases = [a for a in tied if pattern == a or _fullmatch(pattern, a)]
    if not aliases:
        return None
    targets = list(dict.fromkeys(tied[a] for a in aliases))
    pairs = ", ".join(f"{a} is tied to {tied[a]}" for a in aliases)
    return (f"{pairs} (one parameter under both names; the model lists it once, by the name "
            f"registered first): name {', '.join(map(as_written, targets))}")


def _fullmatch(pattern: str, name: str) -> bool:
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _no_match_hint(pattern: str, names: Sequence[str],
                   tied: Mapping[str, str] | None = None) -> str:
    tied_hint = _tied_hint(pattern, tied or {})
    if tied_hint is not None:
        return tied_hint
    if pattern.startswith(("model.", "model\\.")):
        return "drop the Lightning 'model.' prefix (titan-phases import-fts --strip-prefix)"
    close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.6)
    if close:
        return f"closest parameter names: {', '.join(close)}"
    return f"parameter names look like {as_written(names[0])}; see `titan-phases show --params`"


class PhaseMatch(NamedTuple):
    """What each phase does to the model's parameters, by canonical name in model order."""

    thawed: list[list[str]]
    """Per phase, the parameters it thaws (``params``)."""
    frozen: list[list[str]]
    """Per phase, the parameters it stops training (``freeze``)."""


def _matcher(names: Sequence[str]) -> Callable[[str], list[str]]:
    """Pattern -> the names it matches; a long schedule repeats few patterns (a cycle's blocks),
    so each is matched against the model once."""
    name_set = frozenset(names)

    @functools.cache
    def matches(pattern: str) -> list[str]:
        return _pattern_matches(pattern, names, name_set)

    return matches


def match_phase_params(
    schedule: PhaseSchedule, param_names: Iterable[str], problems: Problems,
    tied: Mapping[str, str] | None = None,
) -> PhaseMatch:
    """Per phase, the canonical names it thaws and freezes, in model order.

    Phases apply in order, each its ``freeze`` before its ``params``. Reports into ``problems``
    a pattern matching no parameter; a ``params`` pattern selecting a parameter that is
    trainable at that point (thawed before and not frozen since: the earlier phase keeps it);
    a ``freeze`` pattern selecting one that is not trainable then; a parameter the same phase
    freezes and thaws; and a phase in which no parameter trains. ``tied`` maps the other names
    of tied parameters (``output.weight``) to the names the model lists them by
    (``tok_embeddings.weight``): a pattern naming only those is told which name to use.
    """
    names = list(dict.fromkeys(canonical_param_name(n) for n in param_names))
    order = {n: i for i, n in enumerate(names)}
    matches = _matcher(names)
    owner: dict[str, int] = {}  # a trainable parameter -> the phase that thawed it
    thawed: list[list[str]] = []
    frozen: list[list[str]] = []
    for phase in schedule.phases:
        leaving = _match_freeze(schedule.source, phase, matches, owner, names, problems, tied)
        for name in leaving:
            del owner[name]
        selected: set[str] = set()
        for i, pattern in enumerate(phase.params):
            matched = matches(pattern)
            if not matched:
                problems.error(schedule.source, phase.index, f"params[{i}]",
                               f"{as_written(pattern)} matches no parameter of the model",
                               _no_match_hint(pattern, names, tied))
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
                    f"{as_written(pattern)} also selects {len(overlap)} parameter(s) already in "
                    f"phase {other}, still trainable: {_shorten(overlap)}",
                    f"a parameter trains in one phase's group at a time: narrow this pattern, "
                    f"remove the parameter(s) from phase {other}, or freeze them in between",
                )
        both = sorted(selected & set(leaving), key=order.__getitem__)
        if both:
            problems.error(schedule.source, phase.index, "freeze",
                           f"freezes and thaws the same parameter(s): {_shorten(both)}",
                           "remove them from freeze or from params")
        for name in selected:
            owner[name] = phase.index
        if not owner and not problems.has(phase.index, "params"):
            problems.error(schedule.source, phase.index, "freeze",
                           "no parameter trains in this phase",
                           "freeze fewer parameters, or thaw some in this phase")
        thawed.append(sorted(selected, key=order.__getitem__))
        frozen.append(sorted(leaving, key=order.__getitem__))
    return PhaseMatch(thawed, frozen)


def _match_freeze(
    source: str, phase: Phase, matches: Callable[[str], list[str]], owner: dict[str, int],
    names: Sequence[str], problems: Problems, tied: Mapping[str, str] | None,
) -> list[str]:
    """The trainable parameters ``phase.freeze`` selects; reports patterns that match none."""
    leaving: set[str] = set()
    for i, pattern in enumerate(phase.freeze):
        matched = matches(pattern)
        if not matched:
            problems.error(source, phase.index, f"freeze[{i}]",
                           f"{as_written(pattern)} matches no parameter of the model",
                           _no_match_hint(pattern, names, tied))
            continue
        idle = [name for name in matched if name not in owner]
        if idle:
            problems.error(source, phase.index, f"freeze[{i}]",
                           f"{as_written(pattern)} selects {len(idle)} parameter(s) that do not "
                           f"train before phase {phase.index}: {_shorten(idle)}",
                           "freeze only parameters an earlier phase thawed (and did not freeze)")
        leaving.update(name for name in matched if name in owner)
    return list(leaving)


def select_params(
    patterns: Sequence[str], param_names: Iterable[str], source: str, key: str,
    problems: Problems, tied: Mapping[str, str] | None = None,
) -> list[str]:
    """The canonical names ``patterns`` select (outside a phase, e.g. a cycle's
    ``always_train``), in model order; reports a pattern that is not a valid regex or matches
    nothing as ``key[i]`` (``tied`` as for :func:`match_phase_params`)."""
    names = list(dict.fromkeys(canonical_param_name(n) for n in param_names))
    matches = _matcher(names)
    selected: set[str] = set()
    for i, pattern in enumerate(patterns):
        try:
            matched = matches(pattern)
        except re.error as e:
            problems.error(source, None, f"{key}[{i}]", f"invalid regex {as_written(pattern)}: {e}",
                           "escape literal dots and brackets, e.g. layers\\.0\\..*")
            continue
        if not matched:
            problems.error(source, None, f"{key}[{i}]",
                           f"{as_written(pattern)} matches no parameter of the model",
                           _no_match_hint(pattern, names, tied))
        selected.update(matched)
    return [name for name in names if name in selected]


def resolve_phase_params(schedule: PhaseSchedule, param_names: Iterable[str]) -> list[list[str]]:
    """Per phase, the canonical parameter names it thaws. Raises ScheduleError when a pattern
    matches nothing or a parameter is thawed while it still trains."""
    problems = Problems()
    resolved = match_phase_params(schedule, param_names, problems)
    problems.raise_if_any()
    return resolved.thawed
