"""What every rank of a test job imports (``experimental.custom_import``, directly or through
``tiny_spec.py``): the backward recorder (:mod:`tests.trainer.backward_all_gathers`), and no
fixed wait at the end of training.

torchtitan's ``Trainer.train`` ends with rank 0 sleeping 2 seconds "for other ranks to
complete"; a test job launches ~70 times a suite, so that is over two minutes of CI spent
waiting. The ranks' exit without it is what ``tests/runtime/test_process_exit.py`` checks.
The numbers a job writes do not depend on it: it comes after the last step and the last save.

Relies on torchtitan 0.2.2's ``torchtitan.train`` reaching the ``time`` module through its
module global ``time`` (for ``perf_counter`` and that ``sleep``).
"""

import time
import types

import torchtitan.train

import tests.trainer.backward_all_gathers  # noqa: F401  (records when its variable is set)

_FINAL_WAIT_S = 2


class _TimeWithoutTheFinalWait(types.ModuleType):
    """``time``, but for ``sleep(2)``, which returns at once."""

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds != _FINAL_WAIT_S:
            time.sleep(seconds)


torchtitan.train.time = _TimeWithoutTheFinalWait("time")
