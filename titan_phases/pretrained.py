"""Where a fine-tuning job's initial checkpoint comes from when it does not exist yet.

A job config may name a *recipe*: another job config whose run writes the checkpoint that
``[checkpoint] initial_load_path`` points to. The default fine-tune uses this to pretrain the
llama3 debug model once on the embedded Python-docs corpus; later runs reuse the checkpoint.

``python -m titan_phases.prepare --job.config_file X [overrides]`` (called by run_train.sh)
builds the embedded data assets and prints the recipe to run, or nothing.
"""

import os
from dataclasses import dataclass


@dataclass
class PretrainedStage:
    recipe: str = ""
    """
    Job config (TOML) that produces ``checkpoint.initial_load_path`` when that path does not
    exist. Relative paths are relative to the current directory, like torchtitan's paths.
    Leave empty to require the initial checkpoint to exist.
    """


def pending_recipe(initial_load_path: str | None, stage: PretrainedStage) -> str | None:
    """The recipe to run first, or None when nothing is missing or nothing can produce it."""
    if not initial_load_path or os.path.exists(initial_load_path) or not stage.recipe:
        return None
    if not os.path.isfile(stage.recipe):
        raise FileNotFoundError(
            f"[pretrained] recipe = {stage.recipe!r} does not exist; it should be the job config "
            f"that writes [checkpoint] initial_load_path = {initial_load_path!r}"
        )
    return stage.recipe
