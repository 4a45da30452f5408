"""Pipeline schedules across phase transitions.

A ``torch.distributed.pipelining`` schedule infers, at its first step, the metadata of what its
stages send and receive, ``requires_grad`` included, and keeps it. A stage whose params are all
frozen, with no trainable stage below it, produces outputs that need no grad, so the next
stage sends it no gradient. Once a transition thaws that stage, its backward would get no
output gradient and fails (``grad can be implicitly created only for scalar outputs``).
:func:`reinfer_stage_metadata` makes the schedule infer again at its next step, which is all a
transition needs: stages, their submodules and the schedule's action order do not depend on
which params train.

With top-down thawing, stages below the lowest trainable one then run no backward at all: their
outputs need no grad, so the schedule's backward of those stages has nothing to propagate.

**Limitations**
Relies on private attributes of torch's schedules: ``_stage_forward_initialized`` and
``_stage_backward_initialized`` (single-stage schedules) or ``_stages_forward_initialized``
and ``_stages_backward_initialized`` (multi-stage ones). A schedule without either pair is
refused with an error rather than left to fail in backward.
"""

from __future__ import annotations

from typing import Any

__all__ = ["reinfer_stage_metadata"]

_LAZY_INIT_FLAGS = (
    ("_stage_forward_initialized", "_stage_backward_initialized"),
    ("_stages_forward_initialized", "_stages_backward_initialized"),
)


def reinfer_stage_metadata(pp_schedule: Any) -> None:
    """Make ``pp_schedule`` infer its stages' input and output metadata at its next step."""
    for flags in _LAZY_INIT_FLAGS:
        if all(hasattr(pp_schedule, flag) for flag in flags):
            for flag in flags:
                setattr(pp_schedule, flag, False)
            return
    raise RuntimeError(
        f"{type(pp_schedule).__name__} keeps no known lazy-initialisation flags, so its stage "
        f"metadata cannot be inferred again after a thaw; this torch version changed the "
        f"private API titan_phases.components.pipeline relies on"
    )
