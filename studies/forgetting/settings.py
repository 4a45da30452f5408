"""How long the study's jobs run: the full study and the ``--quick`` development run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """Sizes of one study run.

    Attributes:
        pretrain_steps: steps of the pretraining job on corpus A.
        pretrain_warmup: ``lr_scheduler.warmup_steps`` of the pretraining job; None keeps the
            pretrain config's.
        steps: fine-tuning steps of every strategy (the token budget, with the default job's
            batch and sequence length).
        eval_every: validation and checkpoint interval of the fine-tuning jobs, in steps.
        validation_steps: batches per rank of every validation (the job's and the study's).
        seeds: data orders of corpus B (one fine-tuning job per strategy and seed).
        seed_check: run one extra job that changes ``--debug.seed`` alone, to show what it does.
        seq_len: training and validation sequence length of every job (pretraining too: the
            rotary table's length must match); None keeps the configs' (256).
        eval_threads: torch threads of the study's own evaluation (it runs between jobs, never
            beside one).
        publish: copy the plots to docs/images and rewrite STUDIES.md's generated section.
    """

    pretrain_steps: int = 200
    pretrain_warmup: int | None = None
    steps: int = 60
    eval_every: int = 10
    validation_steps: int = 4
    seeds: tuple[int, ...] = (0, 1, 2)
    seed_check: bool = True
    seq_len: int | None = None
    eval_threads: int = 2
    publish: bool = True

    def __post_init__(self) -> None:
        # torchtitan validates at multiples of the frequency only: the last step must be one.
        if self.steps % self.eval_every:
            raise ValueError(f"steps ({self.steps}) must be a multiple of eval_every "
                             f"({self.eval_every})")

    def points(self) -> list[int]:
        """The validation points: the pretrained model (step 0) and every ``eval_every``."""
        return [0, *range(self.eval_every, self.steps + 1, self.eval_every)]


# Every launch costs ~12 s of start-up whatever it does; short sequences cut the rest.
QUICK = Settings(pretrain_steps=4, pretrain_warmup=1, steps=6, eval_every=3, validation_steps=1,
                 seeds=(0,), seed_check=False, seq_len=64, publish=False)
