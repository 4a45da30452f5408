"""Ranks agree on what is wrong with a job's input before any of them stops.

torchrun tears every worker down as soon as one exits. A rank that found a problem and exited
at once could therefore cut the others off before they said anything, or leave them waiting
in a collective for a peer that is gone. So ranks exchange what each found, every rank prints
the same report, and they wait for one another before exiting.

Before torchtitan has set up ``torch.distributed`` the exchange runs on a short-lived gloo
process group (:func:`input_check_group`), which is destroyed again before the Trainer creates
its own; gloo needs no accelerator, so this is the same on CPU and GPU machines.

**Limitations**
A rank that crashes or hangs before it reaches the exchange is not waited for beyond
torchrun's own handling (a crash stops all workers) and the process group timeout.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

import torch.distributed as dist

from titan_phases.runtime.process_exit import exit_process

_STORE_PREFIX = "titan_phases/input_check"
_stores: list[dist.Store] = []


def _launched_with_peers() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def input_check_group() -> Iterator[None]:
    """A gloo process group for the input check, when launched by torchrun with several ranks.

    Does nothing if ``torch.distributed`` is already initialised or the job has one rank.
    """
    temporary = _launched_with_peers() and not dist.is_initialized()
    if temporary:
        store, rank, world_size = next(dist.rendezvous("env://"))
        # torch names a re-created default group as it named the first one, so the Trainer's
        # group could read this group's stale addresses from the shared store: use other keys.
        # Kept alive for the process: without torchrun's agent store, rank 0 hosts the store
        # server, which the Trainer's group then shares instead of racing to start a new one.
        _stores.append(store)
        dist.init_process_group(
            "gloo", store=dist.PrefixStore(_STORE_PREFIX, store), rank=rank, world_size=world_size
        )
    try:
        yield
    finally:
        if temporary and dist.is_initialized():
            dist.destroy_process_group()


def combine_reports(reports: Sequence[str | None]) -> str | None:
    """The one report every rank prints, from each rank's own (None: that rank found nothing).

    Identical reports are printed once; ranks that disagree (e.g. nodes that do not see the
    same files) are named with what each of them found.
    """
    found: dict[str, list[int]] = {}
    for rank, report in enumerate(reports):
        if report is not None:
            found.setdefault(report, []).append(rank)
    if not found:
        return None
    if len(found) == 1 and len(next(iter(found.values()))) == len(reports):
        return next(iter(found))
    lines = ["ranks found different problems; check that every node sees the same files:"]
    clean = [rank for rank, report in enumerate(reports) if report is None]
    if clean:
        lines.append(f"{_ranks(clean)}: no problem")
    lines += [f"{_ranks(ranks)}: {report}" for report, ranks in found.items()]
    return "\n".join(lines)


def _ranks(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(map(str, ranks))


def agreed_report(report: str | None) -> str | None:
    """Exchange this rank's report with every other rank; return :func:`combine_reports`."""
    if not dist.is_initialized():
        return report
    reports: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(reports, report)
    return combine_reports(reports)


def exit_together(message: str, code: int) -> NoReturn:
    """Print ``message`` to stderr, wait until every rank has printed too, then exit.

    Ends the process (:func:`~titan_phases.runtime.process_exit.exit_process`); only for
    entry points, never for code a caller expects to return.
    """
    print(message, file=sys.stderr, flush=True)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    exit_process(code)
