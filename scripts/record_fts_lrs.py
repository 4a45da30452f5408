"""Record finetuning-scheduler's learning rates, per step and param group, as test fixtures.

Each case below is a fine-tuning schedule run by FTS (``FinetuningScheduler`` with
``epoch_transitions_only=True`` and ``restore_best=False``) under Lightning on a tiny model
whose parameters carry the llama3 debug model's names (behind Lightning's ``model.`` prefix).
An epoch is ``steps_per_epoch`` optimizer steps, phase 0's scheduler is stepped every step,
and the lr of every param group is read right before every optimizer step. For each case the
script writes, into ``tests/fixtures/fts/``:

* ``<case>.yaml``: the FTS schedule, as FTS read it;
* ``<case>.json``: the run's settings (optimizer, phase-0 warmup, FTS arguments, steps per
  epoch, epochs), the versions it ran with and ``lrs[step - 1][group]``.

``tests/components/test_fts_lr_parity.py`` converts each YAML with ``import-fts``, runs the
same steps through titan_phases' optimizer and LR scheduler containers and compares.

Phase 0's scheduler is a ``LambdaLR`` with the factor torchtitan's ``[lr_scheduler]`` gives
for ``warmup_steps`` and linear decay to 0 over the run (``decay_ratio`` unset,
``min_lr_factor = 0``), so titan_phases' stock phase 0 schedule is compared too. Gradients do
not change any lr here (there is no ``ReduceLROnPlateau``), so the model and data are minimal.

Rerun (Lightning and FTS are never dependencies of titan_phases: use a separate venv; the
Lightning and FTS pins are the ``fts-parity`` extra in pyproject.toml, torch 2.13 is the tested
release)::

    python3.11 -m venv /tmp/fts-venv
    /tmp/fts-venv/bin/pip install torch==2.13.0 pyyaml lightning==2.6.6 finetuning-scheduler==2.14.1
    /tmp/fts-venv/bin/python scripts/record_fts_lrs.py [--out tests/fixtures/fts] [CASE ...]

It imports nothing from titan_phases, so it runs without torchtitan. The recorded lrs do not
depend on the machine (no gradient reaches an lr), so a rerun with the same releases records
the same lrs.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import platform
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml

VOCAB, DIM, N_LAYERS, SEQ = 16, 4, 6, 4
_LAYER_NAMES = [
    "attention.wq.weight", "attention.wk.weight", "attention.wv.weight", "attention.wo.weight",
    "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight",
    "attention_norm.weight", "ffn_norm.weight",
]


def _phases(*phases: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return dict(enumerate(phases))


def _scheduler(class_path: str, interval: str = "step", frequency: int = 1,
               **kwargs: Any) -> dict[str, Any]:
    init_args = kwargs.pop("init_args")
    return {
        "lr_scheduler_init": {"class_path": f"torch.optim.lr_scheduler.{class_path}",
                              "init_args": init_args},
        "pl_lrs_cfg": {"interval": interval, "frequency": frequency, "name": "reinit_lr"},
        **kwargs,
    }


HEAD = ["model.output.weight", "model.norm.weight"]
SGD = {"class_path": "torch.optim.SGD", "init_args": {"lr": 1.0e-3}}

# name -> (description, settings, schedule). Transitions are at epoch boundaries.
CASES: dict[str, tuple[str, dict[str, Any], dict[int, dict[str, Any]]]] = {
    "reinit_init_pg_lrs": (
        "SGD + StepLR with init_pg_lrs, then AdamW + CosineAnnealingWarmRestarts with "
        "init_pg_lrs (the shape of FTS's explicit reinit example)",
        {},
        _phases(
            {"params": HEAD, "max_transition_epoch": 2},
            {"params": ["model.layers.5.(attention|feed_forward).*",
                        "model.layers.5.ffn_norm.weight"],
             "lr": 2.0e-3, "max_transition_epoch": 4,
             "new_optimizer": {"optimizer_init": {"class_path": "torch.optim.SGD", "init_args": {
                 "lr": 4.0e-3, "momentum": 0.9, "weight_decay": 2.0e-6}}},
             "new_lr_scheduler": _scheduler("StepLR", init_args={"step_size": 3, "gamma": 0.5},
                                            init_pg_lrs=[5.0e-3, 6.0e-3])},
            {"params": ["model.layers.[34].*"], "lr": 1.5e-3, "max_transition_epoch": 7,
             "new_optimizer": {"optimizer_init": {"class_path": "torch.optim.AdamW", "init_args": {
                 "lr": 3.0e-3, "weight_decay": 1.0e-5, "eps": 1.0e-7}}},
             "new_lr_scheduler": _scheduler(
                 "CosineAnnealingWarmRestarts", init_args={"T_0": 3, "T_mult": 2, "eta_min": 1e-5},
                 init_pg_lrs=[1.0e-3, 2.0e-3, 2.5e-3])},
        ),
    ),
    "reinit_without_init_pg_lrs": (
        "optimizer + scheduler reinits without init_pg_lrs (SGD + StepLR, then AdamW + "
        "CosineAnnealingWarmRestarts), then a scheduler-only reinit, then a phase without lr",
        {},
        _phases(
            {"params": HEAD, "max_transition_epoch": 2},
            {"params": ["model.layers.5.*"], "lr": 2.0e-3, "max_transition_epoch": 4,
             "new_optimizer": {"optimizer_init": {"class_path": "torch.optim.SGD", "init_args": {
                 "lr": 4.0e-3, "momentum": 0.9}}},
             "new_lr_scheduler": _scheduler("StepLR", init_args={"step_size": 3, "gamma": 0.5})},
            {"params": ["model.layers.4.*"], "lr": 1.0e-3, "max_transition_epoch": 6,
             "new_optimizer": {"optimizer_init": {"class_path": "torch.optim.AdamW", "init_args": {
                 "lr": 3.0e-3}}},
             "new_lr_scheduler": _scheduler("CosineAnnealingWarmRestarts", init_args={
                 "T_0": 3, "T_mult": 2, "eta_min": 1e-5})},
            {"params": ["model.layers.3.*"], "lr": 5.0e-4, "max_transition_epoch": 8,
             "new_lr_scheduler": _scheduler("ExponentialLR", init_args={"gamma": 0.8})},
            {"params": ["model.layers.2.*"], "max_transition_epoch": 9},
        ),
    ),
    **{
        f"join_running_apply_lambdas_{'on' if apply else 'off'}": (
            "new groups join a running schedule: phase 1 joins phase 0's LambdaLR, phase 3 joins "
            f"a StepLR started in phase 2; apply_lambdas_new_pgs={apply}",
            {"apply_lambdas_new_pgs": apply},
            _phases(
                {"params": HEAD, "max_transition_epoch": 2},
                {"params": ["model.layers.5.*"], "lr": 2.0e-3, "max_transition_epoch": 4},
                {"params": ["model.layers.4.*"], "lr": 1.0e-3, "max_transition_epoch": 6,
                 "new_lr_scheduler": _scheduler("StepLR", init_args={"step_size": 2, "gamma": 0.5},
                                                init_pg_lrs=[1.0e-3, 2.0e-3, 1.0e-3])},
                {"params": ["model.layers.3.*"], "lr": 8.0e-3, "max_transition_epoch": 8},
            ),
        )
        for apply in (False, True)
    },
    "use_current_optimizer_pg_lrs": (
        "use_current_optimizer_pg_lrs with a chained scheduler (ExponentialLR: same lrs) and "
        "with CosineAnnealingWarmRestarts (FTS restarts at initial_lr: a documented difference)",
        {},
        _phases(
            {"params": HEAD, "max_transition_epoch": 2},
            {"params": ["model.layers.5.*"], "lr": 2.0e-3, "max_transition_epoch": 4,
             "new_lr_scheduler": _scheduler("StepLR", init_args={"step_size": 2, "gamma": 0.5},
                                            init_pg_lrs=[3.0e-3, 2.0e-3])},
            {"params": ["model.layers.4.*"], "lr": 1.0e-3, "max_transition_epoch": 6,
             "new_lr_scheduler": _scheduler("ExponentialLR", init_args={"gamma": 0.9},
                                            use_current_optimizer_pg_lrs=True)},
            {"params": ["model.layers.3.*"], "lr": 5.0e-4, "max_transition_epoch": 8,
             "new_lr_scheduler": _scheduler(
                 "CosineAnnealingWarmRestarts", init_args={"T_0": 3, "eta_min": 1e-5},
                 use_current_optimizer_pg_lrs=True)},
        ),
    ),
    "frequency": (
        "pl_lrs_cfg frequency > 1: StepLR every 2 steps, MultiStepLR every 2 epochs starting "
        "at an odd epoch, ExponentialLR every epoch",
        {},
        _phases(
            {"params": HEAD, "max_transition_epoch": 1},
            {"params": ["model.layers.5.*"], "lr": 2.0e-3, "max_transition_epoch": 3,
             "new_lr_scheduler": _scheduler("StepLR", frequency=2,
                                            init_args={"step_size": 1, "gamma": 0.5})},
            {"params": ["model.layers.4.*"], "lr": 1.0e-3, "max_transition_epoch": 8,
             "new_lr_scheduler": _scheduler("MultiStepLR", interval="epoch", frequency=2,
                                            init_args={"milestones": [1, 2], "gamma": 0.5})},
            {"params": ["model.layers.3.*"], "lr": 5.0e-4, "max_transition_epoch": 11,
             "new_lr_scheduler": _scheduler("ExponentialLR", interval="epoch",
                                            init_args={"gamma": 0.5})},
        ),
    ),
    "frequency_inexact": (
        "pl_lrs_cfg frequency 2 with CosineAnnealingLR, which import-fts cannot convert exactly "
        "(a documented difference: the lrs agree every 2nd step)",
        {},
        _phases(
            {"params": HEAD, "max_transition_epoch": 1},
            {"params": ["model.layers.5.*"], "lr": 2.0e-3, "max_transition_epoch": 4,
             "new_lr_scheduler": _scheduler("CosineAnnealingLR", frequency=2,
                                            init_args={"T_max": 4, "eta_min": 1e-4})},
        ),
    ),
}
DEFAULTS: dict[str, Any] = {
    "steps_per_epoch": 4,
    "optimizer": SGD,
    "warmup_steps": 2,
    "apply_lambdas_new_pgs": False,
    "base_max_lr": 1.0e-5,
}


def warmup_linear_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """The factor of torchtitan's default ``[lr_scheduler]`` shape (linear warmup, then linear
    decay to 0 at ``total_steps``) for a 0-based scheduler step."""
    if step < warmup_steps:
        return float((step + 1) / warmup_steps)
    return 1 - float(step - warmup_steps) / (total_steps - warmup_steps)


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(DIM, DIM, bias=False) for _ in range(4))


class _FeedForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w1, self.w2, self.w3 = (nn.Linear(DIM, DIM, bias=False) for _ in range(3))


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = _Attention()
        self.feed_forward = _FeedForward()
        self.attention_norm = nn.RMSNorm(DIM)
        self.ffn_norm = nn.RMSNorm(DIM)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, x = self.attention, self.attention_norm(h)
        h = h + a.wo(a.wq(x) * torch.sigmoid(a.wk(x)) + a.wv(x))
        f, x = self.feed_forward, self.ffn_norm(h)
        return h + f.w2(F.silu(f.w1(x)) * f.w3(x))


class TinyLlamaNames(nn.Module):
    """Tiny shapes, llama3 debug model parameter names (``tok_embeddings.weight``,
    ``layers.<i>.attention.wq.weight``, ..., ``norm.weight``, ``output.weight``)."""

    def __init__(self) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.layers = nn.ModuleDict({str(i): _Block() for i in range(N_LAYERS)})
        self.norm = nn.RMSNorm(DIM)
        self.output = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for layer in self.layers.values():
            h = layer(h)
        return self.output(self.norm(h))


def _run(name: str, settings: dict[str, Any], schedule_path: Path, epochs: int,
         workdir: Path) -> tuple[list[list[float]], list[int]]:
    import lightning.pytorch as pl
    from finetuning_scheduler import FinetuningScheduler, FTSCheckpoint

    total_steps = epochs * settings["steps_per_epoch"]
    optimizer_cfg = settings["optimizer"]

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = TinyLlamaNames()

        def _loss(self, batch: torch.Tensor) -> torch.Tensor:
            logits = self.model(batch[:, :-1])
            return F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))

        def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
            return self._loss(batch)

        def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
            self.log("val_loss", self._loss(batch))

        def configure_optimizers(self) -> dict[str, Any]:
            module, cls = optimizer_cfg["class_path"].rsplit(".", 1)
            optimizer_cls = getattr(__import__(module, fromlist=[cls]), cls)
            optimizer = optimizer_cls([p for p in self.parameters() if p.requires_grad],
                                      **optimizer_cfg["init_args"])
            factor = functools.partial(warmup_linear_decay, warmup_steps=settings["warmup_steps"],
                                       total_steps=total_steps)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    lrs: list[list[float]] = []
    depths: list[int] = []

    class Recorder(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            lrs.append([float(g["lr"]) for g in optimizer.param_groups])
            depths.append(fts.curr_depth)

    torch.manual_seed(0)
    data = torch.randint(0, VOCAB, (settings["steps_per_epoch"], SEQ + 1))
    loader = torch.utils.data.DataLoader(data, batch_size=1)
    fts = FinetuningScheduler(
        ft_schedule=str(schedule_path), epoch_transitions_only=True, restore_best=False,
        apply_lambdas_new_pgs=settings["apply_lambdas_new_pgs"],
        base_max_lr=settings["base_max_lr"], log_dir=str(workdir),
    )
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=str(workdir), limit_val_batches=1,
        callbacks=[fts, FTSCheckpoint(monitor="val_loss", dirpath=str(workdir / "ckpt")),
                   Recorder()],
    )
    trainer.fit(Module(), train_dataloaders=loader, val_dataloaders=loader)
    if len(lrs) != total_steps:
        raise RuntimeError(f"{name}: recorded {len(lrs)} steps, expected {total_steps}")
    return lrs, depths


def record(name: str, out: Path) -> Path:
    import finetuning_scheduler
    import lightning

    description, overrides, schedule = CASES[name]
    settings = {**DEFAULTS, **overrides}
    # The last phase's max_transition_epoch is the run's length (FTS needs one on every phase
    # with epoch_transitions_only).
    epochs = schedule[max(schedule)]["max_transition_epoch"]
    out.mkdir(parents=True, exist_ok=True)
    schedule_path = out / f"{name}.yaml"
    schedule_path.write_text(
        f"# FTS schedule of the '{name}' LR parity case: {description}.\n"
        "# Written by scripts/record_fts_lrs.py; the lrs FTS gave it are in the .json next to it.\n"
        + yaml.safe_dump(schedule, sort_keys=False)
    )
    with tempfile.TemporaryDirectory() as workdir:
        lrs, depths = _run(name, settings, schedule_path, epochs, Path(workdir))
    record_path = out / f"{name}.json"
    record_path.write_text(json.dumps({
        "case": name,
        "description": description,
        "schedule": schedule_path.name,
        "recorded_with": {
            "finetuning_scheduler": finetuning_scheduler.__version__,
            "lightning": lightning.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "epochs": epochs,
        **settings,
        "fts": {"epoch_transitions_only": True, "restore_best": False},
        "phase_at_step": depths,
        "lrs": lrs,
    }, indent=1) + "\n")
    return record_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", metavar="CASE",
                        help=f"cases to record (default: all of {', '.join(CASES)})")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1]
                        / "tests" / "fixtures" / "fts")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; cases: {', '.join(CASES)}")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    for name in args.cases or CASES:
        print(f"wrote {record(name, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
