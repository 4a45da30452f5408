"""``python -m titan_phases.train``: torchtitan's training entry point with titan_phases' specs.

Launched by ``run_train.sh`` through ``torchrun``. On machines without an accelerator the CPU
runtime is switched on first, before torchtitan's trainer module copies its device settings.
"""

from titan_phases.runtime.cpu import activate_if_no_accelerator

activate_if_no_accelerator()

from torchtitan.train import Trainer, main  # noqa: E402

from titan_phases.data.assets import ensure_assets  # noqa: E402
from titan_phases.train_spec import register_train_specs  # noqa: E402

if __name__ == "__main__":
    ensure_assets()
    register_train_specs()
    main(Trainer)
