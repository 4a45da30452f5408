"""Is a saved DCP checkpoint intact, and which checkpoint of a folder to load.

DCP writes a checkpoint's ``.metadata`` last, so a folder without one is *incomplete* (its save
was interrupted). A complete folder can still be *damaged* afterwards: a truncated ``.distcp``
file makes every rank fail with an EOFError, and flipped bytes load silently. So once DCP has
finished a save, every rank writes an *integrity record* into the checkpoint folder, listing
the size and checksum of each file it wrote, and :func:`verify` checks them before loading.

Saving (:func:`write_record`, :func:`record_when_done`; the checkpoint adapter
:mod:`.manager` records every save):

* Each rank hashes only the files it wrote itself (DCP's FileSystemWriter names them
  ``__<rank>_<i>.distcp``); rank 0, DCP's coordinator, also hashes ``.metadata``. The work is
  spread over the ranks, each reads files still hot in its own page cache, and no rank reads
  another node's files; no collective is needed, so the record can be written on the
  background thread that completes an async save. Each rank writes its own record
  (``titan_phases.integrity.rank<r>.json``) atomically (temporary file, fsync, ``os.replace``)
  after the data, so a record exists only for files DCP finished.
* A save that fails on a full disk stops training with one clear message
  (:mod:`.save_failure`); its folder stays incomplete.
* The checksum is xxHash's XXH3 (64 bits; the ``xxhash`` package, which ``datasets`` already
  requires) over a memory map of the file: about 10 GB/s on one core, at least three times
  zlib's crc32 and six times sha1 (``python -m bench.integrity``, BENCHMARKS.md). It detects
  accidental damage, not tampering.

Loading (:func:`verify`, :func:`choose_checkpoint`):

* :func:`verify` reads every rank's record and reads each file once: missing, a size that
  differs from its record, contents whose checksum differs. When a record is missing (a
  checkpoint saved by stock torchtitan or an older titan_phases, an ``initial_load_path``
  checkpoint, a rank stopped between DCP's end and its record), it parses ``.metadata`` to
  learn which files the checkpoint needs and how many bytes of each: files no record covers
  are accepted if they are that long, with a log line saying they were not verified.
* :func:`choose_checkpoint` picks the newest intact checkpoint (or checks the one
  ``--checkpoint.load_step`` names), names every folder it skipped and why, and says when the
  folder holds no complete checkpoint at all, i.e. the job is a fresh start.

With ``keep_latest_k`` torchtitan deletes whole step folders, records included. A record is
written into the newest folder, which is never the one deleted (torchtitan keeps at least two).

**Limitations** (private APIs this module relies on; check on upgrades)
DCP's FileSystemWriter file names (``__<rank>_<i>.distcp``, ``.metadata``) and the
``relative_path``/``offset``/``length`` fields of its ``_StorageInfo`` entries in
``Metadata.storage_data``. Only file-system DCP checkpoints are covered (not HF safetensors
exports, not torchft's per-replica checkpoints). A rank killed in the milliseconds between
DCP's end and its record, while re-saving a step folder that already held a checkpoint, leaves
the previous save's record behind: that checkpoint then reads as damaged and an older one is
loaded. Files are hashed through a memory map: another process truncating a file while it is
hashed kills this one with SIGBUS.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import re
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist
import xxhash
from torch.distributed.checkpoint import FileSystemReader

__all__ = [
    "ALGORITHM",
    "CheckpointLoadError",
    "LoadChoice",
    "RECORD_PREFIX",
    "Skipped",
    "choose_checkpoint",
    "is_complete",
    "record_checkpoint",
    "record_path",
    "record_when_done",
    "verify",
    "verify_on_ranks",
    "write_record",
]

logger = logging.getLogger(__name__)

RECORD_PREFIX = "titan_phases.integrity.rank"
"""Integrity records are ``<checkpoint>/titan_phases.integrity.rank<r>.json``, one per rank."""

ALGORITHM = "xxh3_64"
"""The checksum of every file in a record."""

FORMAT_VERSION = 1

_METADATA = ".metadata"
_STEP_FOLDER = re.compile(r"step-(0|[1-9][0-9]*)")
_INCOMPLETE = "incomplete: it has no .metadata (its save did not finish)"


class CheckpointLoadError(ValueError):
    """No checkpoint of the folder can be loaded as asked; the message says what to do."""


@dataclass(frozen=True)
class Skipped:
    """A step folder that was not loaded, and why (``incomplete: ...`` or ``damaged: ...``)."""

    step: int
    path: str
    reason: str


@dataclass(frozen=True)
class LoadChoice:
    """What to load from a checkpoint folder.

    ``step`` is None when the folder holds no complete checkpoint: the job is a fresh start and
    must load its initial weights (``checkpoint.initial_load_path``), as for a missing folder.
    ``skipped`` lists every step folder not loaded, newest first.
    """

    step: int | None
    path: str | None
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def fresh_start(self) -> bool:
        return self.step is None


def is_complete(checkpoint_dir: str | os.PathLike) -> bool:
    """Whether DCP finished saving ``checkpoint_dir`` (its ``.metadata``, written last, exists)."""
    return (Path(checkpoint_dir) / _METADATA).is_file()


def record_path(checkpoint_dir: str | os.PathLike, rank: int) -> Path:
    """Where ``rank`` writes its integrity record of the checkpoint."""
    return Path(checkpoint_dir) / f"{RECORD_PREFIX}{rank}.json"


def _checksum(path: Path) -> str:
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return xxhash.xxh3_64_hexdigest(b"")
        # A memory map hashes the page cache in place, where reading into a buffer first
        # would copy every byte. xxhash releases the GIL while it hashes.
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return xxhash.xxh3_64_hexdigest(view)


def write_record(
    checkpoint_dir: str | os.PathLike, rank: int = 0, world_size: int = 1
) -> Path | None:
    """Write ``rank``'s integrity record of a DCP checkpoint whose save has finished.

    Call it on every rank that took part in the save, with its rank in the save's process
    group and that group's size. Returns the record's path, or None when the rank wrote no
    file there (e.g. an HF safetensors export).
    """
    directory = Path(checkpoint_dir)
    names = sorted(p.name for p in directory.glob(f"__{rank}_*.distcp"))
    if rank == 0 and (directory / _METADATA).is_file():
        names.append(_METADATA)
    if not names:
        return None
    files = {
        name: {"size": (directory / name).stat().st_size, ALGORITHM: _checksum(directory / name)}
        for name in names
    }
    record = {
        "format_version": FORMAT_VERSION, "rank": rank, "world_size": world_size, "files": files
    }
    path = record_path(directory, rank)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as f:
        json.dump(record, f, indent=1)
        f.flush()
        # As DCP does for its own files: the record must not be lost or torn by a crash.
        os.fsync(f.fileno())
    os.replace(temporary, path)
    return path


def record_checkpoint(checkpoint_dir: str | os.PathLike, rank: int, world_size: int) -> None:
    """:func:`write_record`, logging a warning instead of raising when it cannot be written."""
    try:
        write_record(checkpoint_dir, rank, world_size)
    except OSError as exc:
        # The data is saved; without its record the checkpoint is only unverified, which must
        # not stop training.
        logger.warning("No integrity record of %s: %s", checkpoint_dir, exc)


def record_when_done(
    save_future: Future, checkpoint_dir: str | os.PathLike, rank: int = 0, world_size: int = 1
) -> Future[None]:
    """Write ``rank``'s record once the async save behind ``save_future`` has finished.

    The record is written by whichever thread completes ``save_future`` (DCP's async save
    executor thread, i.e. in the background), or at once on the calling thread if it is
    already done. Nothing is written for a failed or cancelled save. The returned future
    completes after the record.
    """
    recorded: Future[None] = Future()

    def record(done: Future) -> None:
        try:
            if not done.cancelled() and done.exception() is None:
                record_checkpoint(checkpoint_dir, rank, world_size)
        finally:
            recorded.set_result(None)

    save_future.add_done_callback(record)
    return recorded


def _read_record(path: Path) -> dict[str, Any]:
    with open(path) as f:
        record = json.load(f)
    if record["format_version"] > FORMAT_VERSION:
        raise ValueError(
            f"format version {record['format_version']} is newer than this titan_phases "
            f"understands ({FORMAT_VERSION})"
        )
    if not isinstance(record["rank"], int) or not isinstance(record["world_size"], int):
        raise ValueError("malformed rank or world_size")
    for entry in record["files"].values():
        if not isinstance(entry["size"], int) or not isinstance(entry[ALGORITHM], str):
            raise ValueError(f"malformed entry {entry}")
    return record


def _names_every_file(records: list[dict[str, Any]]) -> bool:
    """Whether the records are those of every rank of one save (then they list every file)."""
    world_sizes = {record["world_size"] for record in records}
    return len(world_sizes) == 1 and sorted(r["rank"] for r in records) == list(
        range(world_sizes.pop())
    )


def _needed_sizes(directory: Path) -> dict[str, int]:
    """``{file name: bytes the checkpoint reads from it}``, from the checkpoint's .metadata."""
    needed: dict[str, int] = {}
    for info in (FileSystemReader(directory).read_metadata().storage_data or {}).values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    return needed


