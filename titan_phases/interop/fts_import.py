"""Convert a finetuning-scheduler (FTS) YAML schedule into this package's format.

What changes, and why (each change is also reported as a note):

- ``max_transition_epoch: E`` becomes ``max_transition_step: E * steps_per_epoch`` (FTS moves on
  at the start of epoch E); ``-1`` (no epoch-driven transition) is dropped.
- ``new_optimizer.optimizer_init`` and ``new_lr_scheduler.lr_scheduler_init`` are flattened.
- ``lr``: FTS gives a phase without one ``base_max_lr`` (1e-5 unless changed), while here it
  would default to the current optimizer's lr, so phases >= 1 get an explicit ``lr``, except
  where ``init_pg_lrs`` sets the new group's lr: that wins in FTS, and here the last
  ``init_pg_lrs`` entry is the group's lr.
- ``params``: FTS takes a pattern that is a parameter name as that name, and any other pattern
  as a regex matched at the start of names (``re.match``), so ``model.layers.5`` selects block
  5's parameters and ``layers.1`` also selects ``layers.10``. Here a regex must match a whole
  name, so such patterns get a trailing ``.*``; FTS's meaning is kept, and where the model's
  names are known, what that start-anchored match selects beyond the probable intent (a whole
  name segment, dots taken literally) is reported.
- LR schedulers: Lightning steps them every ``pl_lrs_cfg.frequency`` batches, counted within
  each epoch (``interval: step``), or at the end of every ``frequency``-th epoch, counted from
  the start of training (``interval: epoch``, Lightning's default); titan_phases steps them after
  every training step. Counts are converted to training steps exactly where the scheduler's
  lrs allow it (StepLR, MultiStepLR, ConstantLR; ExponentialLR becomes a StepLR, and either
  becomes a MultiStepLR of FTS's decay steps where those are not evenly spaced but the phase's
  length is known); where they do not (cosine and linear schedules, lambdas, uneven decays in
  the last phase), the note says how the lrs differ.
- ``init_pg_lrs``: FTS lists the param groups present when the scheduler is built, 1 or 2 per
  phase (2 when a ``no_decay`` split is used), possibly without the new phase's groups. Here a
  phase-k list has exactly k+1 entries, one per phase; pairs are merged (they must be equal)
  and the new phase's lr is appended where missing. The split's ``weight_decay = 0`` for the
  no_decay group has no place in one group per phase: those parameters decay like the rest.
- ``pl_lrs_cfg`` keys other than ``interval`` and ``frequency`` are dropped: ``name`` is a
  logging label, ``monitor`` is the validation loss here.

**Limitations**
Settings of the ``FinetuningScheduler`` callback itself (``base_max_lr``,
``apply_lambdas_new_pgs``, ``restore_best``, ...) are not in a schedule file; ``--base-max-lr``
gives the first, and the corresponding ``[phases]`` settings are named in the notes.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from titan_phases.config.toml_writer import as_written
from titan_phases.schedule.errors import Problems

# FTS's default for phases without an lr (``FinetuningScheduler(base_max_lr=1e-05)``).
FTS_BASE_MAX_LR = 1.0e-5

_FTS_PHASE_KEYS = ("params", "max_transition_epoch", "lr", "new_optimizer", "new_lr_scheduler")
_FTS_LR_SCHEDULER_KEYS = ("lr_scheduler_init", "pl_lrs_cfg", "init_pg_lrs",
                          "use_current_optimizer_pg_lrs")
_SCHEDULER_MODULE = "torch.optim.lr_scheduler"
_PLAIN_NAME = re.compile(r"[\w.]+")
# Without the model's names, a plain pattern ending like a parameter is taken for its name.
_PARAMETER_LEAF = re.compile(r"\.(weight|bias)$")
# PyYAML reads ``1e-5`` (no dot) as a string; FTS casts such lrs with float().
_YAML_FLOAT_STRING = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
_NAMES_SHOWN = 3


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


def _ends_unescaped(pattern: str, suffix: str) -> bool:
    """Whether ``pattern`` ends with ``suffix`` as regex syntax, not as escaped characters."""
    if not pattern.endswith(suffix):
        return False
    backslashes = len(pattern) - len(suffix) - len(pattern[: -len(suffix)].rstrip("\\"))
    return backslashes % 2 == 0


def to_fullmatch(pattern: str, names: Collection[str] | None = None) -> str:
    """A pattern that selects here (exact name, else ``re.fullmatch``) what FTS selects with
    ``pattern``: the parameter of that name, else every name that ``re.match`` matches.

    ``names`` are the model's parameter names. Without them, a plain dotted pattern ending in
    ``.weight`` or ``.bias`` is taken for a parameter name and kept; any other pattern, e.g. a
    module name such as ``layers.5``, becomes a regex with FTS's start-anchored meaning.
    """
    if names is not None and pattern in names:
        return pattern
    if names is None and _PLAIN_NAME.fullmatch(pattern) and _PARAMETER_LEAF.search(pattern):
        return pattern
    alternation = _has_top_level_alternation(pattern)
    if alternation:
        return f"(?:{pattern}).*"
    if _ends_unescaped(pattern, "$") or _ends_unescaped(pattern, ".*"):
        return pattern
    return pattern + ".*"


def fts_selection(pattern: str, names: Sequence[str]) -> list[str]:
    """The names FTS's schedule parser selects with ``pattern``, in ``names`` order."""
    if pattern in names:
        return [pattern]
    regex = re.compile(pattern)
    return [n for n in names if regex.match(n)]


