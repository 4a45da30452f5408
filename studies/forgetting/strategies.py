"""The fine-tuning strategies compared: which parameters train when.

Every strategy runs the same job (``train_configs/debug_model.toml``, model ``llama3_phases``)
with the same token budget; they differ only in the phase schedule:

* ``full``: one phase, every parameter (plain full fine-tuning);
* ``head_only``: one phase, the top block + final norm + output head; nothing else ever thaws;
* ``default``: the default job's three phases, its transition steps (and the last phase's
  cosine ``T_max``) scaled from the default job's ``training.steps`` to the budget;
* ``generated``: no schedule: the one titan_phases generates (head and final norm, then
  ``GENERATED_BLOCKS_PER_PHASE`` blocks per phase top-down, embeddings last, ``training.steps``
  split evenly);
* ``badam``: a block-cyclic schedule (``[phases.cycle]``) like BAdam's defaults: one block per
  phase, top-down, every block the same number of steps, about :data:`CYCLE_PASSES` passes in
  the budget; the head, final norm and embeddings never train (BAdam trains only the blocks
  unless told to include the head or embeddings);
* ``badam_bf16``: ``badam`` with every weight stored in bf16 and fp32 masters and optimizer
  state for the block that trains (``--training.dtype bfloat16 --phases.fp32_master_weights``).
  It still computes in fp32: on 2 ranks FSDP2 casts the bf16 weights to the job's
  ``training.mixed_precision_param`` (``float32`` in the default job) for forward and backward;
* ``lisa``: a block-cyclic schedule like LISA's: :data:`LISA_BLOCKS_PER_PHASE` blocks drawn at
  random every phase (the cycle's own seed, 0, whatever the data order), the embeddings, head
  and final norm trained throughout.

The cycles' phases last ``budget // (CYCLE_PASSES x blocks)`` steps (at least 1) and the cycle
runs until the budget ends, so every strategy keeps the same token budget.

Every strategy runs with ``transition_mode = "step"``: the default job's ``auto`` would let a
validation plateau end a phase, or the whole run, early, and the budget would differ.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from titan_phases.config.toml_writer import dumps

DEFAULT_JOB = Path(__file__).resolve().parents[2] / "train_configs" / "debug_model.toml"
HEAD_ONLY_PARAMS = ("output.weight", "norm.weight", r"layers\.5\..+")
GENERATED_BLOCKS_PER_PHASE = 2
CYCLE_PASSES = 2
"""Passes over the blocks the BAdam-like cycle makes in the full study's budget."""
LISA_BLOCKS_PER_PHASE = 2
LISA_ALWAYS_TRAIN = ("tok_embeddings.weight", "output.weight", "norm.weight")
BF16_MASTERS_ARGS = ("--training.dtype", "bfloat16", "--phases.fp32_master_weights")


@dataclass(frozen=True)
class Strategy:
    """A fine-tuning strategy.

    Attributes:
        name: short identifier (file and folder names, results.json keys).
        description: one line for the report.
        schedule: the schedule file's tables (``{"0": {...}, ...}``); None: generated.
        args: further job arguments (the generated schedule's or the cycle's settings).
        storage_dtype: the dtype the job stores its weights in: ``"bfloat16"`` adds
            :data:`BF16_MASTERS_ARGS` to the job; the study evaluates its checkpoints with the
            weights rounded to it, as the job computes.
        variant_of: the strategy this one repeats with another ``storage_dtype`` (the report
            compares the two).
    """

    name: str
    description: str
    schedule: dict[str, Any] | None
    args: tuple[str, ...] = ()
    storage_dtype: str = "float32"
    variant_of: str | None = None

    def job_args(self, schedule_file: Path) -> list[str]:
        """The strategy's job arguments; ``schedule_file`` is where :meth:`write` puts it."""
        storage = list(BF16_MASTERS_ARGS) if self.storage_dtype == "bfloat16" else []
        if self.schedule is None:
            return [*self.args, *storage]
        return ["--phases.schedule_file", str(schedule_file), *self.args, *storage]

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


def model_blocks() -> int:
    """Transformer blocks of the default job's model (its flavor's ``n_layers``)."""
    from torchtitan.protocols.train_spec import get_train_spec

    from titan_phases.train_spec import register_train_specs

    register_train_specs()
    model = default_job()["model"]
    return get_train_spec(model["name"]).model_args[model["flavor"]].n_layers


def cycle_steps_per_phase(steps: int, blocks: int) -> int:
    """Steps per phase of the cycles: ``CYCLE_PASSES`` one-block passes in ``steps``, or one
    step per phase when the budget is shorter than that."""
    return max(1, steps // (CYCLE_PASSES * blocks))


def cycle_args(order: str, blocks_per_phase: int, steps_per_phase: int,
               always_train: tuple[str, ...]) -> tuple[str, ...]:
    """The job arguments of a cycle that runs until ``training.steps`` (``passes = 0``)."""
    args = ("--phases.cycle.enable", "--phases.cycle.order", order,
            "--phases.cycle.blocks_per_phase", str(blocks_per_phase),
            "--phases.cycle.steps_per_phase", str(steps_per_phase),
            "--phases.cycle.passes", "0")
    if always_train:
        args += ("--phases.cycle.always_train", ",".join(always_train))
    return args


def strategies(steps: int, blocks: int | None = None) -> list[Strategy]:
    """Every strategy of the study for a budget of ``steps`` fine-tuning steps; ``blocks``: the
    model's transformer blocks (None: :func:`model_blocks`)."""
    job = default_job()
    default = scale_schedule(job["phases"]["schedule"], job["training"]["steps"], steps)
    blocks = model_blocks() if blocks is None else blocks
    k = cycle_steps_per_phase(steps, blocks)
    badam = cycle_args("descending", 1, k, ())
    each = f"{k} step{'' if k == 1 else 's'} each"
    badam_description = (f"block-cyclic like BAdam: 1 block per phase top-down, {each}; head, "
                         "final norm, embeddings frozen")
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
        Strategy("badam", badam_description, None, badam),
        Strategy("badam_bf16", f"{badam_description}; bf16 weights, fp32 masters",
                 None, badam, storage_dtype="bfloat16", variant_of="badam"),
        Strategy("lisa",
                 f"block-cyclic like LISA: {LISA_BLOCKS_PER_PHASE} random blocks per phase, "
                 f"{each}; embeddings, head, final norm always",
                 None, cycle_args("sampled", LISA_BLOCKS_PER_PHASE, k, LISA_ALWAYS_TRAIN)),
    ]