def _check_file(
    path: Path, entry: dict[str, Any] | None, needed: int, checksums: bool
) -> str | None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path}: missing"
    if entry is None:
        if size < needed:
            return f"{path}: truncated: {size} bytes, its .metadata needs at least {needed}"
        return None
    if size != entry["size"]:
        how = "truncated" if size < entry["size"] else "grown"
        return f"{path}: {how}: {size} bytes, {entry['size']} when saved"
    if not checksums:
        return None
    checksum = _checksum(path)
    if checksum != entry[ALGORITHM]:
        return (
            f"{path}: contents changed since the save ({ALGORITHM} {checksum}, "
            f"{entry[ALGORITHM]} when saved)"
        )
    return None


def verify(
    checkpoint_dir: str | os.PathLike, rank: int = 0, world_size: int = 1, checksums: bool = True
) -> list[str]:
    """Problems with a DCP checkpoint, each naming its file; empty when it is intact.

    ``checksums=False`` checks sizes only, which reads no file contents.

    With ``world_size > 1`` only every ``world_size``-th file (from ``rank``) is checked, for
    :func:`verify_on_ranks`. Each file is read once; ``.metadata`` is also parsed (to know
    which files the checkpoint needs) unless the records of every rank of the save are there.
    """
    directory = Path(checkpoint_dir)
    if not is_complete(directory):
        return [f"{directory / _METADATA}: missing: the save did not finish"]
    problems: list[str] = []
    records: list[dict[str, Any]] = []
    for path in sorted(directory.glob(f"{RECORD_PREFIX}*.json")):
        try:
            records.append(_read_record(path))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            problems.append(f"{path}: unreadable integrity record: {exc!r}")
    recorded = {name: entry for record in records for name, entry in record["files"].items()}
    needed: dict[str, int] = {}
    if not problems and _METADATA in recorded and _names_every_file(records):
        # Parsing .metadata can cost more than hashing the files (a pickle of every tensor's
        # chunks), and the records already name every file.
        names = sorted(recorded)
    else:
        try:
            needed = _needed_sizes(directory)
        except Exception as exc:  # unpickling damaged bytes can raise almost anything
            problems.append(f"{directory / _METADATA}: unreadable: {exc!r}")
            names = sorted({_METADATA, *recorded})
        else:
            names = [_METADATA, *sorted(needed)]
    unrecorded = [name for name in names if name not in recorded]
    if unrecorded and len(unrecorded) == len(names):
        logger.info(
            "%s has no titan_phases integrity record (saved by stock torchtitan, an older "
            "titan_phases or another job): its files are only checked to be as long as its "
            ".metadata says",
            directory,
        )
    elif unrecorded:
        logger.warning(
            "%s: no integrity record covers %s (a rank stopped before writing its record?): "
            "only checked to be as long as its .metadata says",
            directory,
            ", ".join(unrecorded),
        )
    for name in names[rank::world_size]:
        problem = _check_file(
            directory / name, recorded.get(name), needed.get(name, 0), checksums
        )
        if problem is not None:
            problems.append(problem)
    return problems


