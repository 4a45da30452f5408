"""The resume sequence, on real DCP checkpoints and without a process group."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed.checkpoint as dcp

from titan_phases.components.checkpointing.format import PhaseMismatchError, PHASES_KEY
from titan_phases.components.checkpointing.integrity import verify
from titan_phases.components.checkpointing.resume import (
    checkpoint_to_load,
    exclude_dataloader_if_resharded,
    initial_weights_problem,
    rebuild_to_checkpoint,
    resume_report,
    save_full_checkpoint,
)
from titan_phases.components.phase_controller import (
    PhaseController,
    REASON_STEP,
    ScheduleMismatchError,
)

PARAMS = [["output.weight"], ["layers.1.w"], ["layers.0.w"]]


def _controller(params=PARAMS) -> PhaseController:
    return PhaseController([2, 4, None], params)


def _save(path: Path, controller: PhaseController | None) -> str:
    state = {"model": {"w": torch.ones(2)}}
    if controller is not None:
        state[PHASES_KEY] = controller
    dcp.save(state, checkpoint_id=path, no_dist=True)
    return str(path)


def _in_phase_2() -> PhaseController:
    controller = _controller()
    for completed in range(5):
        transition = controller.due(completed)
        if transition:
            controller.commit(transition)
    assert controller.phase == 2
    return controller


def test_rebuilds_phase_by_phase_then_verifies_the_optimizer(tmp_path: Path):
    checkpoint = _save(tmp_path / "step-5", _in_phase_2())
    calls: list[object] = []
    live = _controller()
    phase = rebuild_to_checkpoint(checkpoint, live, calls.append, lambda c: calls.append(c))
    assert phase == live.phase == 2
    assert calls == [1, 2, checkpoint]
    assert [t.reason for t in live.history] == [REASON_STEP, REASON_STEP]


def test_a_checkpoint_without_phase_state_stays_in_phase_0(tmp_path: Path):
    checkpoint = _save(tmp_path / "initial", None)
    calls: list[object] = []
    assert rebuild_to_checkpoint(checkpoint, _controller(), calls.append, calls.append) == 0
    assert calls == []


def test_a_changed_schedule_is_refused_before_anything_is_entered(tmp_path: Path):
    checkpoint = _save(tmp_path / "step-5", _in_phase_2())
    changed = [["output.weight"], ["layers.1.w", "layers.0.w"], ["tok_embeddings.weight"]]
    calls: list[object] = []
    with pytest.raises(ScheduleMismatchError, match=r"step-5: the checkpoint is in phase 2"):
        rebuild_to_checkpoint(checkpoint, _controller(changed), calls.append, calls.append)
    assert calls == []


def test_an_optimizer_that_does_not_fit_is_refused_with_its_reason(tmp_path: Path):
    checkpoint = _save(tmp_path / "step-5", _in_phase_2())

    def verify(checkpoint_id: str) -> None:
        raise PhaseMismatchError(f"{checkpoint_id} optimizes other parameters")

    with pytest.raises(ScheduleMismatchError, match="optimizes other parameters"):
        rebuild_to_checkpoint(checkpoint, _controller(), lambda phase: None, verify)


def test_the_checkpoint_to_load_is_the_newest_complete_one(tmp_path: Path):
    _save(tmp_path / "step-3", _in_phase_2())
    (tmp_path / "step-7").mkdir()  # torn: no .metadata
    checkpointer = SimpleNamespace(enable=True, folder=str(tmp_path))
    choice = checkpoint_to_load(checkpointer, -1, verify=verify)
    assert choice.step == 3 and choice.path == str(tmp_path / "step-3")
    assert [s.step for s in choice.skipped] == [7]
    assert checkpoint_to_load(SimpleNamespace(enable=False, folder=str(tmp_path)), -1) is None
    fresh = checkpoint_to_load(
        SimpleNamespace(enable=True, folder=str(tmp_path / "none")), -1, verify=verify
    )
    assert fresh.fresh_start


def _checkpoint_config(initial_load_path: str = "", load_step: int = -1) -> SimpleNamespace:
    return SimpleNamespace(
        initial_load_path=initial_load_path, initial_load_in_hf=False, load_step=load_step
    )


def test_a_fresh_start_from_a_missing_initial_path_names_it(tmp_path: Path):
    missing = str(tmp_path / "pretrained" / "step-100")
    config = _checkpoint_config(missing)
    problem = initial_weights_problem(config, str(tmp_path / "checkpoint"), {"w": (2,)})
    assert f"initial_load_path = {missing!r} does not exist" in problem
    assert initial_weights_problem(_checkpoint_config(), str(tmp_path), {"w": (2,)}) is None
    resumes, reported = resume_report(
        config, str(tmp_path / "checkpoint"), _controller(), verify, {"w": (2,)}
    )
    assert resumes is None and reported == problem
    pending = resume_report(
        config, str(tmp_path / "checkpoint"), _controller(), verify, {"w": (2,)},
        initial_weights_pending=True,
    )
    assert pending == (None, None)


def test_initial_weights_of_another_model_are_refused(tmp_path: Path):
    initial = tmp_path / "pretrained"
    dcp.save({"w": torch.ones(2)}, checkpoint_id=initial, no_dist=True)
    config = _checkpoint_config(str(initial))
    assert initial_weights_problem(config, str(tmp_path / "ckpt"), {"w": (2,)}) is None
    problem = initial_weights_problem(config, str(tmp_path / "ckpt"), {"w": (3,)})
    assert problem.startswith("[checkpoint] initial_load_path: ")
    assert "w is [2] there and [3] in this job's model" in problem
    (initial / ".metadata").unlink()
    problem = initial_weights_problem(config, str(tmp_path / "ckpt"), {"w": (2,)})
    assert f"initial_load_path = {str(initial)!r} is not a complete DCP checkpoint" in problem


def test_resume_report_refuses_a_checkpoint_of_another_model(tmp_path: Path):
    _save(tmp_path / "step-5", _in_phase_2())
    resumes, problem = resume_report(
        _checkpoint_config(), str(tmp_path), _controller(), verify, {"model.w": (4,)}
    )
    assert resumes is None and "model.w is [2] there and [4]" in problem
    resumes, problem = resume_report(
        _checkpoint_config(), str(tmp_path), _controller(), verify, {"model.w": (2,)}
    )
    assert problem is None and resumes.endswith("phase 2 after step 5")


class _Checkpointer:
    """What save_full_checkpoint uses of torchtitan's CheckpointManager."""

    def __init__(self, folder: Path) -> None:
        self.enable, self.folder, self.last_save_model_only = True, folder, True
        self.saved: list[tuple[int, bool, bool]] = []

    def _create_checkpoint_id(self, step: int) -> str:
        return str(self.folder / f"step-{step}")

    def save(self, step: int, last_step: bool = False) -> None:
        self.saved.append((step, last_step, self.last_save_model_only))
        _save(Path(self._create_checkpoint_id(step)), None)


