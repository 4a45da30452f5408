"""Records every backward pass of a real job, and every FSDP2 all-gather inside one.

Loaded on every rank through ``tests/trainer/rank_hooks.py`` (``experimental.custom_import``). With
``TITAN_PHASES_TEST_ALL_GATHERS=<folder>`` each rank appends one JSON line per backward call to
``<folder>/rank<R>.jsonl``, ``{"backward": k, "tensors": n}`` (``n``: the tensors it starts
from that need grad; a pipeline stage below every trainable one starts from none), and one per
all-gather inside it, ``{"backward": k, "fqns": [...]}``, where ``k`` counts this process's
backward calls from 1 (one per microbatch) and ``fqns`` are the parameters the unshard gathers.
Without the variable nothing is patched.

Relies on private torch APIs: every FSDP2 unshard goes through
``torch.distributed.fsdp._fully_shard._fsdp_param_group.foreach_all_gather``, and
``FSDPParam._param_fqn`` names each parameter.
"""

import json
import os
from pathlib import Path

import torch

FOLDER = os.environ.get("TITAN_PHASES_TEST_ALL_GATHERS")


class _Recorder:
    def __init__(self, path: Path):
        self.path = path
        self.backward = 0
        self.inside = False

    def install(self) -> None:
        from torch.distributed.fsdp._fully_shard import _fsdp_param_group

        backward, all_gather = torch.autograd.backward, _fsdp_param_group.foreach_all_gather

        def counted_backward(tensors, *args, **kwargs):
            self.backward += 1
            started = tensors if isinstance(tensors, (list, tuple)) else [tensors]
            self._write({"backward": self.backward,
                         "tensors": sum(bool(getattr(t, "requires_grad", False))
                                        for t in started)})
            self.inside = True
            try:
                return backward(tensors, *args, **kwargs)
            finally:
                self.inside = False

        def recorded_all_gather(fsdp_params, *args, **kwargs):
            if self.inside:
                self._write({"backward": self.backward,
                             "fqns": [p._param_fqn for p in fsdp_params]})
            return all_gather(fsdp_params, *args, **kwargs)

        torch.autograd.backward = counted_backward
        _fsdp_param_group.foreach_all_gather = recorded_all_gather

    def _write(self, line: dict) -> None:
        # Opened per line: ranks leave through os._exit, which drops buffered writes.
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


def read(folder: Path) -> dict[int, list[dict]]:
    """Rank -> its records (backward calls and all-gathers), in order."""
    return {
        int(path.stem.removeprefix("rank")): [
            json.loads(line) for line in path.read_text().splitlines()
        ]
        for path in sorted(folder.glob("rank*.jsonl"))
    }


if FOLDER:
    Path(FOLDER).mkdir(parents=True, exist_ok=True)
    _Recorder(Path(FOLDER) / f"rank{os.environ.get('RANK', '0')}.jsonl").install()
