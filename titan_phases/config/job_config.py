"""The ``[phases]`` and ``[pretrained]`` sections of a torchtitan job config.

Use it as torchtitan's custom config module::

    [job]
    custom_config_module = "titan_phases.config.job_config"

(the ``titan-phases`` CLI and :func:`titan_phases.config.parse_job_config` add it when a job
config does not name one). Every field is also a CLI flag, e.g. ``--phases.lr_scale 0.1``.

The fields only describe the run; :func:`titan_phases.schedule.load_and_validate` checks them,
together with the schedule, and reports every problem at once. Nothing here validates in
``__post_init__``: an exception there would stop at the first problem. torchtitan's config
manager passes TOML values through unchecked (a wrong ``Literal`` only triggers a tyro
warning); :func:`titan_phases.config.parse_job_config` reports those of the wrong type.
"""

# No ``from __future__ import annotations`` here: torchtitan's ConfigManager checks
# ``dataclasses.is_dataclass(field.type)`` to turn the ``[phases]`` table into a ``Phases``
# object, which fails when annotations are strings.

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class Cycle:
    """A generated block-cyclic schedule (block-coordinate fine-tuning, as BAdam and LISA do):
    ``blocks_per_phase`` transformer blocks train for ``steps_per_phase`` steps, then the next
    blocks take over and the ones that leave stop training, their optimizer state freed. Full
    fine-tuning of every block, with the optimizer state of a few blocks at a time.
    """

    enable: bool = False
    """Generate the schedule as a cycle over the model's blocks (no schedule file or inline
    schedule, and none of the other generated-schedule settings of ``[phases]``)."""

    order: Literal["descending", "ascending", "random", "sampled"] = "descending"
    """
    Which blocks each phase trains:
    - 'descending' (BAdam's default) / 'ascending': the blocks in turn, top-down / bottom-up,
      ``blocks_per_phase`` neighbouring blocks at a time; every pass the same order;
    - 'random': a new random permutation of the blocks every pass (BAdam's 'random');
    - 'sampled': every phase ``blocks_per_phase`` blocks drawn uniformly without replacement,
      independently of the phases before (LISA).
    """

    blocks_per_phase: int = 1
    """Blocks that train together in a phase (BAdam: 1; LISA: its ``n_layers``)."""

    steps_per_phase: int = 50
    """Steps each phase trains before the next one starts (BAdam's ``switch_block_every``, LISA's
    ``interval_steps``)."""

    passes: int = 0
    """Passes over the blocks (a pass: every block once; for 'sampled', as many phases as a
    pass of the other orders has). 0: as many phases as ``training.steps`` holds."""

    always_train: list[str] = field(default_factory=list)
    """Parameters that train in every phase, names and/or regexes as in a phase's ``params``
    (e.g. ``["output.weight", "norm.weight"]``; LISA also trains ``tok_embeddings.weight``).
    They keep their optimizer state throughout. Parameters outside every block and not listed
    here stay frozen, as in BAdam."""

    seed: int = 0
    """Seed of the 'random' and 'sampled' orders; the generator's state is saved with every
    checkpoint, so a resumed run goes on with the same blocks."""

    lr: float = 0.0
    """The lr of the param group each entering block joins with. 0: the current optimizer's lr
    (``[optimizer] lr``), following the LR schedule from the current step."""


