"""A corpus of malformed jobs, schedules and flags, each run through ``titan-phases validate``.

Every case breaks one valid job (``tests/fixtures/malformed``) the way a user might, and must
be refused the way the project refuses bad input: exit code 2, a message naming the key (and
the phase, and the file, where there is one), no traceback, nothing written to the dump
folder. The corpus runs in-process for speed; a few cases also go through ``run_train.sh``.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import launches
from titan_phases.cli import main
from titan_phases.config.toml_writer import dumps

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "malformed"

Edit = Callable[[dict[str, Any], dict[str, Any]], None]
"""Changes ``(job, schedule)``, the two TOML documents as dicts, in place."""


def _walk(doc: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    *parents, last = path.split(".")
    for key in parents:
        doc = doc.setdefault(key, {})
    return doc, last


def job_set(path: str, value: Any) -> Edit:
    def edit(job: dict[str, Any], schedule: dict[str, Any]) -> None:
        table, key = _walk(job, path)
        table[key] = value
    return edit


def job_del(path: str) -> Edit:
    def edit(job: dict[str, Any], schedule: dict[str, Any]) -> None:
        table, key = _walk(job, path)
        del table[key]
    return edit


def set_(path: str, value: Any) -> Edit:
    """Set a key of the schedule, e.g. ``set_("1.lr", 1e-4)``."""
    def edit(job: dict[str, Any], schedule: dict[str, Any]) -> None:
        table, key = _walk(schedule, path)
        table[key] = value
    return edit


def del_(path: str) -> Edit:
    def edit(job: dict[str, Any], schedule: dict[str, Any]) -> None:
        table, key = _walk(schedule, path)
        del table[key]
    return edit


def inline(job: dict[str, Any], schedule: dict[str, Any]) -> None:
    """Move the schedule (as edited so far) into the job as ``[phases.schedule]``."""
    del job["phases"]["schedule_file"]
    job["phases"]["schedule"] = copy.deepcopy(schedule)


def generated(job: dict[str, Any], schedule: dict[str, Any]) -> None:
    """No explicit schedule: the job generates one (8 phases for the debug model)."""
    del job["phases"]["schedule_file"]


@dataclass(frozen=True)
class Case:
    id: str
    expect: tuple[str, ...]
    """Substrings the output must contain; the first names the key (with its phase)."""
    names: str | None = "schedule"
    """The file the line with ``expect[0]`` must name: "schedule", "job" or None (a flag)."""
    edits: tuple[Edit, ...] = ()
    args: tuple[str, ...] = ()
    job_text: Callable[[str], str] | None = None
    schedule_text: Callable[[str], str] | None = None
    schedule_bytes: bytes | None = None
    config_file: str | None = None
    """The job config file to name instead of the job written, relative to the case's folder."""
    files: tuple[tuple[str, str], ...] = ()
    """``(name, text)`` of files to create in the case's folder, the working directory."""
    problems: int | None = None
    """When set: exactly this many problems are listed (all of them at once)."""
    marks: tuple[Any, ...] = ()
    """pytest marks of the case (a skip where the machine decides)."""


def sub(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)
    return edit


STEP_LR = {"class_path": "StepLR", "init_args": {"step_size": 5, "gamma": 0.5}}


def _float8_may_run_here() -> bool:
    import importlib.util

    import torch

    return (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
            and importlib.util.find_spec("torchao") is not None)

