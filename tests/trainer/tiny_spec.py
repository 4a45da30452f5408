"""A tiny llama3 flavor for end-to-end trainer tests, loaded by ``experimental.custom_import``.

``TITAN_PHASES_TEST_STALL_AT_STEP=N`` makes every rank stall right after logging step ``N``
(before that step's checkpoint is saved), so a test can SIGKILL the job at a known point: the
last complete checkpoint is then step ``N - 1``.
"""

import dataclasses
import os
import time

from torchtitan.models.llama3 import TransformerModelArgs
from torchtitan.protocols.train_spec import get_train_spec, register_train_spec

from titan_phases.components.metrics import PhaseMetricsProcessor
from titan_phases.train_spec import phased

STALL_AT_STEP = int(os.environ.get("TITAN_PHASES_TEST_STALL_AT_STEP", "-1"))


class _StallingMetricsProcessor(PhaseMetricsProcessor):
    def log(self, step, *args, **kwargs):
        super().log(step, *args, **kwargs)
        if step == STALL_AT_STEP:
            time.sleep(3600)


def _build_metrics_processor(job_config, parallel_dims, model_args=None, tag=None):
    return _StallingMetricsProcessor(job_config, parallel_dims, tag)


register_train_spec(
    "llama3_phases_test",
    dataclasses.replace(
        phased(get_train_spec("llama3")),
        model_args={
            "tiny": TransformerModelArgs(
                dim=64, n_layers=4, n_heads=4, vocab_size=2048, rope_theta=500000
            )
        },
        build_metrics_processor_fn=_build_metrics_processor,
    ),
)
