"""Phase schedules the benchmark runs, as schedule-file TOML (format: docs/schedule.md).

* :func:`three_phase` - the benchmark's phased schedule for a model of ``n_layers`` blocks: the
  top block with the final norm and output head; the next ``max(1, n_layers // 3)`` blocks; the
  remaining blocks with the token embeddings. At 6 blocks this is the default job's schedule.
* :func:`all_params` - one phase that trains everything: the controller runs on every step but
  never transitions (the overhead measurement).

Blocks are named by :func:`titan_phases.schedule.blocks.block_pattern`, the project's one
definition of a block, over llama3's ``layers`` container.
"""

from __future__ import annotations

from titan_phases.schedule.blocks import block_pattern

BLOCKS = "layers"
NORM_AND_HEAD = ("output.weight", "norm.weight")
EMBEDDINGS = "tok_embeddings.weight"


def three_phase_params(n_layers: int) -> list[list[str]]:
    """The params patterns of each of the three phases (see the module docstring)."""
    if n_layers < 3:
        raise ValueError(f"three phases of blocks need at least 3 blocks, got {n_layers}")
    top = n_layers - 1
    middle_start = top - max(1, n_layers // 3)
    return [
        [*NORM_AND_HEAD, block_pattern(BLOCKS, range(top, n_layers))],
        [block_pattern(BLOCKS, range(middle_start, top))],
        [block_pattern(BLOCKS, range(middle_start)), EMBEDDINGS],
    ]


def _literal_list(patterns: list[str]) -> str:
    # TOML literal strings keep regex backslashes as written.
    return "[" + ", ".join(f"'{p}'" for p in patterns) + "]"


def three_phase(n_layers: int, steps_per_phase: int) -> str:
    """Schedule TOML: three phases of ``steps_per_phase`` steps (the last runs to the end)."""
    phases = three_phase_params(n_layers)
    lines: list[str] = []
    for k, patterns in enumerate(phases):
        lines += [f"[{k}]", f"params = {_literal_list(patterns)}"]
        if k < len(phases) - 1:
            lines.append(f"max_transition_step = {(k + 1) * steps_per_phase}")
        lines.append("")
    return "\n".join(lines)


def all_params() -> str:
    """Schedule TOML: a single phase that trains every parameter."""
    return "[0]\nparams = ['.*']\n"
