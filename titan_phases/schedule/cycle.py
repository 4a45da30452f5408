"""Generate a block-cyclic schedule (``[phases.cycle]``): block-coordinate fine-tuning.

Each phase trains ``blocks_per_phase`` of the model's blocks (:mod:`.blocks`) for
``steps_per_phase`` steps, plus the ``always_train`` parameters; the next phase freezes the
blocks that leave and thaws the ones that enter. The result is an ordinary schedule of phases
with ``params`` and ``freeze`` (:class:`~.schema.Phase`), validated and run like a written one,
and ``titan-phases generate`` writes it out for editing.

Orders (the blocks of a pass, then cut into phases of ``blocks_per_phase`` neighbours):

* ``descending`` / ``ascending``: the blocks top-down / bottom-up, every pass the same;
* ``random``: a new permutation every pass, drawn from a ``random.Random(seed)`` (BAdam);
* ``sampled``: every phase draws its blocks uniformly without replacement (LISA); a "pass" is
  then as many phases as a pass of the other orders.

The generator's state at the start of each pass is part of the phase's :class:`CyclePosition`,
which the phase controller saves with every checkpoint, so a resumed job checks that it goes on
with the same draws.

**Limitations**
Blocks are numbered children of one container (``layers.N``); parameters outside every block
train only if ``always_train`` names them. A block drawn again right after it trained (possible
with ``random`` at a pass boundary and with ``sampled``) simply keeps training, with its state.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from titan_phases.config.job_config import Cycle

from .blocks import block_of, block_pattern
from .errors import Problems
from .schema import Phase, PhaseSchedule

__all__ = ["CyclePosition", "GeneratedCycle", "generate_cycle"]


@dataclass(frozen=True)
class CyclePosition:
    """Where a phase sits in the cycle."""

    pass_index: int
    position: int
    """The phase's place within its pass, from 0."""
    blocks: tuple[int, ...]
    """The blocks it trains, by number."""
    generator_state: tuple | None
    """The order generator's state (``random.Random.getstate()``) at the start of the pass;
    None for the fixed orders."""

    def as_dict(self) -> dict[str, object]:
        """As the phase controller saves it (JSON)."""
        return {"pass": self.pass_index, "position": self.position, "blocks": list(self.blocks),
                "generator_state": json.loads(json.dumps(self.generator_state))}


@dataclass(frozen=True)
class GeneratedCycle:
    schedule: PhaseSchedule
    positions: tuple[CyclePosition, ...]
    """One per phase of ``schedule``."""


def _blocks(names: Sequence[str]) -> dict[tuple[str, int], list[str]]:
    blocks: dict[tuple[str, int], list[str]] = {}
    for name in names:
        block = block_of(name)
        if block is not None:
            blocks.setdefault(block, []).append(name)
    return blocks


def _pass_orders(
    cycle: Cycle, n_blocks: int, n_passes: int
) -> list[tuple[list[list[int]], tuple | None]]:
    """Per pass: its phases' blocks (positions in model order), and the generator's state at
    its start."""
    per_phase = cycle.blocks_per_phase
    phases_per_pass = math.ceil(n_blocks / per_phase)
    generator = random.Random(cycle.seed)
    passes = []
    for _ in range(n_passes):
        state = None if cycle.order in ("descending", "ascending") else generator.getstate()
        if cycle.order == "sampled":
            phases = [sorted(generator.sample(range(n_blocks), per_phase))
                      for _ in range(phases_per_pass)]
        else:
            order = list(range(n_blocks))
            if cycle.order == "descending":
                order.reverse()
            elif cycle.order == "random":
                generator.shuffle(order)
            phases = [sorted(order[i:i + per_phase]) for i in range(0, n_blocks, per_phase)]
        passes.append((phases, state))
    return passes


