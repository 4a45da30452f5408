"""The adapter on torchtitan's CheckpointManager: on real DCP checkpoints in one process, and
with torchtitan's own CheckpointManager in async mode with ``keep_latest_k`` on two ranks."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from tests.components.checkpointing.test_integrity import flip_64_bytes
from tests.dist import run_ranks
from titan_phases.components.checkpointing.format import PHASES_KEY
from titan_phases.components.checkpointing.integrity import (
    choose_checkpoint,
    record_path,
    RECORD_PREFIX,
    verify,
    verify_on_ranks,
)
from titan_phases.components.checkpointing.manager import install
from titan_phases.components.phase_controller import PhaseController


class _Manager:
    """What the adapter uses of torchtitan's CheckpointManager; saves write real DCP folders."""

    def __init__(self, folder: Path, enable: bool = True) -> None:
        self.enable, self.folder = enable, str(folder)
        self.last_save_model_only = True
        self.exclude_from_loading: list[str] = []
        self.enable_ft_dataloader_checkpoints = False
        self.save_future = None
        self.states = {"model": SimpleNamespace(state_dict=lambda: {"model.w": torch.ones(2)})}
        self.saved: list[tuple[int, bool, bool]] = []
        self.loaded_from: list[str] = []

    def _create_checkpoint_id(self, step: int) -> str:
        return str(Path(self.folder) / f"step-{step}")

    def _should_save(self, step: int, last_step: bool = False) -> bool:
        return self.enable

    def save(self, step: int, last_step: bool = False) -> None:
        self.saved.append((step, last_step, self.last_save_model_only))
        dcp.save({"model": {"w": torch.ones(2)}}, checkpoint_id=self._create_checkpoint_id(step),
                 no_dist=True)

    def load(self, step: int = -1) -> bool:
        self.loaded_from.append(self.folder)
        return False


def _controller() -> PhaseController:
    return PhaseController([2, None], [["output.weight"], ["layers.0.w"]])


def _config(load_step: int = -1, initial_load_path: str = "") -> SimpleNamespace:
    return SimpleNamespace(
        load_step=load_step, initial_load_path=initial_load_path, initial_load_in_hf=False
    )


def _resume(manager: _Manager, config: SimpleNamespace, dp_world_size: int = 2) -> str | None:
    checkpointing = install(manager, _controller())
    return checkpointing.prepare_resume(
        config, _controller(), lambda phase: None, lambda checkpoint: None, dp_world_size
    )


def test_install_saves_the_phase_state_and_records_every_save(tmp_path: Path):
    manager = _Manager(tmp_path)
    controller = _controller()
    install(manager, controller)
    assert manager.states[PHASES_KEY] is controller
    manager.save(3)  # what torchtitan's trainer calls
    assert manager.saved == [(3, False, True)]
    assert record_path(tmp_path / "step-3", 0).is_file()
    assert verify(tmp_path / "step-3") == []


def test_a_full_save_redoes_a_step_whose_folder_is_torn(tmp_path: Path):
    manager = _Manager(tmp_path)
    checkpointing = install(manager, _controller())
    (tmp_path / "step-6").mkdir()
    (tmp_path / "step-6" / "__0_0.distcp").write_bytes(b"torn")
    assert checkpointing.save_full([], 6) == str(tmp_path / "step-6")
    assert manager.saved == [(6, True, False)]
    assert manager.last_save_model_only is True
    assert checkpointing.save_full([], 6) == str(tmp_path / "step-6")
    assert manager.saved == [(6, True, False)]  # complete now: not saved twice
    assert install(_Manager(tmp_path, enable=False), _controller()).save_full([], 7) is None


def test_the_newest_complete_checkpoint_is_the_one_torchtitan_loads(tmp_path: Path):
    manager = _Manager(tmp_path)
    manager.save(3)
    (tmp_path / "step-7").mkdir()  # torn: no .metadata
    config = _config()
    assert _resume(manager, config) == str(tmp_path / "step-3")
    assert config.load_step == 3
    assert _resume(_Manager(tmp_path, enable=False), _config()) is None


def test_a_folder_without_a_complete_checkpoint_loads_the_initial_weights_once(tmp_path: Path):
    (tmp_path / "step-1").mkdir()  # a kill during the first save
    manager = _Manager(tmp_path)
    assert _resume(manager, _config()) is None
    manager.load()
    manager.load()
    # The first load looks in a folder that does not exist, which makes torchtitan load
    # initial_load_path; later ones are torchtitan's own.
    assert manager.loaded_from == [str(tmp_path / "titan_phases-no-complete-checkpoint"),
                                   str(tmp_path)]