def probable_meaning(pattern: str) -> str:
    """``pattern`` read as schedules usually mean it: a ``.`` not followed by a quantifier is a
    literal dot, and a trailing ``.*`` / ``.+`` after a block number (``layers.1.*``) means
    "everything in it". Matched at the start of a name, up to the end of a name segment."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "." and pattern[i + 1:i + 2] not in ("*", "+", "?", "{"):
            ch = r"\."
        out.append(ch)
        i += 1
    meant = "".join(out)
    tail = re.search(r"(?<=[\d\]])\.[*+]$", meant)
    if tail:
        meant = meant[:tail.start()] + r"(?:\..*)?"
    return meant


def _looser_than_meant(pattern: str, names: Sequence[str]) -> tuple[list[str], str]:
    """Names FTS selects with ``pattern`` that its probable meaning does not, and that
    meaning as a pattern for this package."""
    if pattern in names:
        return [], pattern
    meant = probable_meaning(pattern)
    bounded = re.compile(f"(?:{meant})(?=\\.|$)")
    extra = [n for n in fts_selection(pattern, names) if not bounded.match(n)]
    if _has_top_level_alternation(meant):
        meant = f"(?:{meant})"
    if not (meant.endswith(".*") or meant.endswith(")?")):
        meant += r"(?:\..*)?"
    return extra, meant


def _shorten(names: list[str]) -> str:
    more = len(names) - _NAMES_SHOWN
    return ", ".join(names[:_NAMES_SHOWN]) + (f" (+{more} more)" if more > 0 else "")


@dataclass(frozen=True)
class _Clock:
    """When Lightning steps an LR scheduler, counted in training steps since its phase began.

    Scheduler step ``c`` (1-based) happens after training step :meth:`at` ``(c)`` of the phase.
    ``every``: the scheduler steps every ``every`` training steps from the phase's start (the
    case that converts exactly), else None.
    """

    description: str
    first: int
    period: int
    steps_per_epoch: int | None = None
    frequency: int = 1

    @property
    def within_epochs(self) -> bool:
        """Lightning's step-interval count restarts each epoch and does not divide it."""
        return self.steps_per_epoch is not None and self.steps_per_epoch % self.frequency != 0

    @property
    def every(self) -> int | None:
        return self.period if self.first == self.period and not self.within_epochs else None

    def at(self, count: int) -> int:
        if self.within_epochs:
            assert self.steps_per_epoch is not None
            per_epoch = self.steps_per_epoch // self.frequency
            epoch, rest = divmod(count - 1, per_epoch)
            return epoch * self.steps_per_epoch + (rest + 1) * self.frequency
        return self.first + (count - 1) * self.period


