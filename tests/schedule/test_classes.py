"""Optimizer classes from torchtitan's ``[optimizer]`` section."""

import pytest
import torch
from torchtitan.config import Optimizer as OptimizerConfig

from titan_phases.schedule.classes import optimizer_from_config


def test_builder_takes_any_torch_optim_class_with_the_fields_it_accepts():
    sgd_cls, sgd_kwargs = optimizer_from_config(
        OptimizerConfig(name="SGD", lr=0.3, implementation="foreach")
    )
    assert sgd_cls is torch.optim.SGD
    assert sgd_kwargs == {"lr": 0.3, "weight_decay": 0.1, "foreach": True, "fused": False}
    rms_cls, rms_kwargs = optimizer_from_config(
        OptimizerConfig(name="torch.optim.RMSprop", implementation="for-loop")
    )
    assert (
        rms_cls is torch.optim.RMSprop
        and rms_kwargs["foreach"] is False
        and "betas" not in rms_kwargs
    )
    with pytest.raises(ValueError, match="Adadelta has no fused implementation"):
        optimizer_from_config(OptimizerConfig(name="Adadelta", implementation="fused"))
    with pytest.raises(ImportError):
        optimizer_from_config(OptimizerConfig(name="NoSuchOptimizer"))