@dataclass
class Phases:
    schedule_file: str = ""
    """
    Path to a phase schedule TOML file (format: docs/schedule.md). A relative path is looked up
    first in the directory of the job config file, then in the current working directory.
    Not together with an inline ``[phases.schedule]`` in the TOML; given on the command line it
    replaces the TOML's inline schedule, with a warning. When neither is given, a schedule is
    generated from the model's structure (see ``blocks_per_phase``).
    """

    schedule: dict[str, Any] = field(default_factory=dict)
    """
    The schedule inline, in the same format as a schedule file, with every phase table under
    ``phases.schedule``: ``[phases.schedule.0]``, ``[phases.schedule.1.new_optimizer]``, ...
    Values written in the TOML can be overridden on the command line, e.g.
    ``--phases.schedule.1.lr 2e-5``; phases or keys that are not in the TOML cannot be added there.
    """

    lr_scale: float = 1.0
    """
    Global factor applied to every initial learning rate: ``[optimizer] lr`` (phase 0's group),
    each phase's ``lr``, ``init_pg_lrs`` and the ``lr`` in ``new_optimizer.init_args``. LR
    scheduler ``init_args`` (e.g. ``eta_min``) are used as written.
    """

    max_depth: int = -1
    """
    Deepest phase to run: phases ``0..max_depth`` are thawed in turn, later phases are dropped and
    their parameters stay frozen (validation lists them). -1 runs the whole schedule. Applies to
    explicit and generated schedules.
    """

    blocks_per_phase: int = 1
    """
    Generated schedules only: transformer blocks thawed per phase. Phase 0 thaws the output head
    and final norm, the following phases the blocks from the top down, the last one the
    embeddings.
    """

    steps_per_phase: int = 0
    """
    Generated schedules only (``transition_mode`` step or both): phase k ends after step
    ``(k + 1) * steps_per_phase``. 0 splits ``training.steps`` evenly across the phases.
    """

    reinit_optimizer: dict[str, Any] = field(default_factory=dict)
    """
    Generated schedules only: a new optimizer built at every transition, as
    ``{class_path = "torch.optim.SGD", init_args = {lr = 1e-5, momentum = 0.9}}``.
    An error with an explicit schedule: put ``new_optimizer`` into its phases instead.
    """

    reinit_lr_scheduler: dict[str, Any] = field(default_factory=dict)
    """
    Generated schedules only: a new LR scheduler built at every transition, as
    ``{class_path = "StepLR", init_args = {step_size = 100}}``, optionally with
    ``use_current_optimizer_pg_lrs = true``.
    ``init_pg_lrs`` is not allowed here (the number of param groups grows with each phase).
    """

    base_max_lr: float = 0.0
    """
    Generated schedules only: the ``lr`` of the param group each phase >= 1 adds (FTS's
    ``base_max_lr``, 1e-5 by default there). 0 leaves it unset: such a group then takes the
    current optimizer's lr (``[optimizer] lr``, or the ``lr`` of ``reinit_optimizer``).
    ``lr_scale`` applies to it like to every initial lr.
    """

    apply_lambdas_new_pgs: bool = True
    """
    FTS's ``apply_lambdas_new_pgs``, for a param group that joins a running LR scheduler (a
    phase without ``new_lr_scheduler``). True: when that scheduler has lr lambdas (LambdaLR,
    MultiplicativeLR and torchtitan's warmup-stable-decay, which is phase 0's), the group starts
    at its lr times the current lambda value, as if it had followed the lambda from step 1
    (for MultiplicativeLR: times the current step's factor only, as in FTS). False (FTS's
    default): it starts at its lr and the lambda applies from the next step on. Other schedulers
    are unaffected either way: the group starts at its lr and the scheduler goes on from there
    (a StepLR halves it at its next step boundary). Unlike FTS, True is the default here: phase
    0 always runs a lambda schedule, and True keeps a new group on its warmup/decay from its
    first step. Set false to reproduce FTS runs made with FTS's default.
    """

    allow_untested: bool = False
    """
    Allow LR scheduler classes outside the tested list (LambdaLR, MultiplicativeLR, StepLR,
    MultiStepLR, ExponentialLR, CosineAnnealingLR, CosineAnnealingWarmRestarts, ConstantLR,
    LinearLR, ReduceLROnPlateau). ChainedScheduler and SequentialLR are rejected regardless.
    """

    transition_mode: Literal["auto", "step", "plateau", "both"] = "auto"
    """
    What ends a phase:
    - 'step': reaching the phase's ``max_transition_step`` (required on every phase but the last).
    - 'plateau': the validation loss not improving for ``patience`` validations; needs
      ``[validation] enable = true``; ``max_transition_step`` is not allowed.
    - 'both': whichever comes first; ``max_transition_step`` is optional.
    - 'auto': 'both' when ``[validation] enable = true``, else 'step'.
    A plateau in the final phase ends training (with a final full checkpoint).
    """

    patience: int = 3
    """Plateau transitions: validations without improvement before the next phase starts."""

    min_delta: float = 0.0
    """Plateau transitions: smallest change of the validation loss that counts as improvement."""

    mode: Literal["min", "max"] = "min"
    """Plateau transitions: whether the monitored value improves by decreasing or increasing."""

    restore_best: bool = False
    """
    Before each transition, restore the checkpoint with the best validation loss of the phase.
    Needs ``[validation] enable = true`` and ``[checkpoint] enable = true``.
    """

    nonfinite_loss: Literal["stop", "warn"] = "stop"
    """
    What a NaN or infinite training loss on any rank does:
    - 'stop': training ends after that step, before it is saved (exit code 3); the newest
      checkpoint then holds the last finite state, and none is rotated out by keep_latest_k.
    - 'warn': it is logged and training goes on. Non-finite validation losses are ignored
      either way (no plateau count, no best state).
    """

    cycle: Cycle = field(default_factory=Cycle)
    """A generated block-cyclic schedule, ``[phases.cycle]`` (see :class:`Cycle`)."""

    fp32_master_weights: bool = False
    """
    With ``[training] dtype = "bfloat16"`` (every weight stored in bf16, 2 bytes a param): keep
    an fp32 master copy, and fp32 optimizer state, for the params that train, and only for
    them. Each step upcasts the bf16 gradient, steps the master and copies it back rounded;
    a param that stops training is written back and its master freed. Checkpoints hold the
    masters in the trainable params' place, so resume is exact and a model-only or HF save
    writes their full-precision values. Without it, ``dtype = "bfloat16"`` is torchtitan's
    pure bf16 training (bf16 optimizer state too).
    """

    def effective_transition_mode(self, validation_enabled: bool) -> str:
        """``transition_mode`` with 'auto' resolved: a cycle changes blocks every
        ``steps_per_phase`` steps; other schedules watch the validation loss too when
        ``[validation] enable``."""
        if self.transition_mode == "auto":
            if self.cycle.enable is True:
                return "step"
            return "both" if validation_enabled else "step"
        return self.transition_mode


@dataclass
class PretrainedStage:
    """Where a fine-tuning job's initial checkpoint comes from when it does not exist yet.

    ``run_train.sh`` runs the recipe first (through ``python -m titan_phases.prepare``); the
    default fine-tune uses this to pretrain the llama3 debug model once on the embedded
    Python-docs corpus, and later runs reuse the checkpoint.
    """

    recipe: str = ""
    """
    Job config (TOML) that produces ``checkpoint.initial_load_path`` when that path does not
    exist. Relative paths are relative to the current directory, like torchtitan's paths.
    Leave empty to require the initial checkpoint to exist.
    """


@dataclass
class JobConfig:
    """torchtitan's JobConfig extended with the ``[phases]`` and ``[pretrained]`` sections."""

    phases: Phases = field(default_factory=Phases)
    pretrained: PretrainedStage = field(default_factory=PretrainedStage)
