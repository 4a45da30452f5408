"""Convert a finetuning-scheduler (FTS) YAML schedule into this package's format.

What changes, and why:

- ``max_transition_epoch: E`` becomes ``max_transition_step: E * steps_per_epoch`` (FTS moves on
  at the start of epoch E); ``-1`` (no epoch-driven transition) is dropped.
- ``new_optimizer.optimizer_init`` and ``new_lr_scheduler.lr_scheduler_init`` are flattened.
- Phases >= 1 always get an explicit ``lr``: FTS gives a phase without one ``base_max_lr``
  (1e-5 unless changed), while here it would default to ``[optimizer] lr``.
- FTS matches a regex against the start of a name (``re.match``); here it must match the whole
  name, so regexes are extended with ``.*``. Plain dotted names are kept: they are exact names.
- LR schedulers stepped per epoch (``pl_lrs_cfg.interval``, Lightning's default ``epoch``) are
  stepped per training step in torchtitan: counts in their ``init_args`` (``step_size``,
  ``milestones``, ``T_max``, ``T_0``, ``total_iters``) are multiplied by the steps per scheduler
  step, and ``ExponentialLR.gamma`` is rooted accordingly. LambdaLR/MultiplicativeLR functions
  then see steps instead of epochs; that is reported, not changed.
- ``init_pg_lrs``: FTS lists the param groups present when the scheduler is built, 1 or 2 per
  phase (2 when a ``no_decay`` split is used), possibly without the new phase's groups. Here a
  phase-k list has exactly k+1 entries, one per phase; pairs are merged (they must be equal)
  and the new phase's lr is appended where missing.
- ``pl_lrs_cfg`` is dropped (the validation loss is the only monitored metric).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import Problems

# FTS's default for phases without an lr (``FinetuningScheduler(base_max_lr=1e-05)``).
FTS_BASE_MAX_LR = 1.0e-5

_FTS_PHASE_KEYS = ("params", "max_transition_epoch", "lr", "new_optimizer", "new_lr_scheduler")
_FTS_LR_SCHEDULER_KEYS = ("lr_scheduler_init", "pl_lrs_cfg", "init_pg_lrs",
                          "use_current_optimizer_pg_lrs")
# init_args that count scheduler steps, per scheduler class name.
_COUNT_ARGS = {
    "StepLR": ("step_size",),
    "MultiStepLR": ("milestones",),
    "CosineAnnealingLR": ("T_max",),
    "CosineAnnealingWarmRestarts": ("T_0",),
    "ConstantLR": ("total_iters",),
    "LinearLR": ("total_iters",),
}
_PLAIN_NAME = re.compile(r"[\w.]+")
# PyYAML reads ``1e-5`` (no dot) as a string; FTS casts such lrs with float().
_YAML_FLOAT_STRING = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def yaml_numbers(value: Any) -> Any:
    """``value`` with exponent-notation strings (``"1e-5"``) turned into floats, recursively."""
    if isinstance(value, str) and _YAML_FLOAT_STRING.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, Mapping):
        return {k: yaml_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [yaml_numbers(v) for v in value]
    return value


@dataclass
class FtsImport:
    """The converted schedule (``{"0": {...}, ...}``) and notes on what was changed."""

    schedule: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)


def strip_prefix(pattern: str, prefix: str) -> str | None:
    """``pattern`` without ``prefix`` (written plainly or regex-escaped), None if absent."""
    anchor = "^" if pattern.startswith("^") else ""
    body = pattern[len(anchor):]
    for form in (prefix, re.escape(prefix)):
        if form and body.startswith(form):
            return anchor + body[len(form):]
    return None


def _has_top_level_alternation(pattern: str) -> bool:
    depth, in_class, escaped = 0, False, False
    for ch in pattern:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            return True
    return False


def to_fullmatch(pattern: str) -> str:
    """A regex that fully matches what FTS's ``re.match(pattern, name)`` matches."""
    if _PLAIN_NAME.fullmatch(pattern):
        return pattern  # an exact parameter name
    alternation = _has_top_level_alternation(pattern)
    if pattern.endswith("$") and not alternation:
        return pattern
    if alternation:
        return f"(?:{pattern}).*"
    return pattern if pattern.endswith(".*") else pattern + ".*"