class _Converter:
    def __init__(self, source: str, steps_per_epoch: int | None, prefix: str | None,
                 base_max_lr: float, groups_per_phase: int | None,
                 names: Sequence[str] | None, problems: Problems):
        self.source = source
        self.steps_per_epoch = steps_per_epoch
        self.prefix = prefix
        self.base_max_lr = base_max_lr
        self.groups_per_phase = groups_per_phase
        self.names = names
        self.problems = problems
        self.notes: list[str] = []

    def error(self, phase: int | None, key: str, message: str, hint: str = "") -> None:
        self.problems.error(self.source, phase, key, message, hint)

    def params(self, k: int, raw: Any) -> list[str]:
        if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
            self.error(k, "params", f"expected a list of names/regexes, got {as_written(raw)}")
            return []
        out = []
        for i, pattern in enumerate(raw):
            if self.prefix:
                stripped = strip_prefix(pattern, self.prefix)
                if stripped is None:
                    self.notes.append(f"phase {k}: params[{i}] {as_written(pattern)} does not "
                                      f"start with {as_written(self.prefix)}; kept as is")
                else:
                    pattern = stripped
            out.append(self.pattern(k, i, pattern))
        return out

    def pattern(self, k: int, i: int, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error:
            return pattern  # the schedule validator reports it, naming phase and key
        converted = to_fullmatch(pattern, self.names)
        if self.names is None:
            if converted != pattern and _PLAIN_NAME.fullmatch(pattern):
                self.notes.append(
                    f"phase {k}: params[{i}] {as_written(pattern)} is taken as FTS takes a pattern "
                    "that is not a parameter name, matched at the start of names "
                    f"({as_written(converted)}): it "
                    "also selects longer names that start the same (layers.1 -> layers.10); "
                    "give the job (--job.config_file) to list them")
            return converted
        if not fts_selection(pattern, self.names):
            return pattern  # FTS refuses it too; validation names it as written
        extra, meant = _looser_than_meant(pattern, self.names)
        if extra:
            self.notes.append(
                f"phase {k}: params[{i}] {as_written(pattern)}: FTS matches it at the start of "
                f"names, so it also selects {len(extra)} parameter(s) that {as_written(meant)} "
                f"would not: {_shorten(extra)}. Converted with FTS's meaning "
                f"({as_written(converted)}); write {as_written(meant)} to leave them out")
        return converted

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

    def lr_scheduler(self, k: int, raw: Any, new_group_lr: float, start_epoch: int | None,
                     end_epoch: int | None) -> tuple[dict[str, Any] | None, bool]:
        """The converted scheduler, and whether FTS's ``init_pg_lrs`` set the new group's lr.

        ``start_epoch`` / ``end_epoch``: the epochs the phase starts and at the latest ends at,
        where the schedule's epoch-driven transitions say so."""
        if not isinstance(raw, Mapping):
            self.error(k, "new_lr_scheduler", f"expected a mapping, got {raw!r}")
            return None, False
        for key in raw:
            if key not in _FTS_LR_SCHEDULER_KEYS:
                self.error(k, f"new_lr_scheduler.{key}", "unknown FTS key",
                           f"FTS keys: {', '.join(_FTS_LR_SCHEDULER_KEYS)}")
        init = raw.get("lr_scheduler_init")
        if not isinstance(init, Mapping) or "class_path" not in init:
            self.error(k, "new_lr_scheduler.lr_scheduler_init.class_path", "missing",
                       "give new_lr_scheduler: {lr_scheduler_init: {class_path: ...}}")
            return None, False
        pl_lrs_cfg = raw.get("pl_lrs_cfg") or {}
        class_path, init_args = self.scheduler(k, str(init["class_path"]),
                                               dict(init.get("init_args") or {}), pl_lrs_cfg,
                                               start_epoch, end_epoch)
        out: dict[str, Any] = {"class_path": class_path, "init_args": init_args}
        sets_new_group = False
        if raw.get("init_pg_lrs") is not None:
            converted = self.init_pg_lrs(k, raw["init_pg_lrs"], new_group_lr)
            if converted is not None:
                out["init_pg_lrs"], sets_new_group = converted
        if "use_current_optimizer_pg_lrs" in raw:
            out["use_current_optimizer_pg_lrs"] = raw["use_current_optimizer_pg_lrs"]
        return out, sets_new_group

    def _pl_lrs_notes(self, k: int, pl_lrs_cfg: Mapping[str, Any]) -> None:
        for key, value in pl_lrs_cfg.items():
            if key in ("interval", "frequency"):
                continue
            if key == "name":
                why = "a Lightning logging label; titan_phases logs every param group's lr"
            elif key == "monitor":
                why = "ReduceLROnPlateau is stepped with the validation loss here"
            else:
                why = "no equivalent here"
            self.notes.append(f"phase {k}: new_lr_scheduler.pl_lrs_cfg.{key} {value!r} "
                              f"dropped ({why})")

    def clock(self, k: int, pl_lrs_cfg: Mapping[str, Any], start_epoch: int | None,
              name: str) -> _Clock | None:
        """When Lightning steps the scheduler; None (reported) when it cannot be known."""
        key = "new_lr_scheduler.pl_lrs_cfg"
        frequency = pl_lrs_cfg.get("frequency", 1)
        if not isinstance(frequency, int) or isinstance(frequency, bool) or frequency < 1:
            self.error(k, f"{key}.frequency", f"expected an integer >= 1, got {frequency!r}")
            return None
        steps = self.steps_per_epoch
        if pl_lrs_cfg.get("interval", "epoch") == "step":
            if steps is not None and frequency > steps:
                self.error(k, f"{key}.frequency",
                           f"{frequency} is more than the {steps} steps per epoch: Lightning "
                           "counts it within each epoch, so it never steps this scheduler",
                           "lower the frequency, or check --steps-per-epoch")
                return None
            if frequency > 1 and steps is None:
                self.notes.append(
                    f"phase {k}: {name} was stepped every {frequency} steps, counted within each "
                    "epoch; converted as if the steps per epoch were a multiple of "
                    f"{frequency} (pass --steps-per-epoch to check)")
            return _Clock(f"every {frequency} step(s), counted within each epoch", frequency,
                          frequency, steps, frequency)
        if steps is None:
            return None
        period = frequency * steps
        if start_epoch is None:
            if frequency > 1:
                self.notes.append(
                    f"phase {k}: {name} was stepped at the end of every {frequency}th epoch of "
                    "training; the phase's first epoch is not known (no max_transition_epoch "
                    f"before it), so it is taken to be a multiple of {frequency}")
            start_epoch = 0
        # Lightning steps it after epoch e (0-based, from the start of training) when
        # (e + 1) % frequency == 0; the phase starts with epoch start_epoch.
        first = ((frequency - 1 - start_epoch) % frequency + 1) * steps
        return _Clock(f"at the end of every {frequency} epoch(s) of training, first after "
                      f"{first} steps of the phase", first, period, None, frequency)

    def scheduler(self, k: int, class_path: str, init_args: dict[str, Any],
                  pl_lrs_cfg: Mapping[str, Any], start_epoch: int | None,
                  end_epoch: int | None) -> tuple[str, dict[str, Any]]:
        """``class_path`` and ``init_args`` for a scheduler stepped after every training step
        that gives the lrs FTS's did, as far as one can (see the module docstring)."""
        name = class_path.rsplit(".", 1)[-1]
        self._pl_lrs_notes(k, pl_lrs_cfg)
        if name == "ReduceLROnPlateau":
            self.notes.append(f"phase {k}: ReduceLROnPlateau is stepped after each validation; "
                              "patience and cooldown count validations")
            return class_path, init_args
        clock = self.clock(k, pl_lrs_cfg, start_epoch, name)
        count_args = {"StepLR": ("step_size",), "MultiStepLR": ("milestones",),
                      "CosineAnnealingLR": ("T_max",), "CosineAnnealingWarmRestarts": ("T_0",),
                      "ConstantLR": ("total_iters",), "LinearLR": ("total_iters",)}
        counted = count_args.get(name, ())
        if clock is None:
            if self.problems.has(k, "new_lr_scheduler.pl_lrs_cfg"):
                return class_path, init_args
            if counted or name == "ExponentialLR":
                self.error(k, "new_lr_scheduler.init_args",
                           f"{name} counts epochs (pl_lrs_cfg.interval is 'epoch', Lightning's "
                           "default) but torchtitan steps schedulers every training step",
                           "pass --steps-per-epoch N to convert the counts")
            else:
                self.notes.append(f"phase {k}: {name} was stepped per epoch and is now stepped "
                                  "per training step; check its init_args")
            return class_path, init_args
        if clock.every == 1:
            return class_path, init_args
        where = f"FTS stepped it {clock.description}"
        phase_steps = None
        if None not in (start_epoch, end_epoch, self.steps_per_epoch):
            phase_steps = (end_epoch - start_epoch) * self.steps_per_epoch
        if name in ("StepLR", "ExponentialLR") and clock.every is None and phase_steps:
            # FTS's decays are not evenly spaced from the phase's start, but a phase of known
            # length has finitely many: list them.
            every = int(init_args.pop("step_size", 1)) if name == "StepLR" else 1
            milestones, count = [], every
            while clock.at(count) < phase_steps:
                milestones.append(clock.at(count))
                count += every
            self.notes.append(
                f"phase {k}: {name} -> MultiStepLR(milestones={milestones}): FTS's decays in "
                f"the phase's {phase_steps} steps (exact: {where})")
            return f"{_SCHEDULER_MODULE}.MultiStepLR", {"milestones": milestones, **init_args}
        if name == "StepLR" and "step_size" in init_args:
            size = init_args["step_size"]
            init_args["step_size"] = size * clock.period
            exact = clock.every is not None
            self.notes.append(
                f"phase {k}: StepLR.step_size {size} -> {init_args['step_size']} "
                f"(x{clock.period} steps per scheduler step; {where})"
                + ("" if exact else
                   f"; not exact: FTS's decays came after steps {clock.at(size)}, "
                   f"{clock.at(2 * size)}, {clock.at(3 * size)}, ... of the phase"))
        elif name in ("MultiStepLR", "ConstantLR"):
            key = counted[0]
            if key in init_args:
                value = init_args[key]
                init_args[key] = ([clock.at(int(m)) for m in value] if isinstance(value, list)
                                  else clock.at(int(value)) if value else value)
                self.notes.append(f"phase {k}: {name}.{key} {value} -> {init_args[key]} "
                                  f"(exact: {where})")
        elif name == "ExponentialLR":
            step_size = clock.every or clock.period
            self.notes.append(
                f"phase {k}: ExponentialLR -> StepLR(step_size={step_size}, gamma="
                f"{init_args.get('gamma')}): the same decay per scheduler step ({where})"
                + ("" if clock.every else
                   f"; not exact: FTS's decays came after steps {clock.at(1)}, {clock.at(2)}, "
                   f"{clock.at(3)}, ... of the phase"))
            class_path = f"{_SCHEDULER_MODULE}.StepLR"
            init_args = {"step_size": step_size, **init_args}
        elif counted:
            for key in counted:
                if key in init_args:
                    value = init_args[key]
                    init_args[key] = value * clock.period
                    self.notes.append(
                        f"phase {k}: {name}.{key} {value} -> {init_args[key]} (x{clock.period} "
                        f"steps per scheduler step; not exact: {where} and held the lr in "
                        "between, here it moves every step"
                        + (", so the lrs agree after every scheduler step of FTS's)"
                           if clock.every else ")"))
        elif name in ("LambdaLR", "MultiplicativeLR"):
            self.notes.append(f"phase {k}: {name}.lr_lambda now receives the training step, "
                              f"not FTS's scheduler step ({where})")
        else:
            self.notes.append(f"phase {k}: {name} init_args copied unchanged; any counts in "
                              f"them were in scheduler steps ({where})")
        return class_path, init_args

    def init_pg_lrs(self, k: int, raw: Any,
                    new_group_lr: float) -> tuple[list[float], bool] | None:
        """The lrs, one per phase 0..k, and whether FTS's list set the new group's lr."""
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
        if len(lrs) == k + 1:
            return lrs, True
        return [*lrs, new_group_lr], False


def _infer_groups_per_phase(phases: Mapping[int, Any]) -> int:
    """2 if every init_pg_lrs fits a no_decay split (2 groups per phase) and one does not fit
    1 group per phase; else 1."""
    lengths = [(k, len(t["new_lr_scheduler"]["init_pg_lrs"])) for k, t in phases.items()
               if isinstance(t, Mapping) and isinstance(t.get("new_lr_scheduler"), Mapping)
               and isinstance(t["new_lr_scheduler"].get("init_pg_lrs"), list)]
    fits_two = all(n in (2 * k, 2 * k + 2) for k, n in lengths)
    fits_one = all(n in (k, k + 1) for k, n in lengths)
    return 2 if fits_two and not fits_one else 1


def _transition_epoch(table: Any) -> int | None:
    """The epoch the phase after ``table`` starts at, when its transition is epoch-driven."""
    epoch = table.get("max_transition_epoch") if isinstance(table, Mapping) else None
    if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0:
        return epoch
    return None


_LIGHTNING_CONFIG_KEYS = frozenset({"trainer", "model", "data", "seed_everything", "ckpt_path"})


def _lightning_config_hint(raw: Mapping[str, Any]) -> str:
    """What to import instead of a Lightning CLI config, from its FinetuningScheduler callback."""
    trainer = raw.get("trainer")
    callbacks = trainer.get("callbacks") if isinstance(trainer, Mapping) else None
    for callback in callbacks if isinstance(callbacks, list) else []:
        if (isinstance(callback, Mapping)
                and str(callback.get("class_path", "")).endswith("FinetuningScheduler")):
            init_args = callback.get("init_args") or {}
            if init_args.get("ft_schedule"):
                return f"import its ft_schedule file instead: {init_args['ft_schedule']}"
            return ("FTS generates this run's schedule: use a generated schedule ([phases] "
                    "blocks_per_phase, base_max_lr = "
                    f"{init_args.get('base_max_lr', FTS_BASE_MAX_LR)}, reinit_optimizer / "
                    "reinit_lr_scheduler for FTS's reinit_optim_cfg / reinit_lr_cfg)")
    return "give the FTS schedule file (phase numbers mapped to params, ...)"


def convert_fts_schedule(
    raw: Any, *, source: str, problems: Problems, steps_per_epoch: int | None = None,
    prefix: str | None = None, base_max_lr: float = FTS_BASE_MAX_LR,
    groups_per_phase: int | None = None, param_names: Collection[str] | None = None,
) -> FtsImport:
    """Convert a parsed FTS schedule (``{0: {params: [...], ...}, ...}``); errors go into
    ``problems``. ``groups_per_phase`` None infers it from the ``init_pg_lrs`` lengths.
    ``param_names``: the model's parameter names as the patterns name them (after
    ``prefix``), to convert patterns exactly and report FTS's looser matches."""
    if not isinstance(raw, Mapping) or not raw:
        problems.error(source, None, "(schedule)", "not an FTS schedule: expected a mapping of "
                       "phase numbers to phases")
        return FtsImport({})
    if _LIGHTNING_CONFIG_KEYS.intersection(map(str, raw)):
        problems.error(source, None, "(schedule)", "a Lightning CLI config, not an FTS schedule",
                       _lightning_config_hint(raw))
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
    names = None if param_names is None else tuple(dict.fromkeys(param_names))
    conv = _Converter(source, steps_per_epoch, prefix, base_max_lr, groups_per_phase, names,
                      problems)
    if groups_per_phase == 2:
        conv.notes.append(
            "init_pg_lrs read as 2 FTS param groups (decay, no_decay) per phase. FTS gives the "
            "no_decay group (the parameters the LightningModule's no_decay list names, e.g. "
            "biases and LayerNorm weights) weight_decay = 0; here each phase is one param group, "
            "so they decay with the optimizer's weight_decay like the rest of their phase "
            "(weight_decay = 0 leaves every parameter undecayed)")

    out: dict[str, dict[str, Any]] = {}
    joining: list[int] = []
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
            out[str(k)] = phase
            continue
        try:
            phase_lr = base_max_lr if lr is None else float(lr)
        except (TypeError, ValueError):
            problems.error(source, k, "lr", f"expected a number, got {lr!r}")
            phase_lr = base_max_lr
        if "new_optimizer" in table:
            optimizer = conv.optimizer(k, table["new_optimizer"])
            if optimizer is not None:
                phase["new_optimizer"] = optimizer
        sets_new_group = False
        if "new_lr_scheduler" in table:
            # FTS runs the final phase to max_epochs, whatever its max_transition_epoch says.
            end = None if k == max(phases) else _transition_epoch(table)
            scheduler, sets_new_group = conv.lr_scheduler(
                k, table["new_lr_scheduler"], phase_lr, _transition_epoch(phases.get(k - 1)), end)
            if scheduler is not None:
                phase["new_lr_scheduler"] = scheduler
        else:
            joining.append(k)
        if sets_new_group:
            given = phase["new_lr_scheduler"]["init_pg_lrs"][-1]
            if lr is not None and phase_lr != given:
                conv.notes.append(f"phase {k}: lr {lr} dropped: init_pg_lrs gives the new group "
                                  f"{given}, which wins in FTS too")
        else:
            phase["lr"] = phase_lr
            if lr is None:
                conv.notes.append(f"phase {k}: lr = {phase_lr} (FTS's base_max_lr, "
                                  "--base-max-lr; [phases] base_max_lr sets it for generated "
                                  "schedules)")
        out[str(k)] = {key: phase[key] for key in
                       ("params", "max_transition_step", "lr", "new_optimizer",
                        "new_lr_scheduler") if key in phase}
    if joining:
        conv.notes.append(
            f"phase(s) {', '.join(map(str, joining))}: the new group joins the running LR "
            "scheduler; with a lambda schedule (LambdaLR, MultiplicativeLR, phase 0's "
            "warmup/decay) FTS's default apply_lambdas_new_pgs = false starts it at its lr for "
            "one step, [phases] apply_lambdas_new_pgs = true (the default here) applies the "
            "lambda at once; set it to FTS's value")
    return FtsImport(out, conv.notes)


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    """A YAML mapping names a key twice (FTS refuses such a schedule file)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing repeated mapping keys instead of keeping the last."""


def _unique_key_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    first_line: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = key in first_line
        except TypeError:
            continue  # an unhashable key: construct_mapping reports it
        if seen:
            raise _DuplicateKeyError(
                f"while reading the mapping that starts on line {node.start_mark.line + 1}", None,
                f"duplicate key {key!r} (first on line {first_line[key] + 1})",
                key_node.start_mark)
        first_line[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                 _unique_key_mapping)


def load_fts_yaml(path: str | Path, problems: Problems) -> Any:
    """Parse an FTS schedule file; a missing or malformed file, or one that repeats a key (which
    FTS refuses), is reported into ``problems``."""
    try:
        with open(path) as f:
            return yaml.load(f, Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        problems.error(str(path), None, "(file)", "file not found")
    except _DuplicateKeyError as e:
        problems.error(str(path), None, "(file)", f"{e.problem} on line "
                       f"{e.problem_mark.line + 1}: FTS refuses such a file",
                       "keep one of them (PyYAML alone would silently keep the last)")
    except yaml.YAMLError as e:
        problems.error(str(path), None, "(file)", f"not valid YAML: {e}")
    return None