CASES = [
    # --- the job TOML ------------------------------------------------------------------------
    Case("job-toml-syntax", ("not valid TOML", "line"), "job",
         job_text=sub("[training]", "[training")),
    Case("job-not-utf8", ("not UTF-8",), "job", job_text=lambda t: t + "# caf\udce9\n"),
    Case("job-unknown-section", ("trainig: no config section has this key",
                                 "did you mean training?"), "job",
         edits=(job_set("trainig.steps", 3),)),
    Case("job-unknown-key-training", ("training.stpes", "did you mean training.steps?"), "job",
         edits=(job_set("training.stpes", 40),)),
    Case("job-unknown-key-phases", ("phases.restore_bset", "did you mean phases.restore_best?"),
         "job", edits=(job_set("phases.restore_bset", True),)),
    Case("job-unknown-phases-subtable", ("phases.schedul", "did you mean phases.schedule?"),
         "job", edits=(job_set("phases.schedul", {"0": {"params": ["output.weight"]}}),)),
    Case("phases-transition_mode-enum", ("phases.transition_mode", "plateu", "'step'"), "job",
         edits=(job_set("phases.transition_mode", "plateu"),)),
    Case("phases-nonfinite_loss-enum", ("phases.nonfinite_loss", "'stop' or 'warn'"), "job",
         edits=(job_set("phases.nonfinite_loss", "ignore"),)),
    Case("phases-mode-enum", ("phases.mode", "'min' or 'max'"), "job",
         edits=(job_set("phases.mode", "minimum"),)),
    Case("phases-lr_scale-string", ("phases.lr_scale", "expected a number"), "job",
         edits=(job_set("phases.lr_scale", "0.1"),)),
    Case("phases-lr_scale-list", ("phases.lr_scale", "[0.1]"), "job",
         edits=(job_set("phases.lr_scale", [0.1]),)),
    Case("phases-lr_scale-nan", ("phases.lr_scale: expected a finite number, got nan",), "job",
         edits=(job_set("phases.lr_scale", float("nan")),)),
    Case("phases-lr_scale-inf", ("phases.lr_scale: expected a finite number, got inf",), "job",
         edits=(job_set("phases.lr_scale", float("inf")),)),
    Case("phases-lr_scale-zero", ("phases.lr_scale", "must be > 0"), "job",
         edits=(job_set("phases.lr_scale", 0.0),)),
    Case("phases-max_depth-below-minus-one", ("phases.max_depth", "-2"), "job",
         edits=(job_set("phases.max_depth", -2),)),
    Case("phases-max_depth-float", ("phases.max_depth", "expected an integer"), "job",
         edits=(job_set("phases.max_depth", 1.5),)),
    Case("phases-patience-string", ("phases.patience", "expected an integer"), "job",
         edits=(job_set("phases.patience", "3"), job_set("validation.enable", True))),
    Case("phases-restore_best-int", ("phases.restore_best", "true or false"), "job",
         edits=(job_set("phases.restore_best", 1),)),
    Case("phases-restore_best-without-validation",
         ("phases.restore_best", "[validation] enable = true"), "job",
         edits=(job_set("phases.restore_best", True),)),
    Case("phases-plateau-without-validation",
         ("phases.transition_mode", "[validation] enable = false"), "job",
         edits=(job_set("phases.transition_mode", "plateau"), del_("0.max_transition_step"),
                del_("1.max_transition_step"), del_("2.max_transition_step"))),
    Case("phases-allow_untested-string", ("phases.allow_untested", "true or false"), "job",
         edits=(job_set("phases.allow_untested", "yes"),)),
    Case("phases-reinit-with-explicit-schedule", ("phases.reinit_optimizer", "new_optimizer"),
         "job", edits=(job_set("phases.reinit_optimizer", {"class_path": "SGD"}),)),
    Case("phases-reinit_lr_scheduler-init_pg_lrs",
         ("phases.reinit_lr_scheduler.init_pg_lrs", "not supported"), "job",
         edits=(generated, job_set("phases.reinit_lr_scheduler", {**STEP_LR,
                                                                 "init_pg_lrs": [1e-4]}))),
    Case("phases-reinit_lr_scheduler-typo", ("phases.reinit_lr_scheduler.init_arg",
                                             "did you mean 'init_args'?"), "job",
         edits=(generated, job_set("phases.reinit_lr_scheduler",
                                   {"class_path": "StepLR", "init_arg": {"step_size": 5}}))),
    Case("phases-blocks_per_phase-zero", ("phases.blocks_per_phase", "must be >= 1"), "job",
         edits=(generated, job_set("phases.blocks_per_phase", 0))),
    Case("phases-schedule_file-missing", ("schedul.toml: phases.schedule_file", "not found"),
         names=None, edits=(job_set("phases.schedule_file", "schedul.toml"),)),
    Case("phases-schedule_file-directory", ("phases.schedule_file", "is a directory"),
         names=None, edits=(job_set("phases.schedule_file", "."),)),
    Case("phases-schedule_file-int", ("phases.schedule_file", "expected a string"), "job",
         edits=(job_set("phases.schedule_file", 3),)),
    Case("phases-schedule-file-and-inline", ("phases.schedule", "keep one of them"), "job",
         edits=(job_set("phases.schedule", {"0": {"params": ["output.weight"]}}),)),
    Case("model-flavor-unknown", ("model.flavor", "debugmodel"), "job",
         edits=(job_set("model.flavor", "tiny"),)),
    Case("model-name-unknown", ("model.name", "llama3_phasez"), "job",
         edits=(job_set("model.name", "llama3_phasez"),)),
    Case("training-steps-string", ("training.steps: expected an integer, got 'forty'",), "job",
         edits=(job_set("training.steps", "forty"),)),
    Case("training-steps-float", ("training.steps: expected an integer, got 40.5",), "job",
         edits=(job_set("training.steps", 40.5),)),
    Case("training-steps-zero", ("training.steps", "must be >= 1"), "job",
         edits=(job_set("training.steps", 0),)),
    Case("training-max_norm-string", ("training.max_norm: expected a number", "'big'"), "job",
         edits=(job_set("training.max_norm", "big"),)),
    Case("optimizer-lr-string", ("optimizer.lr: expected a number", "'fast'"), "job",
         edits=(job_set("optimizer.lr", "fast"),)),
    Case("validation-enable-string", ("validation.enable: expected true or false", "'yes'"),
         "job", edits=(job_set("validation.enable", "yes"),)),
    Case("lr_scheduler-decay_type-enum", ("lr_scheduler.decay_type", "'cosine'", "'cosin'"),
         "job", edits=(job_set("lr_scheduler.decay_type", "cosin"),)),
    Case("checkpoint-interval-string", ("checkpoint.interval: expected an integer",), "job",
         edits=(job_set("checkpoint.interval", "10"),)),
    Case("job-section-not-a-table", ("training: expected a table [training]",), "job",
         edits=(job_set("training", 40),)),
    Case("job-file-is-a-directory", ("cannot read the job config", "Is a directory"), None,
         config_file="."),
    Case("custom_import-missing", ("experimental.custom_import", "my_models"), "job",
         edits=(job_set("experimental.custom_import", "my_models.llama"),)),
    Case("custom_import-broken", ("experimental.custom_import", "SyntaxError"), "job",
         files=(("my_models.py", "def llama(:\n"),),
         edits=(job_set("experimental.custom_import", "my_models"),)),
    Case("custom_config_module-missing", ("job.custom_config_module", "jobconfig"), "job",
         edits=(job_set("job.custom_config_module", "titan_phases.config.jobconfig"),)),
    Case("custom_config_module-without-JobConfig", ("job.custom_config_module", "JobConfig"),
         "job", edits=(job_set("job.custom_config_module", "json"),)),
    Case("hf_assets_path-old-tokenizer-file", ("model.hf_assets_path", "tokenizer.model"),
         "job", files=(("tokenizer.model", ""),),
         edits=(job_set("model.hf_assets_path", "tokenizer.model"),)),
    Case("pipeline-zero-bubble-schedule", ("parallelism.pipeline_parallel_schedule",), "job",
         edits=(job_set("parallelism.pipeline_parallel_degree", 2),
                job_set("parallelism.pipeline_parallel_schedule", "ZBVZeroBubble"))),
    # --- what the ranks would stop on, or silently do otherwise -------------------------------
    Case("model-name-not-phased", ("model.name: 'llama3' is not a phased model",
                                   "ignoring the [phases] settings", "'llama3_phases'"), "job",
         edits=(job_set("model.name", "llama3"),)),
    Case("custom_config_module-absent", ("job.custom_config_module: not set",
                                         "custom_config_module = 'titan_phases.config.job_config'"
                                         " under [job]"), "job",
         edits=(job_del("job.custom_config_module"),)),
    Case("hf_assets_path-missing", ("model.hf_assets_path: 'assets/hf/Llama-3.1-8B' does not "
                                    "exist", "tokenizer.json"), "job",
         edits=(job_set("model.hf_assets_path", "assets/hf/Llama-3.1-8B"),)),
    Case("hf_assets_path-without-tokenizer", ("model.hf_assets_path", "holds no tokenizer.json"),
         "job", edits=(job_set("model.hf_assets_path", "."),)),
    Case("training-dataset-unknown", ("training.dataset: 'c4_tset' is not a registered dataset",
                                      "titan_recipes"), "job",
         edits=(job_set("training.dataset", "c4_tset"),)),
    Case("training-dataset-in-torchtitans-repository",
         ("training.dataset: 'c4_test' reads 'tests/assets/c4_test', which does not exist",
          "training.dataset_path"), "job", edits=(job_set("training.dataset", "c4_test"),)),
    Case("training-dataset_path-missing", ("training.dataset_path: 'recipes.jsonl' does not "
                                           "exist",), "job",
         edits=(job_set("training.dataset_path", "recipes.jsonl"),)),
    Case("validation-dataset-on-an-unreachable-hub",
         ("validation.dataset: 'c4_validation' reads 'allenai/c4' from the Hugging Face Hub",
          "cannot be reached", "validation.dataset_path"), "job",
         edits=(job_set("validation.enable", True),
                job_set("validation.dataset", "c4_validation"))),
    Case("converters-unknown", ("model.converters: 'float8' is not a registered model converter",
                                "did you mean 'quantize.linear.float8'?"), "job",
         edits=(job_set("model.converters", ["float8"]),)),
    Case("converters-float8-cannot-run-here", ("model.converters: 'quantize.linear.float8' "
                                               "cannot run on this machine", "SM89"), "job",
         edits=(job_set("model.converters", ["quantize.linear.float8"]),),
         marks=(pytest.mark.skipif(_float8_may_run_here(), reason="float8 runs here"),)),
    Case("initial_load_path-with-checkpointing-off",
         ("checkpoint.initial_load_path: 'pretrained/step-100' would not be loaded",
          "train from random weights", "--checkpoint.initial_load_path ''"), "job",
         edits=(job_set("checkpoint.enable", False),
                job_set("checkpoint.initial_load_path", "pretrained/step-100"))),
    Case("cycle-always_train-string", (r"phases.cycle.always_train: expected a list of strings, "
                                       r"got 'layers\.0\..+'",), "job",
         edits=(job_set("phases.cycle.always_train", r"layers\.0\..+"),)),
    Case("job-problems-at-once", ("model.name", "model.hf_assets_path", "training.dataset",
                                  "model.converters", "checkpoint.initial_load_path"), "job",
         edits=(job_set("model.name", "llama3"), job_set("model.hf_assets_path", "tok"),
                job_set("training.dataset", "c4_tset"), job_set("model.converters", ["fp8"]),
                job_set("checkpoint.enable", False),
                job_set("checkpoint.initial_load_path", "pretrained/step-100")),
         problems=5),
    # --- command-line flags ------------------------------------------------------------------
    Case("flag-steps-not-an-int", ("--training.steps", "abc"), None,
         args=("--training.steps", "abc")),
    Case("flag-lr_scale-not-a-number", ("--phases.lr_scale", "fast"), None,
         args=("--phases.lr_scale", "fast")),
    Case("flag-transition_mode-enum", ("--phases.transition_mode", "sideways"), None,
         args=("--phases.transition_mode", "sideways")),
    Case("flag-unknown", ("--phases.lr_scal", "--phases.lr_scale"), None,
         args=("--phases.lr_scal", "0.5")),
    Case("flag-without-value", ("--training.steps",), None, args=("--training.steps",)),
    Case("flag-max_depth-out-of-range", ("phases.max_depth", "-5"), "job",
         args=("--phases.max_depth", "-5")),
    Case("flag-own-option-unknown", ("--strict",), None, args=("--strict",)),
    Case("flag-inline-schedule-override", ("--phases.schedule.1.lr", "'abc'"), None,
         edits=(inline,), args=("--phases.schedule.1.lr", "abc")),
    Case("flag-and-job-problems-at-once", ("--training.steps", "training.stpes"), None,
         edits=(job_set("training.stpes", 40),), args=("--training.steps", "abc")),
    Case("flag-switch-given-false", ("--checkpoint.enable is a switch and takes no value "
                                     "(got 'false')", "--checkpoint.no-enable to turn it off"),
         None, args=("--checkpoint.enable", "false")),
    Case("flag-switch-given-a-value-with-equals", ("--phases.allow_untested is a switch",
                                                   "--phases.no-allow_untested"), None,
         args=("--phases.allow_untested=yes",)),
    Case("flag-schedule_file-and-inline-overrides", ("phases.schedule", "keep one of them"),
         "job", edits=(inline,),
         args=("--phases.schedule_file", "schedule.toml", "--phases.schedule.1.lr", "1e-4")),
    # --- the schedule file -------------------------------------------------------------------
    Case("schedule-toml-syntax", ("not valid TOML", "line"),
         schedule_text=sub("[2]", "[2")),
    Case("schedule-not-utf8", ("not UTF-8",), schedule_bytes=b"[0]\nparams = ['caf\xe9']\n"),
    Case("schedule-syntax-and-job-problem-at-once", ("not valid TOML", "phases.restore_bset"),
         edits=(job_set("phases.restore_bset", True),), schedule_text=sub("[2]", "[2"),
         problems=2),
    Case("schedule-empty", ("(schedule)", "no phases"), schedule_text=lambda t: ""),
    Case("schedule-only-comments", ("(schedule)", "no phases"),
         schedule_text=lambda t: "# phases to come\n"),
    Case("phase-key-typo", ("phase 1: max_transtion_step", "did you mean 'max_transition_step'"),
         edits=(set_("1.max_transtion_step", 20), del_("1.max_transition_step"))),
    Case("phase-params-typo", ("phase 2: param", "did you mean 'params'"),
         edits=(set_("2.param", [r"layers\.[34]\..+"]), del_("2.params"))),
    Case("phase-table-typo", ("phase 1: new_lr_schedular", "did you mean 'new_lr_scheduler'"),
         edits=(set_("1.new_lr_schedular", STEP_LR), del_("1.new_lr_scheduler"))),
    Case("inline-phase-key-typo", ("phase 3: max_nrom", "did you mean 'max_norm'"), "job",
         edits=(set_("3.max_nrom", 0.5), inline)),
    Case("new_optimizer-key-typo", ("phase 2: new_optimizer.init_arg",
                                    "did you mean 'init_args'"),
         edits=(set_("2.new_optimizer.init_arg", {"lr": 2e-4}),
                del_("2.new_optimizer.init_args"))),
    Case("new_lr_scheduler-key-typo", ("phase 3: new_lr_scheduler.init_pg_lr",
                                       "did you mean 'init_pg_lrs'"),
         edits=(set_("3.new_lr_scheduler.init_pg_lr", [1e-4] * 4),
                del_("3.new_lr_scheduler.init_pg_lrs"))),
    Case("fts-epoch-key", ("phase 1: max_transition_epoch", "import-fts"),
         edits=(set_("1.max_transition_epoch", 2), del_("1.max_transition_step"))),
    Case("phase-key-not-a-number", ("[one]", "integers"), edits=(set_("one", {"params": ["x"]}),)),
    Case("phase-key-duplicate", ("phase 1: [01]", "duplicate"),
         edits=(set_("01", {"params": [r"layers\.4\..+"]}),)),
    Case("phase-key-gap", ("(phase keys)", "missing [2]"), edits=(del_("2"),)),
    Case("phase-key-huge", ("(phase keys)", "missing [4, 5, 6, 7, 8, 9, 10, 11, 12, 13] and "
                            "99999985 more"),
         edits=(set_("99999999", {"params": ["x"]}),)),
    Case("phase-not-a-table", ("phase 2: (table)", "expected a table"), edits=(set_("2", 5),)),
    Case("lr-string", ("phase 1: lr", "'5e-4'"), edits=(set_("1.lr", "5e-4"),)),
    Case("lr-bool", ("phase 1: lr", "True"), edits=(set_("1.lr", True),)),
    Case("lr-list", ("phase 1: lr", "[0.0005]"), edits=(set_("1.lr", [5e-4]),)),
    Case("lr-negative", ("phase 1: lr", "-0.0005"), edits=(set_("1.lr", -5e-4),)),
    Case("lr-zero", ("phase 2: lr", "positive"), edits=(set_("2.lr", 0),)),
    Case("lr-nan", ("phase 1: lr", "nan"), edits=(set_("1.lr", float("nan")),)),
    Case("lr-inf", ("phase 1: lr", "inf"), edits=(set_("1.lr", float("inf")),)),
    Case("lr-in-phase-0", ("phase 0: lr", "[optimizer] lr"), edits=(set_("0.lr", 1e-3),)),
    Case("max_norm-zero", ("phase 2: max_norm", "positive"), edits=(set_("2.max_norm", 0.0),)),
    Case("max_transition_step-string", ("phase 0: max_transition_step", "'10'"),
         edits=(set_("0.max_transition_step", "10"),)),
    Case("max_transition_step-float", ("phase 1: max_transition_step", "20.5"),
         edits=(set_("1.max_transition_step", 20.5),)),
    Case("max_transition_step-zero", ("phase 0: max_transition_step", "integer >= 1"),
         edits=(set_("0.max_transition_step", 0),)),
    Case("max_transition_step-negative", ("phase 1: max_transition_step", "-20"),
         edits=(set_("1.max_transition_step", -20),)),
    Case("max_transition_step-not-increasing", ("phase 2: max_transition_step",
                                                "not after phase 1"),
         edits=(set_("2.max_transition_step", 15),)),
    Case("max_transition_step-missing", ("phase 1: max_transition_step", "missing"),
         edits=(del_("1.max_transition_step"),)),
    Case("params-missing", ("phase 2: params", "missing"), edits=(del_("2.params"),)),
    Case("params-empty-list", ("phase 2: params", "non-empty list"), edits=(set_("2.params", []),)),
    Case("params-string", ("phase 1: params", "expected a list"),
         edits=(set_("1.params", r"layers\.5\..+"),)),
    Case("params-empty-pattern", ("phase 1: params[1]", "''"),
         edits=(set_("1.params", [r"layers\.5\..+", ""]),)),
    Case("params-not-a-string", ("phase 1: params[0]", "5"), edits=(set_("1.params", [5]),)),
    Case("params-regex-does-not-compile", ("phase 3: params[0]", "invalid regex"),
         edits=(set_("3.params", [r"layers\.[0-2\..+", "tok_embeddings.weight"]),)),
    Case("params-regex-matches-nothing", ("phase 1: params[0]", "matches no parameter"),
         edits=(set_("1.params", [r"layer\.5\..+"]),)),
    Case("params-regex-wrong-case", ("phase 1: params[0]", "matches no parameter"),
         edits=(set_("1.params", [r"Layers\.5\..+"]),)),
    Case("params-name-matches-nothing", ("phase 3: params[1]", "tok_embeddings.weight"),
         edits=(set_("3.params", [r"layers\.[0-2]\..+", "tok_embedding.weight"]),)),
    # qwen3's debug model ties its head to the embeddings, which the model lists instead.
    Case("params-tied-head-by-its-other-name",
         ("phase 0: params[0]", "output.weight is tied to tok_embeddings.weight",
          "name 'tok_embeddings.weight'"),
         edits=(job_set("model.name", "qwen3_phases"),)),
    Case("params-overlap-between-phases", ("phase 2: params[0]", "already in phase 1"),
         edits=(set_("2.params", [r"layers\.[3-5]\..+"]),)),
    Case("params-duplicate-pattern", ("phase 2: params[1]", "also params[0]"),
         edits=(set_("2.params", [r"layers\.[34]\..+", r"layers\.[34]\..+"]),)),
    Case("new_optimizer-in-phase-0", ("phase 0: new_optimizer", "[optimizer]"),
         edits=(set_("0.new_optimizer", {"class_path": "SGD", "init_args": {"lr": 0.1}}),)),
    Case("new_optimizer-not-a-table", ("phase 2: new_optimizer", "expected a table"),
         edits=(set_("2.new_optimizer", "AdamW"),)),
    Case("new_optimizer-class-missing", ("phase 2: new_optimizer.class_path", "missing"),
         edits=(del_("2.new_optimizer.class_path"),)),
    Case("new_optimizer-class-typo", ("phase 2: new_optimizer.class_path", "'AdamW'"),
         edits=(set_("2.new_optimizer.class_path", "torch.optim.AdamWW"),)),
    Case("new_optimizer-module-missing", ("phase 2: new_optimizer.class_path", "fastopt"),
         edits=(set_("2.new_optimizer.class_path", "fastopt.Lion"),)),
    Case("new_optimizer-wrong-kind", ("phase 2: new_optimizer.class_path", "wrong kind"),
         edits=(set_("2.new_optimizer.class_path", "torch.optim.lr_scheduler.StepLR"),)),
    Case("new_optimizer-init_args-unknown", ("phase 2: new_optimizer.init_args", "lrr"),
         edits=(set_("2.new_optimizer.init_args", {"lrr": 2e-4}),)),
    Case("new_optimizer-init_args-bad-value", ("phase 2: new_optimizer.init_args",
                                               "Invalid beta"),
         edits=(set_("2.new_optimizer.init_args", {"lr": 2e-4, "betas": [0.9, 1.5]}),)),
    Case("new_optimizer-init_args-string", ("phase 2: new_optimizer.init_args",
                                            "expected a table"),
         edits=(set_("2.new_optimizer.init_args", "lr = 2e-4"),)),
    Case("new_optimizer-init_args-lr-string", ("phase 2: new_optimizer.init_args.lr",
                                               "expected a number", "'2e-4'"),
         edits=(set_("2.new_optimizer.init_args.lr", "2e-4"),)),
    Case("new_lr_scheduler-in-phase-0", ("phase 0: new_lr_scheduler", "[lr_scheduler]"),
         edits=(set_("0.new_lr_scheduler", STEP_LR),)),
    Case("new_lr_scheduler-class-typo", ("phase 1: new_lr_scheduler.class_path", "'StepLR'"),
         edits=(set_("1.new_lr_scheduler.class_path", "StepLRR"),)),
    Case("new_lr_scheduler-untested", ("phase 1: new_lr_scheduler.class_path",
                                       "allow_untested"),
         edits=(set_("1.new_lr_scheduler", {"class_path": "PolynomialLR",
                                            "init_args": {"total_iters": 5}}),)),
    Case("new_lr_scheduler-composite", ("phase 1: new_lr_scheduler.class_path",
                                        "not supported"),
         edits=(set_("1.new_lr_scheduler", {"class_path": "SequentialLR"}),)),
    Case("new_lr_scheduler-init_args-unknown", ("phase 1: new_lr_scheduler.init_args",
                                                "step_size"),
         edits=(set_("1.new_lr_scheduler.init_args", {"step": 5}),)),
    Case("new_lr_scheduler-init_args-string-value",
         ("phase 1: new_lr_scheduler.init_args.step_size", "expected an integer, got '5'"),
         edits=(set_("1.new_lr_scheduler.init_args", {"step_size": "5"}),)),
    Case("new_lr_scheduler-T_max-zero", ("phase 3: new_lr_scheduler.init_args",
                                         "ZeroDivisionError", "T_max"),
         edits=(set_("3.new_lr_scheduler.init_args", {"T_max": 0}),)),
    Case("new_lr_scheduler-gamma-list", ("phase 1: new_lr_scheduler.init_args.gamma",
                                         "expected a number, got [0.5]"),
         edits=(set_("1.new_lr_scheduler.init_args", {"step_size": 5, "gamma": [0.5]}),)),
    Case("new_lr_scheduler-eta_min-bool", ("phase 3: new_lr_scheduler.init_args.eta_min",
                                           "expected a number, got True"),
         edits=(set_("3.new_lr_scheduler.init_args.eta_min", True),)),
    Case("new_lr_scheduler-milestones-string",
         ("phase 1: new_lr_scheduler.init_args.milestones", "a list of integers"),
         edits=(set_("1.new_lr_scheduler", {"class_path": "MultiStepLR",
                                            "init_args": {"milestones": "12,16"}}),)),
    Case("init_pg_lrs-wrong-length", ("phase 3: new_lr_scheduler.init_pg_lrs", "4 param group"),
         edits=(set_("3.new_lr_scheduler.init_pg_lrs", [2e-4, 2e-4, 1e-4]),)),
    Case("init_pg_lrs-string-entry", ("phase 3: new_lr_scheduler.init_pg_lrs[2]", "'2e-4'"),
         edits=(set_("3.new_lr_scheduler.init_pg_lrs", [2e-4, 2e-4, "2e-4", 1e-4]),)),
    Case("init_pg_lrs-not-a-list", ("phase 3: new_lr_scheduler.init_pg_lrs", "list"),
         edits=(set_("3.new_lr_scheduler.init_pg_lrs", 1e-4),)),
    Case("init_pg_lrs-negative", ("phase 3: new_lr_scheduler.init_pg_lrs[0]", "positive"),
         edits=(set_("3.new_lr_scheduler.init_pg_lrs", [-2e-4, 2e-4, 2e-4, 1e-4]),)),
    Case("init_pg_lrs-contradicts-lr", ("phase 3: new_lr_scheduler.init_pg_lrs", "lr = 0.0001"),
         edits=(set_("3.new_lr_scheduler.init_pg_lrs", [2e-4] * 4),)),
    Case("use_current_optimizer_pg_lrs-string",
         ("phase 1: new_lr_scheduler.use_current_optimizer_pg_lrs", "true or false"),
         edits=(set_("1.new_lr_scheduler.use_current_optimizer_pg_lrs", "yes"),)),
    Case("use_current_with_init_pg_lrs",
         ("phase 3: new_lr_scheduler.use_current_optimizer_pg_lrs", "conflicts"),
         edits=(set_("3.new_lr_scheduler.use_current_optimizer_pg_lrs", True),)),
    Case("lr_lambda-list-wrong-length", ("phase 3: new_lr_scheduler.init_args",
                                         "Expected 4 lr_lambdas, but got 2"),
         edits=(set_("3.new_lr_scheduler", {"class_path": "LambdaLR", "init_args": {
             "lr_lambda": ["math.cos", "math.cos"]}}),)),
    Case("lr_lambda-function-missing", ("phase 1: new_lr_scheduler.init_args", "warmup"),
         edits=(set_("1.new_lr_scheduler", {"class_path": "LambdaLR", "init_args": {
             "lr_lambda": "math.warmup"}}),)),
    Case("reduce_on_plateau-without-validation", ("phase 1: new_lr_scheduler.class_path",
                                                  "[validation] enable = false"),
         edits=(set_("1.new_lr_scheduler", {"class_path": "ReduceLROnPlateau"}),)),
    Case("reduce_on_plateau-min_lr-wrong-length",
         ("phase 1: new_lr_scheduler.init_args", "expected 2 min_lrs, got 3"),
         edits=(job_set("validation.enable", True),
                set_("1.new_lr_scheduler", {"class_path": "ReduceLROnPlateau",
                                            "init_args": {"min_lr": [0.0, 0.0, 0.0]}}))),
    # --- everything at once ------------------------------------------------------------------
    Case("all-at-once", ("phases.restore_bset", "phases.nonfinite_loss", "phase 0: lr",
                         "phase 1: max_transtion_step", "phase 2: params[0]",
                         "phase 3: new_lr_scheduler.init_pg_lrs"), "job",
         edits=(job_set("phases.restore_bset", True), job_set("phases.nonfinite_loss", "skip"),
                set_("0.lr", 1e-3), set_("1.max_transtion_step", 20),
                set_("2.params", [r"layers\.[3-5]\..+"]),
                set_("3.new_lr_scheduler.init_pg_lrs", [1e-4])),
         problems=6),
]