def _steps_factor(pl_lrs_cfg: Mapping[str, Any], steps_per_epoch: int | None) -> int | None:
    """Training steps per scheduler step; None when it needs an unknown steps_per_epoch."""
    frequency = int(pl_lrs_cfg.get("frequency", 1))
    if pl_lrs_cfg.get("interval", "epoch") == "step":
        return frequency
    return None if steps_per_epoch is None else frequency * steps_per_epoch


class _Converter:
    def __init__(self, source: str, steps_per_epoch: int | None, prefix: str | None,
                 base_max_lr: float, groups_per_phase: int | None, problems: Problems):
        self.source = source
        self.steps_per_epoch = steps_per_epoch
        self.prefix = prefix
        self.base_max_lr = base_max_lr
        self.groups_per_phase = groups_per_phase
        self.problems = problems
        self.notes: list[str] = []

    def error(self, phase: int | None, key: str, message: str, hint: str = "") -> None:
        self.problems.error(self.source, phase, key, message, hint)

    def params(self, k: int, raw: Any) -> list[str]:
        if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
            self.error(k, "params", f"expected a list of names/regexes, got {raw!r}")
            return []
        out = []
        for i, pattern in enumerate(raw):
            if self.prefix:
                stripped = strip_prefix(pattern, self.prefix)
                if stripped is None:
                    self.notes.append(f"phase {k}: params[{i}] {pattern!r} does not start with "
                                      f"{self.prefix!r}; kept as is")
                else:
                    pattern = stripped
            out.append(to_fullmatch(pattern))
        return out

    def transition(self, k: int, epoch: Any) -> int | None:
        if epoch == -1 or epoch is None:
            return None
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
            self.error(k, "max_transition_epoch", f"expected an epoch number or -1, got {epoch!r}")
            return None
        if self.steps_per_epoch is None:
            self.error(k, "max_transition_epoch", "torchtitan counts steps, not epochs",
                       "pass --steps-per-epoch N")
            return None
        return epoch * self.steps_per_epoch

    def optimizer(self, k: int, raw: Any) -> dict[str, Any] | None:
        init = raw.get("optimizer_init") if isinstance(raw, Mapping) else None
        if not isinstance(init, Mapping) or "class_path" not in init:
            self.error(k, "new_optimizer.optimizer_init.class_path", "missing",
                       "give new_optimizer: {optimizer_init: {class_path: ..., init_args: ...}}")
            return None
        return {"class_path": init["class_path"], "init_args": dict(init.get("init_args") or {})}

    def lr_scheduler(self, k: int, raw: Any, new_group_lr: float) -> dict[str, Any] | None:
        if not isinstance(raw, Mapping):
            self.error(k, "new_lr_scheduler", f"expected a mapping, got {raw!r}")
            return None
        for key in raw:
            if key not in _FTS_LR_SCHEDULER_KEYS:
                self.error(k, f"new_lr_scheduler.{key}", "unknown FTS key",
                           f"FTS keys: {', '.join(_FTS_LR_SCHEDULER_KEYS)}")
        init = raw.get("lr_scheduler_init")
        if not isinstance(init, Mapping) or "class_path" not in init:
            self.error(k, "new_lr_scheduler.lr_scheduler_init.class_path", "missing",
                       "give new_lr_scheduler: {lr_scheduler_init: {class_path: ...}}")
            return None
        class_path = str(init["class_path"])
        init_args = self.scheduler_args(k, class_path, dict(init.get("init_args") or {}),
                                        raw.get("pl_lrs_cfg") or {})
        out: dict[str, Any] = {"class_path": class_path, "init_args": init_args}
        if raw.get("init_pg_lrs") is not None:
            lrs = self.init_pg_lrs(k, raw["init_pg_lrs"], new_group_lr)
            if lrs is not None:
                out["init_pg_lrs"] = lrs
        if "use_current_optimizer_pg_lrs" in raw:
            out["use_current_optimizer_pg_lrs"] = raw["use_current_optimizer_pg_lrs"]
        return out

    def scheduler_args(self, k: int, class_path: str, init_args: dict[str, Any],
                       pl_lrs_cfg: Mapping[str, Any]) -> dict[str, Any]:
        name = class_path.rsplit(".", 1)[-1]
        dropped = [key for key in pl_lrs_cfg if key not in ("interval", "frequency")]
        if dropped:
            self.notes.append(f"phase {k}: new_lr_scheduler.pl_lrs_cfg {', '.join(dropped)} "
                              "dropped (validation loss is the monitored metric)")
        if name == "ReduceLROnPlateau":
            self.notes.append(f"phase {k}: ReduceLROnPlateau is stepped after each validation; "
                              "patience and cooldown count validations")
            return init_args
        factor = _steps_factor(pl_lrs_cfg, self.steps_per_epoch)
        if factor == 1:
            return init_args
        counted = _COUNT_ARGS.get(name, ())
        needs_factor = bool(counted) or name == "ExponentialLR"
        if factor is None:
            if needs_factor:
                self.error(k, "new_lr_scheduler.init_args",
                           f"{name} counts epochs (pl_lrs_cfg.interval is 'epoch', Lightning's "
                           "default) but torchtitan steps schedulers every training step",
                           "pass --steps-per-epoch N to convert the counts")
            else:
                self.notes.append(f"phase {k}: {name} was stepped per epoch and is now stepped "
                                  "per training step; check its init_args")
            return init_args
        for key in counted:
            if key in init_args:
                value = init_args[key]
                init_args[key] = ([v * factor for v in value] if isinstance(value, list)
                                  else value * factor)
                self.notes.append(f"phase {k}: {name}.{key} {value} -> {init_args[key]} "
                                  f"(x{factor} steps per scheduler step)")
        if name == "ExponentialLR" and "gamma" in init_args:
            gamma = init_args["gamma"]
            init_args["gamma"] = math.pow(gamma, 1.0 / factor)
            self.notes.append(f"phase {k}: ExponentialLR.gamma {gamma} -> {init_args['gamma']} "
                              f"(per step, same decay per {factor} steps)")
        if name in ("LambdaLR", "MultiplicativeLR"):
            self.notes.append(f"phase {k}: {name}.lr_lambda now receives the training step, "
                              f"not the epoch ({factor} steps per former scheduler step)")
        elif not needs_factor:
            self.notes.append(f"phase {k}: {name} init_args copied unchanged; any counts in "
                              f"them were in scheduler steps of {factor} training steps")
        return init_args

    def init_pg_lrs(self, k: int, raw: Any, new_group_lr: float) -> list[float] | None:
        key = "new_lr_scheduler.init_pg_lrs"
        if not isinstance(raw, list) or not all(isinstance(v, (int, float)) for v in raw):
            self.error(k, key, f"expected a list of lrs, got {raw!r}")
            return None
        g = self.groups_per_phase or 1
        if len(raw) % g or len(raw) // g not in (k, k + 1):
            self.error(k, key, f"{len(raw)} lrs do not fit phase {k} with {g} param group(s) per "
                       f"phase (expected {g * k} or {g * (k + 1)})",
                       "pass --groups-per-phase 1 or 2, or fix the list")
            return None
        pairs = [raw[i:i + g] for i in range(0, len(raw), g)]
        if any(len(set(p)) > 1 for p in pairs):
            self.error(k, key, f"decay and no_decay groups have different lrs: {raw}",
                       "titan_phases has one param group per phase: make each pair equal")
            return None
        lrs = [float(p[0]) for p in pairs]
        return lrs if len(lrs) == k + 1 else [*lrs, new_group_lr]