def _save_with_dataloaders(path: Path, ranks: int) -> None:
    state = {
        "model": {"w": torch.ones(2)},
        "dataloader": {f"dp_rank_{r}": {"sample": torch.tensor(r)} for r in range(ranks)},
    }
    dcp.save(state, checkpoint_id=path, no_dist=True)


def test_the_dataloader_is_left_out_only_when_the_data_parallel_ranks_changed(tmp_path: Path):
    _save_with_dataloaders(tmp_path / "step-6", ranks=2)
    same = _Manager(tmp_path)
    _resume(same, _config(), dp_world_size=2)
    assert same.exclude_from_loading == []
    fewer = _Manager(tmp_path)
    fewer.exclude_from_loading = ["lr_scheduler"]
    _resume(fewer, _config(), dp_world_size=1)
    assert fewer.exclude_from_loading == ["lr_scheduler", "dataloader"]
    explicit = _Manager(tmp_path)
    explicit.exclude_from_loading = ["dataloader"]
    _resume(explicit, _config(), dp_world_size=1)
    assert explicit.exclude_from_loading == ["dataloader"]


class _Counter:
    """A Stateful standing in for the optimizer and LR scheduler containers."""

    def __init__(self) -> None:
        self.count = 0

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


def _async_saves_with_keep_latest_k(rank: int, world_size: int, root: str) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torchtitan.components.checkpoint import CheckpointManager
    from torchtitan.config.job_config import Checkpoint

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    fully_shard(model, mesh=init_device_mesh("cpu", (world_size,)))
    config = Checkpoint(
        enable=True, interval=1, async_mode="async", keep_latest_k=2, last_save_model_only=False
    )
    checkpointer = CheckpointManager(
        dataloader=_Counter(),
        model_parts=[model],
        optimizers=_Counter(),
        lr_schedulers=_Counter(),
        states={},
        checkpoint_config=config,
        sd_adapter=None,
        base_folder=root,
    )
    checkpointing = install(checkpointer, _controller())
    for step in range(1, 7):
        with torch.no_grad():
            for param in model.parameters():
                param.add_(1.0)
        # Steps 1-5 are saved asynchronously, each followed by a purge; the last step
        # synchronously, without a purge.
        checkpointer.save(step, last_step=step == 6)
    checkpointing.wait()
    checkpointer.close()  # joins the purge thread
    dist.barrier()
    folder = Path(checkpointer.folder)
    kept = sorted(os.listdir(folder))
    result = {
        "kept": kept,
        "records": {
            name: sorted(p.name for p in (folder / name).glob(f"{RECORD_PREFIX}*")) for name in kept
        },
        "data": sorted(p.name for p in (folder / "step-6").glob("*.distcp")),
        "problems": {name: verify_on_ranks(folder / name) for name in kept},
    }
    dist.barrier()
    if rank == 0:
        flip_64_bytes(folder / "step-6" / "__1_0.distcp")
    dist.barrier()
    result["damaged"] = verify_on_ranks(folder / "step-6")
    choice = choose_checkpoint(folder, -1, verify_on_ranks)
    result["choice"] = (choice.step, [(s.step, s.reason) for s in choice.skipped])
    return result


@pytest.mark.e2e
def test_async_saves_on_two_ranks_with_keep_latest_k_are_recorded(tmp_path: Path):
    results = run_ranks(_async_saves_with_keep_latest_k, 2, str(tmp_path))
    assert results[0] == results[1]
    result = results[0]
    # The purge after step 5 keeps steps 4 and 5, and step 3 too if step 5's async save had
    # not created its folder yet.
    kept = result["kept"]
    assert kept[-3:] == ["step-4", "step-5", "step-6"] and len(kept) <= 4 and "step-2" not in kept
    records = [f"{RECORD_PREFIX}0.json", f"{RECORD_PREFIX}1.json"]
    assert result["records"] == {name: records for name in kept}
    assert result["data"] == ["__0_0.distcp", "__1_0.distcp"]
    assert result["problems"] == {name: [] for name in kept}
    damaged_file = str(tmp_path / "checkpoint" / "step-6" / "__1_0.distcp")
    (problem,) = result["damaged"]
    assert problem.startswith(f"{damaged_file}: contents changed")
    step, skipped = result["choice"]
    assert step == 5 and skipped == [(6, f"damaged: {problem}")]