def _write_case(case: Case, folder: Path) -> tuple[Path, Path]:
    job = tomllib.loads((FIXTURES / "job.toml").read_text())
    tokenizer = folder / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")  # all the input check looks for
    job["model"]["hf_assets_path"] = str(tokenizer)
    schedule = tomllib.loads((FIXTURES / "schedule.toml").read_text())
    for edit in case.edits:
        edit(job, schedule)
    for name, text in case.files:
        (folder / name).write_text(text)
    job_path, schedule_path = folder / "job.toml", folder / "schedule.toml"
    job_text = dumps(job, header_depth=4)
    if case.job_text is not None:
        job_text = case.job_text(job_text)
    job_path.write_bytes(job_text.encode("utf-8", errors="surrogateescape"))
    if case.schedule_bytes is not None:
        schedule_path.write_bytes(case.schedule_bytes)
    else:
        text = dumps(schedule, header_depth=2)
        schedule_path.write_text(text if case.schedule_text is None else case.schedule_text(text))
    return job_path, schedule_path


def _check(case: Case, output: str, files: dict[str, Path]) -> None:
    assert "Traceback" not in output, output
    for expected in case.expect:
        assert expected in output, f"{expected!r} not in:\n{output}"
    if case.names is not None:
        named = str(files[case.names])
        assert any(named in line and case.expect[0] in line for line in output.splitlines()), (
            f"no line names both {named} and {case.expect[0]!r}:\n{output}")
    if case.problems is not None:
        assert f"({case.problems} problems)" in output, output


