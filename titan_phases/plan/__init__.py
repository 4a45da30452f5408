"""``titan-phases plan``: what a phased job will cost per phase, from its config alone.

:mod:`.layout` lays the model out on the job's mesh without devices; :mod:`.cost` turns that
and the schedule into steps, FLOPs and bytes per rank for every phase.
"""

from titan_phases.plan.cost import build_plan, PhaseCost, Plan, RankMemory, render_plan, state_bytes
from titan_phases.plan.layout import MeshError, parallel_dims_for, param_layouts, ParamLayout

__all__ = [
    "MeshError", "ParamLayout", "PhaseCost", "Plan", "RankMemory", "build_plan",
    "param_layouts", "parallel_dims_for", "render_plan", "state_bytes",
]