def verify_on_ranks(checkpoint_dir: str | os.PathLike) -> list[str]:
    """:func:`verify` with the files shared out among the ranks; every rank gets all problems.

    A collective on the default process group when ``torch.distributed`` is initialised: call
    it on every rank, for the same checkpoint.
    """
    if not dist.is_initialized():
        return verify(checkpoint_dir)
    world_size = dist.get_world_size()
    found: list[list[str] | None] = [None] * world_size
    dist.all_gather_object(found, verify(checkpoint_dir, dist.get_rank(), world_size))
    return [problem for problems in found for problem in problems or []]


def _step_folders(folder: str | os.PathLike) -> dict[int, Path]:
    if not os.path.isdir(folder):
        return {}
    steps = {}
    for name in os.listdir(folder):
        match = _STEP_FOLDER.fullmatch(name)
        if match and os.path.isdir(os.path.join(folder, name)):
            steps[int(match.group(1))] = Path(folder) / name
    return steps


def _holds(folder: str | os.PathLike, steps: dict[int, Path], complete: list[int]) -> str:
    if not os.path.isdir(folder):
        return f"the checkpoint folder {folder} does not exist"
    if not steps:
        return f"the checkpoint folder {folder} holds no checkpoint"
    incomplete = ", ".join(map(str, sorted(set(steps) - set(complete))))
    if not complete:
        return f"{folder} holds no complete checkpoint (incomplete: steps {incomplete})"
    text = f"{folder} holds the checkpoints of steps {', '.join(map(str, sorted(complete)))}"
    return text + (f" (incomplete: steps {incomplete})" if incomplete else "")