@pytest.fixture(autouse=True)
def hub_unreachable(monkeypatch):
    """The Hugging Face Hub cannot be reached and caches nothing, whatever this machine's
    network and caches."""
    from titan_phases.data import availability

    monkeypatch.setattr(availability, "_resolves", lambda host: False)
    monkeypatch.setattr(availability, "_hub_offline", lambda: False)
    monkeypatch.setattr(availability, "_in_hub_cache", lambda repo_id: False)


def _params(cases: list[Case]) -> list[Any]:
    return [pytest.param(c, id=c.id, marks=c.marks) for c in cases]


@pytest.mark.parametrize("case", _params(CASES))
def test_validate_refuses_malformed_input(case: Case, tmp_path: Path, capfd, monkeypatch):
    job_path, schedule_path = _write_case(case, tmp_path)
    monkeypatch.chdir(tmp_path)
    config = job_path if case.config_file is None else tmp_path / case.config_file
    dump = tmp_path / "dump"
    try:
        code = main(["validate", "--job.config_file", str(config),
                     "--job.dump_folder", str(dump), *case.args])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capfd.readouterr()
    assert code == 2, out + err
    _check(case, out + err, {"job": job_path, "schedule": schedule_path})
    assert not dump.exists()


def test_the_base_job_is_valid(tmp_path: Path, capfd):
    job_path, _ = _write_case(Case("valid", ()), tmp_path)
    code = main(["validate", "--job.config_file", str(job_path),
                 "--job.dump_folder", str(tmp_path / "dump")])
    out, err = capfd.readouterr()
    assert code == 0, out + err
    assert "OK: 4 phase(s), explicit schedule" in out