def _check(cycle: Cycle, n_blocks: int, source: str, problems: Problems) -> bool:
    ok = True
    if n_blocks < 2:
        problems.error(source, None, "phases.cycle.enable",
                       f"the model has {n_blocks} block(s); a cycle needs at least 2",
                       "train such a model with a written or generated thawing schedule")
        ok = False
    for key, value, low in (("blocks_per_phase", cycle.blocks_per_phase, 1),
                            ("steps_per_phase", cycle.steps_per_phase, 1),
                            ("passes", cycle.passes, 0)):
        if value < low:
            problems.error(source, None, f"phases.cycle.{key}", f"must be >= {low}, got {value}")
            ok = False
    if n_blocks >= 2 and cycle.blocks_per_phase >= n_blocks:
        problems.error(source, None, "phases.cycle.blocks_per_phase",
                       f"{cycle.blocks_per_phase} of the model's {n_blocks} blocks leaves none "
                       "to cycle through",
                       f"use at most {n_blocks - 1}, or train every block with a thawing schedule")
        ok = False
    if not math.isfinite(cycle.lr) or cycle.lr < 0:
        problems.error(source, None, "phases.cycle.lr",
                       f"must be > 0, or 0 to follow the optimizer's lr; got {cycle.lr!r}")
        ok = False
    return ok


def generate_cycle(
    param_names: Sequence[str],
    cycle: Cycle,
    always_train: Sequence[str],
    training_steps: int,
    source: str,
    problems: Problems,
) -> GeneratedCycle | None:
    """The cycle's schedule for a model with ``param_names`` (canonical, model order).

    ``always_train``: the canonical names ``cycle.always_train`` selects (matched by the
    caller). Reports bad settings into ``problems`` and returns None when no schedule can be
    built; warns when ``passes`` and ``training.steps`` do not end together.
    """
    blocks = _blocks(param_names)
    keys = list(blocks)
    if not _check(cycle, len(keys), source, problems):
        return None
    overlap = sorted({block_of(name) for name in always_train} - {None})
    if overlap:
        shown = ", ".join(f"{c}.{i}" for c, i in overlap)
        problems.error(source, None, "phases.cycle.always_train",
                       f"selects parameters of block(s) {shown}, which the cycle trains in turn",
                       "name only parameters outside the blocks (head, norms, embeddings)")
        return None
    phases_per_pass = math.ceil(len(keys) / cycle.blocks_per_phase)
    K = cycle.steps_per_phase
    fitting = math.ceil(training_steps / K)
    n_phases = fitting if cycle.passes == 0 else cycle.passes * phases_per_pass
    if cycle.passes and n_phases > fitting:
        problems.warn(source, None, "phases.cycle.passes",
                      f"{cycle.passes} pass(es) of {phases_per_pass} phases of {K} steps need "
                      f"{n_phases * K} steps; training.steps = {training_steps} ends the cycle "
                      f"in phase {fitting - 1}",
                      f"raise training.steps to {n_phases * K} for every pass")
        n_phases = fitting
    elif cycle.passes and n_phases * K < training_steps:
        problems.warn(source, None, "phases.cycle.passes",
                      f"{cycle.passes} pass(es) end after step {n_phases * K}; the last phase "
                      f"trains on to training.steps = {training_steps}",
                      "raise phases.cycle.passes, or set it to 0 to cycle until the end")
    passes = _pass_orders(cycle, len(keys), math.ceil(n_phases / phases_per_pass))
    positions = [
        CyclePosition(p, j, tuple(keys[b][1] for b in active), state)
        for p, (pass_phases, state) in enumerate(passes)
        for j, active in enumerate(pass_phases)
    ][:n_phases]

    def patterns(numbers: set[int]) -> tuple[str, ...]:
        containers: dict[str, list[int]] = {}
        for container, index in keys:
            if index in numbers:
                containers.setdefault(container, []).append(index)
        return tuple(block_pattern(c, indices) for c, indices in containers.items())

    phases = []
    before: set[int] = set()
    for k, position in enumerate(positions):
        active = set(position.blocks)
        thawed = patterns(active - before)
        phases.append(Phase(
            index=k,
            params=(*always_train, *thawed) if k == 0 else thawed,
            max_transition_step=(k + 1) * K if k < n_phases - 1 else None,
            lr=cycle.lr if k > 0 and cycle.lr > 0 and thawed else None,
            freeze=patterns(before - active),
        ))
        before = active
    return GeneratedCycle(PhaseSchedule(tuple(phases), source), tuple(positions))
