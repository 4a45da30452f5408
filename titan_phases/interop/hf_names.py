"""Schedules written against Hugging Face parameter names, turned into torchtitan's names.

FTS schedules for HF models name parameters the ``transformers`` way
(``model.layers.5.self_attn.q_proj.weight``); torchtitan names the same tensor
``layers.5.attention.wq.weight``. The job's TrainSpec ``state_dict_adapter`` already knows the
correspondence (its ``from_hf_map``, with ``{}`` standing for a block index), so each torchtitan
parameter of the job's model gets its HF name from there. A schedule pattern is then matched
against the HF names (exact names exactly, regexes in full) and replaced by the torchtitan names
of what it matched, as exact names in model order.

**Limitations**
Needs a ``state_dict_adapter`` with a ``from_hf_map`` (llama3 and qwen3 have one). Patterns
become lists of exact names, so the converted schedule is longer than the original and does not
follow later changes of the model depth.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable

from torchtitan.config import JobConfig
from torchtitan.protocols.train_spec import get_train_spec

from titan_phases.config.toml_writer import as_written
from titan_phases.schedule.errors import Problem, Problems, ScheduleError
from titan_phases.schedule.model_info import model_param_numels


def _template_regex(titan_template: str) -> re.Pattern[str]:
    return re.compile(re.escape(titan_template).replace(re.escape("{}"), r"(\d+)"))


def hf_to_titan_names(
    from_hf_map: dict[str, str | None], titan_names: Iterable[str]
) -> dict[str, str]:
    """``{HF name: torchtitan name}`` for ``titan_names``, in their order, from an adapter map.

    Raises ValueError naming the torchtitan parameters the map does not cover.
    """
    templates = [
        (_template_regex(titan), hf) for hf, titan in from_hf_map.items() if titan is not None
    ]
    mapping: dict[str, str] = {}
    unmapped = []
    for name in titan_names:
        for regex, hf in templates:
            match = regex.fullmatch(name)
            if match:
                mapping[hf.format(*match.groups())] = name
                break
        else:
            unmapped.append(name)
    if unmapped:
        raise ValueError(f"the HF name map has no entry for {', '.join(unmapped[:10])}")
    return mapping


def job_hf_names(job_config: JobConfig, source: str = "job config") -> dict[str, str]:
    """``{HF name: torchtitan name}`` for every parameter of the job's model (ScheduleError if
    its TrainSpec has no HF name map, or one that misses a parameter)."""
    titan_names = model_param_numels(job_config, source)
    spec = get_train_spec(job_config.model.name)
    from_hf_map = None
    if spec.state_dict_adapter is not None:
        model_args = copy.deepcopy(spec.model_args[job_config.model.flavor])
        from_hf_map = getattr(spec.state_dict_adapter(model_args, None), "from_hf_map", None)
    if not from_hf_map:
        raise _untranslatable(
            source, f"the TrainSpec {job_config.model.name!r} has no state_dict_adapter with a "
            "from_hf_map"
        )
    try:
        return hf_to_titan_names(from_hf_map, titan_names)
    except ValueError as exc:
        raise _untranslatable(source, str(exc)) from None


def _untranslatable(source: str, reason: str) -> ScheduleError:
    return ScheduleError([Problem(
        source, None, "model.name", f"cannot translate HF parameter names: {reason}",
        "write the schedule with torchtitan's names (titan-phases show --params lists them)",
    )])


def to_titan_names(
    schedule: dict[str, dict], hf_names: dict[str, str], source: str, problems: Problems
) -> None:
    """Replace every phase's HF-name ``params`` in ``schedule`` with torchtitan names, in place.

    ``params`` entries are exact HF names or regexes that must match whole HF names (as
    :func:`titan_phases.interop.fts_import.to_fullmatch` makes them).
    """
    for key, phase in schedule.items():
        matched: set[str] = set()
        for pattern in phase.get("params", []):
            if pattern in hf_names:
                found = {pattern}
            else:
                regex = re.compile(pattern)
                found = {hf for hf in hf_names if regex.fullmatch(hf)}
            if not found:
                problems.error(
                    source, int(key), "params",
                    f"{as_written(pattern)} matches no HF parameter name of the job's model",
                    "check the prefix (--strip-prefix) and the names in the model's HF checkpoint",
                )
            matched |= found
        phase["params"] = [titan for hf, titan in hf_names.items() if hf in matched]