# What the training ranks stop on, or silently do otherwise, that validate used to pass: the
# input check run_train.sh runs before torchrun starts, and every rank runs before anything
# else (titan_phases.prepare.check_input), refuses it as validate does.
START_CHECK_CASES = [c for c in CASES if c.id in (
    "model-name-not-phased", "custom_config_module-absent", "hf_assets_path-missing",
    "hf_assets_path-without-tokenizer", "training-dataset-unknown",
    "training-dataset-in-torchtitans-repository", "training-dataset_path-missing",
    "validation-dataset-on-an-unreachable-hub", "converters-unknown",
    "converters-float8-cannot-run-here", "initial_load_path-with-checkpointing-off",
    "cycle-always_train-string", "job-problems-at-once", "flag-switch-given-false",
    "flag-switch-given-a-value-with-equals", "flag-schedule_file-and-inline-overrides",
)]


@pytest.mark.parametrize("case", _params(START_CHECK_CASES))
def test_the_start_check_refuses_what_validate_refuses(case: Case, tmp_path: Path, capfd,
                                                       monkeypatch):
    from titan_phases.prepare import main as start_check

    job_path, schedule_path = _write_case(case, tmp_path)
    monkeypatch.chdir(tmp_path)
    dump = tmp_path / "dump"
    code = start_check(["--job.config_file", str(job_path), "--job.dump_folder", str(dump),
                        *case.args])
    out, err = capfd.readouterr()
    assert code == 2 and out == "", out + err
    assert "nothing was run" in err
    _check(case, err, {"job": job_path, "schedule": schedule_path})
    assert not dump.exists()


