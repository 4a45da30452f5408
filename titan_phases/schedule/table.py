"""The phase table printed by ``titan-phases validate`` and ``show``.

A row's ``tensors`` and ``elements`` are what the phase thaws; a schedule whose phases also
freeze gets a ``freezes`` column (tensors that stop training when the phase starts).
"""

from __future__ import annotations

from typing import Any

from torchtitan.config import JobConfig

from titan_phases.schedule.resolve import ResolvedSchedule

COLUMNS = ("phase", "tensors", "elements", "% model", "lr", "optimizer", "scheduler", "transition")


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def _transition(resolved: ResolvedSchedule, k: int, job_config: JobConfig) -> str:
    cfg = job_config.phases
    step = resolved.phases[k].max_transition_step
    if k == resolved.num_phases - 1:
        return f"end of training (step {job_config.training.steps})"
    mode = cfg.effective_transition_mode(job_config.validation.enable)
    plateau = f"plateau (patience {cfg.patience})"
    if mode == "plateau" or step is None:
        return plateau
    return f"after step {step}" + (f" or {plateau}" if mode == "both" else "")


def phase_rows(resolved: ResolvedSchedule, job_config: JobConfig) -> list[dict[str, Any]]:
    """One row per running phase, plus a "frozen" row for parameters that are never thawed."""
    total = sum(resolved.param_numels.values()) or 1
    optimizer = f"{job_config.optimizer.name} [optimizer]"
    scheduler = f"warmup+{job_config.lr_scheduler.decay_type} [lr_scheduler]"
    rows = []
    for k, (phase, names) in enumerate(zip(resolved.phases, resolved.phase_params)):
        if phase.new_optimizer is not None:
            optimizer = _short(phase.new_optimizer.class_path)
        if phase.new_lr_scheduler is not None:
            scheduler = _short(phase.new_lr_scheduler.class_path)
        elements = sum(resolved.param_numels[n] for n in names)
        rows.append({
            "phase": k,
            "tensors": len(names),
            "elements": elements,
            "% model": round(100 * elements / total, 2),
            "lr": resolved.group_lr(k),
            "optimizer": optimizer + (" (new)" if phase.new_optimizer else ""),
            "scheduler": scheduler + (" (new)" if phase.new_lr_scheduler else ""),
            "transition": _transition(resolved, k, job_config),
            "params": list(names),
            "freezes": len(resolved.frozen_at(k)),
            "frozen_params": list(resolved.frozen_at(k)),
        })
    if resolved.frozen_params:
        elements = sum(resolved.param_numels[n] for n in resolved.frozen_params)
        rows.append({
            "phase": "frozen", "tensors": len(resolved.frozen_params), "elements": elements,
            "% model": round(100 * elements / total, 2), "lr": None, "optimizer": "",
            "scheduler": "", "transition": "never thawed", "params": list(resolved.frozen_params),
            "freezes": None, "frozen_params": [],
        })
    return rows


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "elements":
        return f"{value:,}"
    if column == "% model":
        return f"{value:.1f}"
    if column == "lr":
        return f"{value:.3g}"
    return str(value)


def render_table(rows: list[dict[str, Any]], with_params: bool = False) -> str:
    """Aligned plain-text table; ``with_params`` lists each phase's parameters under its row
    (the ones it freezes with a leading ``-``)."""
    columns = list(COLUMNS)
    if any(row.get("freezes") for row in rows):
        columns.insert(columns.index("tensors") + 1, "freezes")
    cells = [[_cell(c, row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = {"tensors", "freezes", "elements", "% model", "lr"}

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if c in numeric else v.ljust(w)
                         for c, v, w in zip(columns, values, widths)).rstrip()

    out = [line(columns), line(["-" * w for w in widths])]
    for row, values in zip(rows, cells):
        out.append(line(values))
        if with_params:
            out.extend(f"    -{name}" for name in row.get("frozen_params", ()))
            out.extend(f"    {name}" for name in row["params"])
    return "\n".join(out)
