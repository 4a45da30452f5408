"""The schedule YAMLs that finetuning-scheduler ships import, and validate against a model with
the parameter names they were written for.

FTS's files are not copied here: the test reads them from an installed ``finetuning-scheduler``
(its ``fts_examples`` package; ``pip install '.[fts-parity]'``), or from the ``fts_examples``
folder named by ``TITAN_PHASES_FTS_EXAMPLES``, and is skipped without either.
``tests/fixtures/fts/shipped_schedules.json`` records, per FTS release, which files were found
and how each one converted; refresh it with::

    TITAN_PHASES_FTS_EXAMPLES=/path/to/site-packages/fts_examples \\
        python -m tests.interop.test_fts_shipped_schedules --record

Their models are a Hugging Face DeBERTa-v3-base classifier (held by a LightningModule as
``self.model``) and torchtitan's llama3 with 4 blocks; the test registers TrainSpecs whose
models have exactly those parameter names (shapes do not matter to a schedule).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import yaml
from torchtitan.protocols.train_spec import get_train_spec, register_train_spec

from tests.schedule.conftest import make_job
from titan_phases.interop.fts_import import convert_fts_schedule, load_fts_yaml
from titan_phases.schedule import load_and_validate
from titan_phases.schedule.errors import Problems
from titan_phases.schedule.model_info import model_param_numels

RECORD = Path(__file__).resolve().parents[1] / "fixtures" / "fts" / "shipped_schedules.json"
STEPS_PER_EPOCH = 100
ENV = "TITAN_PHASES_FTS_EXAMPLES"


def _deberta_v3_base_names() -> list[str]:
    """``DebertaV2ForSequenceClassification`` (deberta-v3-base) parameter names."""
    names = ["deberta.embeddings.word_embeddings.weight"]
    names += [f"deberta.embeddings.LayerNorm.{p}" for p in ("weight", "bias")]
    for i in range(12):
        layer = f"deberta.encoder.layer.{i}"
        modules = [f"attention.self.{m}_proj" for m in ("query", "key", "value")]
        modules += ["attention.output.dense", "attention.output.LayerNorm",
                    "intermediate.dense", "output.dense", "output.LayerNorm"]
        names += [f"{layer}.{m}.{p}" for m in modules for p in ("weight", "bias")]
    names.append("deberta.encoder.rel_embeddings.weight")
    names += [f"deberta.encoder.LayerNorm.{p}" for p in ("weight", "bias")]
    names += [f"{m}.{p}" for m in ("pooler.dense", "classifier") for p in ("weight", "bias")]
    return names


class NamedParams(nn.Module):
    """A module with the given parameter names (one element each), in that order."""

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        for name in names:
            owner: nn.Module = self
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            owner.register_parameter(leaf, nn.Parameter(torch.zeros(1)))


@dataclasses.dataclass
class _NamesArgs:
    names: list[str]

    def update_from_config(self, job_config: Any) -> None:
        del job_config


def _names_model(args: _NamesArgs) -> NamedParams:
    return NamedParams(args.names)


MODELS: dict[str, tuple[str, str]] = {
    # model family in the file -> (TrainSpec name, flavor)
    "deberta": ("fts_deberta_names", "deberta_v3_base"),
    "llama": ("fts_llama3", "4_blocks"),
}


@functools.cache
def register_models() -> None:
    llama3 = get_train_spec("llama3")
    register_train_spec(MODELS["deberta"][0], dataclasses.replace(
        llama3, model_cls=_names_model, state_dict_adapter=None,
        model_args={MODELS["deberta"][1]: _NamesArgs(_deberta_v3_base_names())}))
    # FTS's torchtitan llama example: llama3 with 4 blocks (layers 0-3 in its schedule).
    four_blocks = copy.deepcopy(llama3.model_args["debugmodel"])
    four_blocks.n_layers = 4
    register_train_spec(MODELS["llama"][0], dataclasses.replace(
        llama3, model_args={MODELS["llama"][1]: four_blocks}))


def examples_dir() -> Path | None:
    """FTS's ``fts_examples`` folder: ``TITAN_PHASES_FTS_EXAMPLES``, else the installed one."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV])
    spec = importlib.util.find_spec("fts_examples")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def is_schedule(raw: Any) -> bool:
    """An FTS schedule: phase numbers mapped to phases with ``params`` (not a Lightning CLI
    config, which FTS's examples also keep as YAML)."""
    return isinstance(raw, dict) and bool(raw) and all(
        isinstance(k, int) and isinstance(v, dict) and "params" in v for k, v in raw.items())