# A flag, a job TOML value and a schedule value that used to reach torchrun: a traceback from
# the input check, and training that crashed at its first StepLR step; a job without
# custom_config_module, on which torchtitan's own parsing stopped every rank with a traceback.
RUN_TRAIN_CASES = [c for c in CASES if c.id in (
    "flag-steps-not-an-int", "training-steps-string", "new_lr_scheduler-init_args-string-value",
    "custom_config_module-absent",
)]


@pytest.mark.e2e
@pytest.mark.parametrize("case", _params(RUN_TRAIN_CASES))
def test_run_train_refuses_malformed_input_before_training(case: Case, tmp_path: Path):
    job_path, schedule_path = _write_case(case, tmp_path)
    dump = tmp_path / "dump"
    result = launches.run(
        f"./run_train.sh ({case.id})",
        ["./run_train.sh", "--job.dump_folder", str(dump), *case.args],
        cwd=REPO, env={**os.environ, "CONFIG_FILE": str(job_path), "NGPU": "2"},
        capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    _check(case, output, {"job": job_path, "schedule": schedule_path})
    assert not dump.exists()
    assert "Training starts" not in output
    assert not re.search(r"step:\s*\d", output)
    # Found before torchrun starts: reported once, not once per rank.
    assert output.count("nothing was run") == 1
    assert "torch.distributed" not in output
