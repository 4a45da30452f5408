"""A rank that leaves right after its last collective while a DeviceMesh still holds the group.

Run under torchrun. ``exit-process`` leaves through ``titan_phases``' exit path;
``interpreter-exit`` returns normally, which lets the interpreter tear the live gloo threads
down during finalization and aborts some ranks with SIGABRT.
"""

import os
import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from titan_phases.runtime.process_exit import exit_process

mesh = init_device_mesh("cpu", (int(os.environ["WORLD_SIZE"]),))
dist.all_reduce(torch.ones(8))
# Keep the GIL on the main thread, so a gloo worker that still has to free the last tensor
# must wait for it until the main thread has started to leave.
sys.setswitchinterval(100)
dist.all_reduce(torch.ones(1 << 16), async_op=True).wait()
dist.destroy_process_group()
if sys.argv[1] == "exit-process":
    exit_process(0)