def _infer_groups_per_phase(phases: Mapping[int, Any]) -> int:
    """2 if every init_pg_lrs fits a no_decay split (2 groups per phase) and one does not fit
    1 group per phase; else 1."""
    lengths = [(k, len(t["new_lr_scheduler"]["init_pg_lrs"])) for k, t in phases.items()
               if isinstance(t, Mapping) and isinstance(t.get("new_lr_scheduler"), Mapping)
               and isinstance(t["new_lr_scheduler"].get("init_pg_lrs"), list)]
    fits_two = all(n in (2 * k, 2 * k + 2) for k, n in lengths)
    fits_one = all(n in (k, k + 1) for k, n in lengths)
    return 2 if fits_two and not fits_one else 1


def convert_fts_schedule(
    raw: Any, *, source: str, problems: Problems, steps_per_epoch: int | None = None,
    prefix: str | None = None, base_max_lr: float = FTS_BASE_MAX_LR,
    groups_per_phase: int | None = None,
) -> FtsImport:
    """Convert a parsed FTS schedule (``{0: {params: [...], ...}, ...}``); errors go into
    ``problems``. ``groups_per_phase`` None infers it from the ``init_pg_lrs`` lengths."""
    if not isinstance(raw, Mapping) or not raw:
        problems.error(source, None, "(schedule)", "not an FTS schedule: expected a mapping of "
                       "phase numbers to phases")
        return FtsImport({})
    phases: dict[int, Any] = {}
    for key, table in raw.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            problems.error(source, None, f"[{key}]", f"phase keys must be integers, got {key!r}")
            continue
        if index in phases:
            problems.error(source, index, f"[{key}]", f"duplicate phase key {key!r}")
        phases[index] = yaml_numbers(table)
    if groups_per_phase is None:
        groups_per_phase = _infer_groups_per_phase(phases)
    conv = _Converter(source, steps_per_epoch, prefix, base_max_lr, groups_per_phase, problems)
    if groups_per_phase == 2:
        conv.notes.append("init_pg_lrs read as 2 FTS param groups (decay, no_decay) per phase")

    out: dict[str, dict[str, Any]] = {}
    for k in sorted(phases):
        table = phases[k]
        if not isinstance(table, Mapping):
            problems.error(source, k, "(phase)", f"expected a mapping, got {table!r}")
            continue
        for key in table:
            if key not in _FTS_PHASE_KEYS:
                problems.error(source, k, str(key), "unknown FTS phase key",
                               f"FTS keys: {', '.join(_FTS_PHASE_KEYS)}")
        phase: dict[str, Any] = {"params": conv.params(k, table.get("params"))}
        step = conv.transition(k, table.get("max_transition_epoch"))
        if step is not None:
            phase["max_transition_step"] = step
        lr = table.get("lr")
        if k == 0:
            if lr is not None:
                conv.notes.append(f"phase 0: lr {lr} dropped (FTS ignores it too; phase 0 uses "
                                  "[optimizer] lr)")
            for key in ("new_optimizer", "new_lr_scheduler"):
                if key in table:
                    problems.error(source, 0, key, "FTS does not allow reinitialization in "
                                   "phase 0 either", "configure [optimizer] / [lr_scheduler]")
        else:
            if lr is None:
                lr = base_max_lr
                conv.notes.append(f"phase {k}: lr = {lr} (FTS base_max_lr; see --base-max-lr)")
            try:
                phase["lr"] = float(lr)
            except (TypeError, ValueError):
                problems.error(source, k, "lr", f"expected a number, got {lr!r}")
            if "new_optimizer" in table:
                optimizer = conv.optimizer(k, table["new_optimizer"])
                if optimizer is not None:
                    phase["new_optimizer"] = optimizer
            if "new_lr_scheduler" in table:
                scheduler = conv.lr_scheduler(k, table["new_lr_scheduler"],
                                              phase.get("lr", base_max_lr))
                if scheduler is not None:
                    phase["new_lr_scheduler"] = scheduler
        out[str(k)] = phase
    return FtsImport(out, conv.notes)


def load_fts_yaml(path: str | Path, problems: Problems) -> Any:
    """Parse an FTS schedule file; a missing or malformed file is reported into ``problems``."""
    try:
        with open(path) as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        problems.error(str(path), None, "(file)", "file not found")
    except yaml.YAMLError as e:
        problems.error(str(path), None, "(file)", f"not valid YAML: {e}")
    return None
