"""Read a schedule (TOML file or inline table) and turn it into :mod:`.schema` values.

Parsing is lenient: a malformed value is reported and left out, and parsing goes on, so that
one run reports every problem. Checks that need the model, the job config or imports live in
:mod:`.validation`.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from titan_phases.config.toml_writer import as_written

from . import classes
from .errors import Problem, Problems, ScheduleError
from .schema import LRSchedulerInit, OptimizerInit, Phase, PhaseSchedule

PHASE_KEYS = (
    "params",
    "freeze",
    "max_transition_step",
    "lr",
    "new_optimizer",
    "new_lr_scheduler",
    "max_norm",
)
OPTIMIZER_KEYS = ("class_path", "init_args")
LR_SCHEDULER_KEYS = ("class_path", "init_args", "init_pg_lrs", "use_current_optimizer_pg_lrs")

# Keys an FTS (YAML) schedule uses where this format differs; each gets a targeted hint.
_FTS_KEY_HINTS = {
    "max_transition_epoch": "torchtitan counts steps: use max_transition_step, or convert the "
    "FTS schedule with `titan-phases import-fts --steps-per-epoch N`",
    "optimizer_init": "put class_path and init_args directly under new_optimizer",
    "lr_scheduler_init": "put class_path and init_args directly under new_lr_scheduler",
    "pl_lrs_cfg": "remove it: torchtitan steps LR schedulers once per training step",
}
_MAX_MISSING_SHOWN = 10


def resolve_schedule_path(schedule_file: str, config_path: str | None) -> Path:
    """Find ``schedule_file``: as given if absolute, else first next to the job config file,
    then in the current working directory. Returns the first candidate when none exists, so
    the caller reports that path as missing."""
    path = Path(schedule_file).expanduser()
    if path.is_absolute():
        return path
    candidates = [Path(config_path).parent / path] if config_path else []
    candidates.append(Path.cwd() / path)
    return next((c for c in candidates if c.is_file()), candidates[0])


def read_schedule_file(path: str | Path) -> dict[str, Any]:
    """Parse a schedule TOML file. Raises ScheduleError if it is missing or not valid TOML."""
    source = str(path)
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        raise ScheduleError([Problem(
            source, None, "phases.schedule_file",
            "schedule files are TOML, this looks like an FTS YAML schedule",
            f"convert it: titan-phases import-fts {source} --out schedule.toml",
        )])
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        problem = Problem(source, None, "phases.schedule_file", "file not found",
                          "check the path (relative paths: next to the job config, then the "
                          "working directory)")
    except IsADirectoryError:
        problem = Problem(source, None, "phases.schedule_file", "is a directory, not a file",
                          "name the schedule TOML file itself")
    except OSError as e:
        problem = Problem(source, None, "phases.schedule_file",
                          f"cannot be read: {e.strerror or e}",
                          "check the file's permissions, or name another file")
    except tomllib.TOMLDecodeError as e:
        problem = Problem(source, None, "(file)", f"not valid TOML: {e}", "fix the syntax")
    except UnicodeDecodeError as e:
        problem = Problem(source, None, "(file)", f"not UTF-8 text: {e.reason}",
                          "save the schedule as UTF-8 TOML")
    raise ScheduleError([problem])


def _unknown_keys(
    table: Mapping[str, Any], allowed: tuple[str, ...], source: str, phase: int | None,
    prefix: str, problems: Problems,
) -> None:
    for key in table:
        if key in allowed:
            continue
        hint = _FTS_KEY_HINTS.get(key)
        if hint is None:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(allowed)}"
        problems.error(source, phase, f"{prefix}{key}", "unknown key", hint)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_float(
    value: Any, source: str, phase: int | None, key: str, problems: Problems
) -> float | None:
    if not is_number(value) or not math.isfinite(value) or value <= 0:
        problems.error(
            source, phase, key, f"expected a positive number, got {as_written(value)}",
            "write a float such as 1.0e-4",
        )
        return None
    return float(value)


def _class_path(value: Any, default_module: str, source: str, phase: int | None, key: str,
                problems: Problems) -> str | None:
    if not isinstance(value, str) or not value.strip():
        problems.error(
            source, phase, key, f"expected a class path string, got {as_written(value)}",
            f'e.g. class_path = "{default_module}.<Name>"',
        )
        return None
    return classes.qualified_class_path(value.strip(), default_module)


def _init_args(value: Any, source: str, phase: int | None, key: str,
               problems: Problems) -> dict[str, Any] | None:
    if not isinstance(value, Mapping):
        problems.error(source, phase, key, f"expected a table, got {value!r}",
                       "write init_args = { name = value, ... }")
        return None
    return copy.deepcopy(dict(value))


def _class_table(raw: Any, keys: Any, module: str, class_hint: str, source: str,
                 phase: int | None, prefix: str,
                 problems: Problems) -> tuple[str | None, dict[str, Any] | None] | None:
    """Check a ``{class_path, init_args, ...}`` table; None when it is unusable altogether,
    else ``(class_path, init_args)`` with None for a part that is invalid (already reported)."""
    if not isinstance(raw, Mapping):
        problems.error(source, phase, prefix, f"expected a table, got {raw!r}",
                       "give class_path and init_args")
        return None
    _unknown_keys(raw, keys, source, phase, f"{prefix}.", problems)
    if "class_path" not in raw:
        problems.error(source, phase, f"{prefix}.class_path", "missing", class_hint)
        return None
    class_path = _class_path(raw["class_path"], module, source, phase, f"{prefix}.class_path",
                             problems)
    init_args = _init_args(raw.get("init_args", {}), source, phase, f"{prefix}.init_args", problems)
    return class_path, init_args


def parse_optimizer_init(raw: Any, source: str, phase: int | None, prefix: str,
                         problems: Problems) -> OptimizerInit | None:
    """Parse ``{class_path, init_args}`` for a new optimizer; ``prefix`` names it in messages."""
    parsed = _class_table(raw, OPTIMIZER_KEYS, classes.OPTIMIZER_MODULE,
                          'add class_path = "torch.optim.<Name>"', source, phase, prefix, problems)
    if parsed is None or None in parsed:
        return None
    return OptimizerInit(*parsed)


def parse_lr_scheduler_init(raw: Any, source: str, phase: int | None, prefix: str,
                            problems: Problems) -> LRSchedulerInit | None:
    """Parse ``{class_path, init_args, init_pg_lrs, use_current_optimizer_pg_lrs}``."""
    parsed = _class_table(raw, LR_SCHEDULER_KEYS, classes.LR_SCHEDULER_MODULE,
                          'add class_path = "torch.optim.lr_scheduler.<Name>"', source, phase,
                          prefix, problems)
    if parsed is None:
        return None
    class_path, init_args = parsed

    init_pg_lrs: tuple[float, ...] | None = None
    ok = True
    if "init_pg_lrs" in raw:
        lrs = raw["init_pg_lrs"]
        key = f"{prefix}.init_pg_lrs"
        if not isinstance(lrs, list) or not lrs:
            problems.error(source, phase, key,
                           f"expected a non-empty list of lrs, got {as_written(lrs)}",
                           "write init_pg_lrs = [lr_group0, lr_group1, ...]")
            ok = False
        else:
            parsed = [_positive_float(v, source, phase, f"{key}[{i}]", problems)
                      for i, v in enumerate(lrs)]
            ok = None not in parsed
            init_pg_lrs = tuple(parsed) if ok else None

    use_current = raw.get("use_current_optimizer_pg_lrs", False)
    if not isinstance(use_current, bool):
        problems.error(source, phase, f"{prefix}.use_current_optimizer_pg_lrs",
                       f"expected true or false, got {use_current!r}")
        ok = False
    if class_path is None or init_args is None or not ok:
        return None
    return LRSchedulerInit(class_path, init_args, init_pg_lrs, use_current)


def _parse_params(raw: Any, source: str, phase: int, problems: Problems,
                  key: str = "params") -> tuple[str, ...]:
    """A list of parameter names/regexes under ``key`` (``params`` or ``freeze``)."""
    does = "thaws" if key == "params" else "stops training"
    if isinstance(raw, str):
        problems.error(source, phase, key, f"expected a list, got the string {as_written(raw)}",
                       f"write {key} = [{as_written(raw)}]")
        return ()
    if not isinstance(raw, list) or not raw:
        problems.error(source, phase, key, f"expected a non-empty list of names/regexes, "
                       f"got {as_written(raw)}", f"list the parameters this phase {does}")
        return ()
    patterns = []
    first_index: dict[str, int] = {}
    for i, pattern in enumerate(raw):
        if not isinstance(pattern, str) or not pattern.strip():
            problems.error(source, phase, f"{key}[{i}]",
                           f"expected a parameter name or regex, got {as_written(pattern)}")
            continue
        if pattern in first_index:
            # Harmless to matching, but usually a copy that was meant to be edited.
            problems.error(source, phase, f"{key}[{i}]",
                           f"{as_written(pattern)} is listed twice "
                           f"(also {key}[{first_index[pattern]}])",
                           "remove the copy, or change it to the parameters it was meant for")
            continue
        first_index[pattern] = i
        try:
            re.compile(pattern)
        except re.error as e:
            problems.error(source, phase, f"{key}[{i}]",
                           f"invalid regex {as_written(pattern)}: {e}",
                           "escape literal dots and brackets, e.g. layers\\.0\\..*")
            continue
        patterns.append(pattern)
    return tuple(patterns)


def _parse_phase(index: int, raw: Any, source: str, problems: Problems) -> Phase:
    if not isinstance(raw, Mapping):
        problems.error(source, index, "(table)", f"expected a table of phase settings, got {raw!r}",
                       f"write [{index}] followed by params = [...]")
        return Phase(index, ())
    _unknown_keys(raw, PHASE_KEYS, source, index, "", problems)
    if "params" not in raw and "freeze" not in raw:
        problems.error(source, index, "params", "missing",
                       "list the parameters this phase thaws: params = [...]")
    params = _parse_params(raw["params"], source, index, problems) if "params" in raw else ()
    freeze: tuple[str, ...] = ()
    if "freeze" in raw:
        if index == 0:
            problems.error(source, index, "freeze", "phase 0 is the first to train: there is "
                           "nothing to freeze yet", "remove freeze from phase 0")
        else:
            freeze = _parse_params(raw["freeze"], source, index, problems, key="freeze")

    step = raw.get("max_transition_step")
    if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 1):
        problems.error(source, index, "max_transition_step",
                       f"expected a training step (an integer >= 1), got {as_written(step)}")
        step = None

    lr = raw.get("lr")
    if lr is not None:
        lr = _positive_float(lr, source, index, "lr", problems)
    max_norm = raw.get("max_norm")
    if max_norm is not None:
        max_norm = _positive_float(max_norm, source, index, "max_norm", problems)

    new_optimizer = None
    if "new_optimizer" in raw:
        new_optimizer = parse_optimizer_init(raw["new_optimizer"], source, index, "new_optimizer",
                                             problems)
    new_lr_scheduler = None
    if "new_lr_scheduler" in raw:
        new_lr_scheduler = parse_lr_scheduler_init(raw["new_lr_scheduler"], source, index,
                                                   "new_lr_scheduler", problems)
    return Phase(index, params, step, lr, new_optimizer, new_lr_scheduler, max_norm, freeze)


def _phase_index(key: Any) -> int | None:
    if isinstance(key, bool):
        return None
    if isinstance(key, int):
        return key
    if isinstance(key, str) and re.fullmatch(r"\s*[+-]?\d+\s*", key):
        return int(key)
    return None


def parse_schedule(raw: Mapping[Any, Any], source: str, problems: Problems) -> PhaseSchedule:
    """Turn ``{"0": {...}, "1": {...}}`` into a PhaseSchedule, reporting into ``problems``.

    Checks phase keys (integers, no duplicates such as "1" and "01", contiguous from 0), phase
    tables, unknown keys, and the type and range of every value.
    """
    if not isinstance(raw, Mapping) or not raw:
        problems.error(source, None, "(schedule)", "the schedule has no phases",
                       "add phase tables [0], [1], ... or leave the schedule out to generate one")
        return PhaseSchedule((), source)

    by_index: dict[int, Any] = {}
    first_key: dict[int, Any] = {}
    for key, table in raw.items():
        index = _phase_index(key)
        if index is None or index < 0:
            problems.error(source, None, f"[{key}]", f"phase keys must be integers 0..N-1, "
                           f"got {key!r}", "number the phase tables [0], [1], [2], ...")
            continue
        if index in by_index:
            problems.error(source, index, f"[{key}]", f"duplicate phase key: {key!r} and "
                           f"{first_key[index]!r} are both phase {index}", "keep one of them")
            continue
        by_index[index] = table
        first_key[index] = key

    # Not range(max key) as a set: a key such as [100000000] would take that much memory.
    n_phases = max(by_index, default=-1) + 1
    n_missing = n_phases - len(by_index)
    if n_missing:
        shown = list(itertools.islice((i for i in range(n_phases) if i not in by_index),
                                      _MAX_MISSING_SHOWN))
        more = f" and {n_missing - len(shown)} more" if n_missing > len(shown) else ""
        problems.error(source, None, "(phase keys)", f"phases must be numbered 0..N-1 without "
                       f"gaps; missing {shown}{more}", "renumber the phase tables")

    phases = tuple(_parse_phase(i, by_index[i], source, problems) for i in sorted(by_index))
    return PhaseSchedule(phases, source)