def test_a_full_save_redoes_a_step_whose_folder_is_torn(tmp_path: Path):
    checkpointer = _Checkpointer(tmp_path)
    (tmp_path / "step-6").mkdir()
    (tmp_path / "step-6" / "__0_0.distcp").write_bytes(b"torn")
    assert save_full_checkpoint(checkpointer, [], 6) == str(tmp_path / "step-6")
    assert checkpointer.saved == [(6, True, False)]
    assert checkpointer.last_save_model_only is True
    assert save_full_checkpoint(checkpointer, [], 6) == str(tmp_path / "step-6")
    assert checkpointer.saved == [(6, True, False)]  # complete now: not saved twice


def test_the_dataloader_is_left_out_only_when_the_data_parallel_ranks_changed(tmp_path: Path):
    saved = tmp_path / "step-6"
    state = {"dataloader": {f"dp_rank_{r}": {"sample": torch.tensor(r)} for r in range(2)}}
    dcp.save(state, checkpoint_id=saved, no_dist=True)

    def checkpointer(*excluded: str) -> SimpleNamespace:
        return SimpleNamespace(exclude_from_loading=list(excluded))

    same = checkpointer()
    assert exclude_dataloader_if_resharded(same, str(saved), 2) is None
    assert same.exclude_from_loading == []
    fewer = checkpointer("lr_scheduler")
    assert exclude_dataloader_if_resharded(fewer, str(saved), 1) == 2
    assert fewer.exclude_from_loading == ["lr_scheduler", "dataloader"]
    explicit = checkpointer("dataloader")
    assert exclude_dataloader_if_resharded(explicit, str(saved), 1) is None
    assert explicit.exclude_from_loading == ["dataloader"]