def _newest_intact(
    steps: dict[int, Path], candidates: list[int], verify: Callable[[str], list[str]]
) -> str:
    for step in candidates:
        if not verify(str(steps[step])):
            return f"--checkpoint.load_step {step} loads the newest intact one, {steps[step]}"
    return "no other checkpoint there is intact"


def choose_checkpoint(
    folder: str | os.PathLike,
    load_step: int = -1,
    verify: Callable[[str], list[str]] = verify,
) -> LoadChoice:
    """The checkpoint of ``folder`` to load for ``--checkpoint.load_step`` (-1: the newest).

    With -1 the newest complete checkpoint that ``verify`` finds intact is chosen; newer
    damaged ones and incomplete ones (at any step) are skipped with a warning naming them.
    A folder that is missing or holds no complete checkpoint is a fresh start. Raises
    :class:`CheckpointLoadError` when every complete checkpoint is damaged, and when
    ``load_step`` names a step that is missing, incomplete or damaged. Pass
    :func:`verify_on_ranks` as ``verify`` on several ranks (then call it on every rank).
    """
    steps = _step_folders(folder)
    complete = sorted((s for s, p in steps.items() if is_complete(p)), reverse=True)
    skipped = [
        Skipped(step, str(steps[step]), _INCOMPLETE)
        for step in sorted(steps, reverse=True)
        if step not in complete
    ]
    if load_step != -1:
        return _check_requested(folder, load_step, steps, complete, skipped, verify)
    for step in complete:
        problems = verify(str(steps[step]))
        if not problems:
            return _chosen(LoadChoice(step, str(steps[step]), _newest_first(skipped)))
        skipped.append(Skipped(step, str(steps[step]), "damaged: " + "; ".join(problems)))
    if complete:
        raise CheckpointLoadError(
            f"no checkpoint in {folder} is intact: "
            + "; ".join(f"step {s.step} is {s.reason}" for s in _newest_first(skipped))
            + ". Restore the damaged files, or move the folder away to start again from the "
            "initial weights"
        )
    return _chosen(LoadChoice(None, None, skipped))


def _newest_first(skipped: list[Skipped]) -> list[Skipped]:
    return sorted(skipped, key=lambda s: s.step, reverse=True)


def _chosen(choice: LoadChoice) -> LoadChoice:
    instead = (
        f"loading {choice.path} instead"
        if choice.path is not None
        else "no complete checkpoint is left: starting from the initial weights"
    )
    for skipped in choice.skipped:
        logger.warning("Skipping checkpoint %s, %s; %s", skipped.path, skipped.reason, instead)
    return choice


def _check_requested(
    folder: str | os.PathLike,
    load_step: int,
    steps: dict[int, Path],
    complete: list[int],
    skipped: list[Skipped],
    verify: Callable[[str], list[str]],
) -> LoadChoice:
    others = [step for step in complete if step != load_step]
    if load_step not in steps:
        raise CheckpointLoadError(
            f"--checkpoint.load_step {load_step}: there is no checkpoint of step {load_step}: "
            f"{_holds(folder, steps, complete)}"
        )
    path = steps[load_step]
    if load_step not in complete:
        raise CheckpointLoadError(
            f"--checkpoint.load_step {load_step}: {path} is {_INCOMPLETE}; "
            f"{_newest_intact(steps, others, verify)}"
        )
    problems = verify(str(path))
    if problems:
        raise CheckpointLoadError(
            f"--checkpoint.load_step {load_step}: {path} is damaged: {'; '.join(problems)}; "
            f"{_newest_intact(steps, others, verify)}"
        )
    return _chosen(LoadChoice(load_step, str(path), [s for s in skipped if s.step != load_step]))
