"""The study's training jobs: one pretraining run on corpus A, fine-tuning runs on corpus B.

Both are ``torchrun --nproc_per_node 2 -m titan_phases.train`` with a repository config and
command-line overrides:

* pretraining: ``train_configs/pretrain_debug_model.toml`` as it is, with a longer run and the
  study's dump folder;
* fine-tuning: ``train_configs/debug_model.toml`` minus its inline ``[phases.schedule]``
  (:func:`write_finetune_config` writes that one change into the output folder), then the
  strategy's schedule file or generated-schedule settings, the study's budget, validation,
  checkpoints and the seed's data order.

**Limitations**
The fine-tuning config is derived rather than used as it is for the strategies without a
schedule file (generated and block-cyclic schedules): they need a job without a schedule, and the
command line cannot remove an inline one (a ``--phases.schedule_file`` given there replaces it,
which is all the other strategies would need).
Every checkpoint is a full one (model, optimizer, LR scheduler, dataloader, phases): torchtitan
0.2.2 saves model-only checkpoints at the last step only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from studies.forgetting.settings import Settings
from studies.forgetting.strategies import DEFAULT_JOB
from titan_phases.components.metrics_file import Metrics
from titan_phases.components.metrics_file import read_metrics as read_metrics_file
from titan_phases.config.toml_writer import dumps

REPO = Path(__file__).resolve().parents[2]
PRETRAIN_CONFIG = REPO / "train_configs" / "pretrain_debug_model.toml"
NPROC = 2


def write_finetune_config(out: Path) -> Path:
    """The default job config without its inline schedule, as ``<out>/finetune.toml``."""
    tables = tomllib.loads(DEFAULT_JOB.read_text())
    del tables["phases"]["schedule"]
    path = out / "finetune.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(tables, header=(
        f"{DEFAULT_JOB.relative_to(REPO)} without its [phases.schedule] (written by "
        "studies.forgetting: each strategy passes its own schedule, or none)")))
    return path


def _seq_len_args(settings: Settings) -> list[str]:
    if settings.seq_len is None:
        return []
    return ["--training.seq_len", str(settings.seq_len),
            "--validation.seq_len", str(settings.seq_len)]


def pretrain_args(settings: Settings, dump: Path, tokenizer: Path) -> list[str]:
    args = [*_seq_len_args(settings),
        "--job.config_file", str(PRETRAIN_CONFIG), "--job.dump_folder", str(dump),
        "--model.hf_assets_path", str(tokenizer),
        "--training.steps", str(settings.pretrain_steps),
        "--checkpoint.interval", str(settings.pretrain_steps),
    ]
    if settings.pretrain_warmup is not None:
        args += ["--lr_scheduler.warmup_steps", str(settings.pretrain_warmup)]
    return args


def pretrained_checkpoint(settings: Settings, dump: Path) -> Path:
    """Where the pretraining job leaves its (model-only) last checkpoint."""
    return dump / "checkpoint" / f"step-{settings.pretrain_steps}"


def shared_args(settings: Settings, config: Path, tokenizer: Path) -> list[str]:
    """The arguments every fine-tuning job shares: config, tokenizer, sequence length and what
    validation measures; enough for :class:`studies.forgetting.evaluate.Evaluator`.
    """
    return [
        "--job.config_file", str(config), "--model.hf_assets_path", str(tokenizer),
        "--validation.freq", str(settings.eval_every),
        "--validation.steps", str(settings.validation_steps),
        *_seq_len_args(settings),
    ]


def finetune_args(
    settings: Settings, config: Path, tokenizer: Path, dump: Path, initial: Path,
    train_file: Path, seed: int, strategy_args: list[str],
) -> list[str]:
    """The arguments of a fine-tuning job (see the module docstring)."""
    return [
        *shared_args(settings, config, tokenizer), "--job.dump_folder", str(dump),
        "--training.steps", str(settings.steps), "--training.dataset_path", str(train_file),
        "--debug.seed", str(seed),
        # Keep every checkpoint: the study evaluates each, then deletes them itself.
        "--checkpoint.interval", str(settings.eval_every), "--checkpoint.keep_latest_k", "0",
        "--checkpoint.initial_load_path", str(initial),
        # One record per step: the step times add up to the run's training time exactly.
        "--metrics.log_freq", "1",
        "--phases.transition_mode", "step",
        *strategy_args,
    ]


def command(args: list[str]) -> list[str]:
    """The torchrun command line of a job, printing rank 0's output only."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(NPROC),
        "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0", "--local-ranks-filter", "0",
        "-m", "titan_phases.train", *args,
    ]


def run(args: list[str], log_path: Path, timeout: float = 1200) -> float:
    """Run a job, its output into ``log_path``; return its wall time or raise with the log."""
    # One thread per rank: the two ranks share the machine's two cores.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.run(command(args), cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        raise RuntimeError(f"job failed (exit {proc.returncode}), log {log_path}:\n{tail}")
    return time.monotonic() - start


def read_metrics(dump: Path) -> Metrics:
    """The job's ``metrics.jsonl``, read by titan_phases' rule (a job runs once into its
    folder)."""
    return read_metrics_file(dump)
