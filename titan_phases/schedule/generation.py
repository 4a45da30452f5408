"""Generate a schedule from the model's structure (FTS's implicit mode).

Phase 0 thaws what comes after the transformer blocks in registration order (output head, final
norm), the next phases thaw the blocks from the top down, ``blocks_per_phase`` at a time, and
the last phase thaws what comes before the blocks (embeddings). FTS's generator thaws two
parameter tensors per phase instead, which splits blocks across phases.

Blocks are what :mod:`titan_phases.schedule.blocks` says they are. Modules registered between two
blocks, or a model without numbered blocks, are handled by treating each such top-level module
as one unit, thawed in reverse registration order like a block.

Tied weights (one parameter under two names, e.g. qwen3's small flavors, whose output head is
``tok_embeddings.weight``; ``named_parameters()`` reports it once, by the name registered
first) are placed by every name they have: the parameter is thawed in the first phase that one
of its places falls in, which puts a head tied to the embeddings into phase 0, and a warning
says so. A parameter inside a block is thawed with its block, whatever its other names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .blocks import block_of, block_pattern
from .errors import Problems
from .schema import LRSchedulerInit, OptimizerInit, Phase, PhaseSchedule, running_phase_count


@dataclass
class _Unit:
    prefix: str  # block container path ("layers") or top-level module name
    index: int | None  # block number, None for a plain module
    names: list[str]


def _units(names: Sequence[str]) -> list[_Unit]:
    units: dict[tuple[str, int | None], _Unit] = {}
    for name in names:
        key: tuple[str, int | None] = block_of(name) or (name.split(".")[0], None)
        units.setdefault(key, _Unit(key[0], key[1], [])).names.append(name)
    return list(units.values())


def _patterns(group: Sequence[_Unit]) -> tuple[str, ...]:
    """One regex per run of blocks of the same container, exact names for everything else."""
    patterns: list[str] = []
    i = 0
    while i < len(group):
        if group[i].index is None:
            patterns.extend(group[i].names)
            i += 1
            continue
        j = i + 1
        while j < len(group) and group[j].index is not None and group[j].prefix == group[i].prefix:
            j += 1
        patterns.append(block_pattern(group[i].prefix, [b.index for b in group[i:j]]))
        i = j
    return tuple(patterns)


def _untie(groups: list[list[_Unit]], tied: Mapping[str, str]) -> list[list[_Unit]]:
    """``groups`` with each tied name outside the blocks replaced by the parameter's own name,
    kept only in the first unit that has it (in thawing order); units and groups left empty are
    dropped. A block's regex selects its own parameters, so a parameter inside a block stays
    there."""
    seen: set[str] = set()
    untied = []
    for group in groups:
        units = []
        for unit in group:
            names = unit.names
            if unit.index is None:
                names = [n for n in dict.fromkeys(tied.get(n, n) for n in names)
                         if n not in seen and block_of(n) is None]
            seen.update(names)
            if names:
                units.append(_Unit(unit.prefix, unit.index, names))
        if units:
            untied.append(units)
    return untied


def phase_groups(
    names: Sequence[str], blocks_per_phase: int, tied: Mapping[str, str] | None = None
) -> list[list[str]]:
    """The generated phases as pattern lists (see the module docstring for the order).

    ``names`` are the model's canonical parameter names in registration order; a tied
    parameter's other names (``tied``'s keys, mapped to the name ``named_parameters()``
    reports) may appear among them at their own places, as
    ``named_parameters(remove_duplicate=False)`` lists them.
    """
    units = _units(names)
    block_positions = [i for i, u in enumerate(units) if u.index is not None]
    if block_positions:
        first, last = block_positions[0], block_positions[-1]
        head, middle, embeddings = units[last + 1:], units[first:last + 1], units[:first]
    else:
        head, middle, embeddings = [], units, []
    middle = middle[::-1]
    groups = [head] if head else []
    groups += [middle[i:i + blocks_per_phase] for i in range(0, len(middle), blocks_per_phase)]
    if embeddings:
        groups.append(embeddings)
    return [list(_patterns(g)) for g in _untie(groups, tied or {})]


def transition_steps(
    n_phases: int, n_running: int, training_steps: int, steps_per_phase: int
) -> list[int | None]:
    """``max_transition_step`` for each generated phase: the first ``n_running - 1`` phases end
    at multiples of ``steps_per_phase`` (or of ``training_steps / n_running`` when it is 0); the
    last running phase and the phases beyond ``max_depth`` get none."""
    steps: list[int | None] = [None] * n_phases
    for k in range(n_running - 1):
        if steps_per_phase > 0:
            steps[k] = (k + 1) * steps_per_phase
        else:
            steps[k] = round((k + 1) * training_steps / n_running)
    return steps


def generate_schedule(
    param_names: Sequence[str],
    *,
    blocks_per_phase: int,
    max_depth: int,
    transition_mode: str,
    training_steps: int,
    steps_per_phase: int,
    reinit_optimizer: OptimizerInit | None,
    reinit_lr_scheduler: LRSchedulerInit | None,
    base_max_lr: float = 0.0,
    tied: Mapping[str, str] | None = None,
    source: str,
    problems: Problems,
) -> PhaseSchedule:
    """Build the implicit schedule for a model with ``param_names`` (canonical, model order;
    with tied names, see :func:`phase_groups`).

    Reinit configs are put into every phase >= 1, and so is ``lr = base_max_lr`` when it is
    set (> 0; FTS's ``base_max_lr``). Transition steps are valid by construction; when
    ``training.steps`` is too short to give each running phase a step, that is reported into
    ``problems``. Each tied parameter gets a warning naming its names and its phase.
    """
    groups = phase_groups(param_names, blocks_per_phase, tied)
    for alias, name in (tied or {}).items():
        k = next((k for k, g in enumerate(groups) if name in g), None)
        if k is not None:
            problems.warn(
                source, k, "params",
                f"{alias} is tied to {name} (one parameter under both names): thawed here, in "
                f"the first phase either name falls in, as {name}",
                f"name it {name} in a written schedule",
            )
    n_running = running_phase_count(len(groups), max_depth)
    steps: list[int | None] = [None] * len(groups)
    if transition_mode != "plateau":
        steps = transition_steps(len(groups), n_running, training_steps, steps_per_phase)
        bounds = [0, *steps[: n_running - 1], training_steps]
        if any(a >= b for a, b in zip(bounds, bounds[1:])):
            problems.error(
                source, None, "training.steps",
                f"{training_steps} steps cannot hold {n_running} generated phases"
                + (f" of {steps_per_phase} steps" if steps_per_phase else ""),
                "raise training.steps, lower phases.steps_per_phase or phases.max_depth, or "
                "raise phases.blocks_per_phase",
            )
    phases = tuple(
        Phase(
            index=k,
            params=tuple(patterns),
            max_transition_step=steps[k],
            lr=base_max_lr if k > 0 and base_max_lr > 0 else None,
            new_optimizer=reinit_optimizer if k > 0 else None,
            new_lr_scheduler=reinit_lr_scheduler if k > 0 else None,
        )
        for k, patterns in enumerate(groups)
    )
    return PhaseSchedule(phases, source)