def check(path: Path, root: Path) -> dict[str, Any]:
    """Import ``path`` as ``titan-phases import-fts`` does and validate it against its model."""
    raw = yaml.safe_load(path.read_text())
    entry: dict[str, Any] = {
        "file": path.relative_to(root).as_posix(),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "schedule": is_schedule(raw),
    }
    if not entry["schedule"]:
        return entry
    family = "deberta" if "deberta" in path.read_text() else "llama"
    spec_name, flavor = MODELS[family]
    # FTS's default transitions: early stopping or max_transition_epoch, whichever comes first.
    job = make_job(steps=100 * STEPS_PER_EPOCH, validation=True)
    job.model.name, job.model.flavor = spec_name, flavor
    problems = Problems()
    converted = convert_fts_schedule(
        load_fts_yaml(path, problems), source=entry["file"], problems=problems,
        steps_per_epoch=STEPS_PER_EPOCH, prefix="model.",
        param_names=list(model_param_numels(job)))
    entry.update(model=f"{spec_name} {flavor}", phases=len(converted.schedule),
                 import_errors=[str(p) for p in problems.errors], notes=converted.notes)
    if not problems.errors:
        job.phases.schedule = converted.schedule
        resolved = load_and_validate(job)
        entry["validated"] = True
        entry["thawed_per_phase"] = [len(names) for names in resolved.phase_params]
    return entry


def check_all(root: Path) -> list[dict[str, Any]]:
    register_models()
    return [check(path, root) for path in sorted(root.rglob("*.yaml"))]


def fts_version(root: Path) -> str | None:
    """The finetuning-scheduler release installed next to ``root`` (its fts_examples)."""
    for dist in importlib.metadata.distributions(path=[str(root.parent)]):
        if dist.metadata["Name"].lower().replace("_", "-") == "finetuning-scheduler":
            return dist.version
    return None


def test_recorded_schedules_imported_and_validated():
    record = json.loads(RECORD.read_text())
    schedules = [e for e in record["files"] if e["schedule"]]
    assert record["finetuning_scheduler"] == "2.14.1"
    assert len(schedules) >= 5
    assert all(e["validated"] and not e["import_errors"] for e in schedules)
    assert {e["model"] for e in schedules} == {
        "fts_deberta_names deberta_v3_base", "fts_llama3 4_blocks"}


@pytest.mark.skipif(examples_dir() is None,
                    reason=f"FTS's fts_examples not installed and {ENV} not set")
def test_every_shipped_schedule_imports_and_validates():
    root = examples_dir()
    entries = check_all(root)
    schedules = [e for e in entries if e["schedule"]]
    assert schedules, f"no FTS schedule YAML under {root}"
    for entry in schedules:
        assert entry["import_errors"] == [], entry["file"]
        assert entry.get("validated"), entry["file"]
        assert all(entry["thawed_per_phase"]), entry["file"]
    record = json.loads(RECORD.read_text())
    if fts_version(root) == record["finetuning_scheduler"]:
        # The recorded release: the same files, converted the same way.
        assert entries == record["files"]


def _record(root: Path) -> None:
    RECORD.write_text(json.dumps({
        "finetuning_scheduler": fts_version(root),
        "steps_per_epoch": STEPS_PER_EPOCH,
        "files": check_all(root),
    }, indent=1) + "\n")
    print(f"wrote {RECORD}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Record how FTS's shipped YAMLs convert.")
    parser.add_argument("--record", action="store_true", required=True)
    parser.parse_args()
    found = examples_dir()
    if found is None:
        sys.exit(f"set {ENV} to FTS's fts_examples folder")
    _record(found)
