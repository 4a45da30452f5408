"""Which rank this process is, for work that one rank does for all (logging, pruning files)."""

from __future__ import annotations

import torch.distributed as dist


def is_rank0() -> bool:
    """True on global rank 0, and in a process without ``torch.distributed``."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """``dist.barrier()`` when ``torch.distributed`` is initialised; nothing otherwise."""
    if dist.is_initialized():
        dist.barrier()
