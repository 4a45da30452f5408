"""The fine-tuning strategies compared: which parameters train when.

Every strategy runs the same job (``train_configs/debug_model.toml``, model ``llama3_phases``)
with the same token budget; they differ only in the phase schedule:

* ``full``: one phase, every parameter (plain full fine-tuning);
* ``head_only``: one phase, the top block + final norm + output head; nothing else ever thaws;
* ``default``: the default job's three phases, its transition steps (and the last phase's
  cosine ``T_max``) scaled from the default job's ``training.steps`` to the budget;
* ``generated``: no schedule: the one titan_phases generates (head and final norm, then
  ``GENERATED_BLOCKS_PER_PHASE`` blocks per phase top-down, embeddings last, ``training.steps``
  split evenly).

Every strategy runs with ``transition_mode = "step"``: the default job's ``auto`` would let a
validation plateau end a phase, or the whole run, early, and the budget would differ.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from titan_phases.schedule.toml_writer import dumps

DEFAULT_JOB = Path(__file__).resolve().parents[2] / "train_configs" / "debug_model.toml"
HEAD_ONLY_PARAMS = ("output.weight", "norm.weight", r"layers\.5\..+")
GENERATED_BLOCKS_PER_PHASE = 2


@dataclass(frozen=True)
class Strategy:
    """A fine-tuning strategy.

    Attributes:
        name: short identifier (file and folder names, results.json keys).
        description: one line for the report.
        schedule: the schedule file's tables (``{"0": {...}, ...}``); None: generated.
        args: further job arguments (the generated schedule's settings).
    """

    name: str
    description: str
    schedule: dict[str, Any] | None
    args: tuple[str, ...] = ()

    def job_args(self, schedule_file: Path) -> list[str]:
        """The strategy's job arguments; ``schedule_file`` is where :meth:`write` puts it."""
        if self.schedule is None:
            return list(self.args)
        return ["--phases.schedule_file", str(schedule_file), *self.args]

    def write(self, schedule_file: Path) -> None:
        """Write the schedule file (nothing for a generated schedule)."""
        if self.schedule is not None:
            schedule_file.parent.mkdir(parents=True, exist_ok=True)
            schedule_file.write_text(dumps(self.schedule, header=f"strategy {self.name}: "
                                                                 f"{self.description}"))


def default_job() -> dict[str, Any]:
    """The default job config's TOML tables."""
    return tomllib.loads(DEFAULT_JOB.read_text())


def scale_schedule(schedule: dict[str, Any], from_steps: int, to_steps: int) -> dict[str, Any]:
    """``schedule`` with every ``max_transition_step`` and ``T_max`` scaled to ``to_steps``.

    Raises:
        ValueError: the scaled transition steps are not increasing within ``1..to_steps - 1``.
    """
    def scaled(step: int) -> int:
        return max(1, round(step * to_steps / from_steps))

    result: dict[str, Any] = {}
    ends = []
    for key, phase in schedule.items():
        phase = dict(phase)
        if "max_transition_step" in phase:
            phase["max_transition_step"] = scaled(phase["max_transition_step"])
            ends.append(phase["max_transition_step"])
        scheduler = phase.get("new_lr_scheduler")
        if scheduler and "T_max" in scheduler.get("init_args", {}):
            init_args = {**scheduler["init_args"], "T_max": scaled(scheduler["init_args"]["T_max"])}
            phase["new_lr_scheduler"] = {**scheduler, "init_args": init_args}
        result[key] = phase
    if ends != sorted(set(ends)) or (ends and ends[-1] >= to_steps):
        raise ValueError(f"{to_steps} steps are too few for the schedule's phases "
                         f"(scaled transition steps {ends})")
    return result


def strategies(steps: int) -> list[Strategy]:
    """Every strategy of the study for a budget of ``steps`` fine-tuning steps."""
    job = default_job()
    default = scale_schedule(job["phases"]["schedule"], job["training"]["steps"], steps)
    return [
        Strategy("full", "one phase, every parameter (full fine-tuning)",
                 {"0": {"params": [".*"]}}),
        Strategy("head_only", "one phase: top block, final norm, output head",
                 {"0": {"params": list(HEAD_ONLY_PARAMS)}}),
        Strategy("default",
                 "the default job's 3 phases: head + top block; blocks 4 and 3; the rest",
                 default),
        Strategy("generated",
                 f"generated: head + norm, then {GENERATED_BLOCKS_PER_PHASE} blocks per phase "
                 "top-down, embeddings last",
                 None, ("--phases.blocks_per_phase", str(GENERATED_BLOCKS_PER_PHASE))),
    ]
