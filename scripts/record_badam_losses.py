"""Record BAdam 1.4's per-step losses on the tiny llama3 job, as test fixtures.

BAdam (``badam.BlockOptimizer``) trains one block of the model at a time: the ``layers.<N>.``
blocks in ``descending`` or ``ascending`` order, ``switch_block_every`` optimizer steps each,
with the base optimizer's state dropped at every switch; embeddings, final norm and head stay
frozen (BAdam's defaults). This script runs torchtitan 0.2.2's own ``Trainer``, in this one
process (world size 1, gloo, titan_phases' CPU runtime), on the job in
``tests/fixtures/badam/job.toml``, with torchtitan's stock llama3 TrainSpec except for the
model flavor, the metrics and the optimizer: torchtitan's AdamW container, built by torchtitan
from the job's ``[optimizer]`` section, with each AdamW wrapped in a ``BlockOptimizer``. Model
(the ``tiny`` flavor of ``tests.trainer.tiny_spec``), initial weights (``torch.manual_seed(0)``,
then ``init_weights()`` on CPU, as the trainer tests' ``initial_weights`` fixture makes them,
loaded through ``--checkpoint.initial_load_path``), batches (torchtitan's dataloader over the
embedded ``titan_recipes`` corpus), loss, gradient clipping, LR schedule (torchtitan's
``[lr_scheduler]`` LambdaLR on the BlockOptimizer) and metrics (titan_phases'
``build_phase_metrics_processor``, so the losses come from ``metrics.jsonl`` as a titan_phases
run writes them) are those of a titan_phases run of that job on 1 rank.

The ``*_bf16`` cases run BAdam in its bf16 mode, the mode it is made for: the same job with
``--training.dtype bfloat16``, so torchtitan builds every weight in bf16 and, on 1 rank (no
FSDP, so ``mixed_precision_param`` does not apply), computes forward and backward in bf16.
BAdam then keeps an fp32 copy of the active block's weights (cloned from the bf16 weights when
the block becomes active), upcasts the bf16 gradients into it, steps it with fp32 state and
copies it back, rounded, into the bf16 weights. These cases start from the seed-0 initial
weights rounded to bf16 and saved in fp32 (``round_initial_weights``): BAdam's masters start
from the rounded weights, while titan_phases loads an fp32 checkpoint into the masters of the
params that train in phase 0 in full precision; from bf16-valued weights both start from the
same values.

For each case it writes ``tests/fixtures/badam/<case>.json``: the settings, the releases it ran
with, the blocks BAdam found, and per optimizer step the loss, the gradient norm, the active
block, every param group of the base optimizer as it stepped (lr, weight decay, number of
params: BAdam copies the scheduler's lr into them right before each step) and the bytes of
optimizer state after the step (before a switch drops it). The bf16 cases add the sha256 of
their initial weights (``weights_sha256``) and, per step, the bytes of the model's params and of
BAdam's fp32 masters after the step. The tests that compare titan_phases' block-cyclic
schedule with these numbers run the same ``job.toml`` with the same ``job_args``.

Rerun (BAdam is never a dependency of titan_phases: use a separate venv; the BAdam pin is the
``badam-parity`` extra in pyproject.toml, with the transformers release that badam imports
without declaring it; torch 2.13 is the tested release, installed first so that nothing else
picks one)::

    python3.11 -m venv /tmp/badam-venv
    /tmp/badam-venv/bin/pip install torch==2.13.0
    /tmp/badam-venv/bin/pip install -e '.[badam-parity]'
    /tmp/badam-venv/bin/python scripts/record_badam_losses.py [--out DIR] [CASE ...]

The embedded corpus and tokenizer are built into ``$TITAN_PHASES_CACHE`` (or titan_phases'
default cache) if they are not there already; the fixtures record the tokenizer's sha256, since
another ``tokenizers`` release may train another tokenizer and so feed other batches. On the
same releases the recorded numbers are bitwise the same from run to run, and do not depend on
which cases run before in the same process; another CPU (other SIMD kernels) may change the
last bits.

**Limitations**
BAdam reaches ``torch.cuda.empty_cache()`` after every step, a no-op without CUDA; on a machine
with an accelerator the run is not the CPU run these fixtures hold. Relies on torchtitan
0.2.2's ``OptimizersContainer`` fields (``optimizers``, ``model_parts``) and its
``Optimizer.__init__``-based ``_post_init``, and on four undocumented BlockOptimizer
attributes (BAdam 1.4): ``active_param_prefixs`` and ``block_prefix_list``, to record the
active block and check the blocks it found, ``named_parameters_list`` and ``param_idx2hp``, to
count the bytes of the params and of the fp32 masters.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import platform
import socket
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The job's custom_import (tests.trainer.tiny_spec) is imported from the repository root.
sys.path.insert(0, str(REPO))

from titan_phases.runtime.cpu import activate_if_no_accelerator  # noqa: E402

activate_if_no_accelerator()

import badam  # noqa: E402
import torch  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
import torchtitan  # noqa: E402
import transformers  # noqa: E402
from torchtitan.components.optimizer import build_optimizers, OptimizersContainer  # noqa: E402
from torchtitan.config import ConfigManager  # noqa: E402
from torchtitan.protocols.train_spec import get_train_spec, register_train_spec  # noqa: E402
from torchtitan.tools.logging import init_logger  # noqa: E402
from torchtitan.train import Trainer  # noqa: E402

from titan_phases.components.metrics import build_phase_metrics_processor  # noqa: E402
from titan_phases.components.metrics_file import read_metrics  # noqa: E402
from titan_phases.data.assets import ensure_assets, tokenizer_dir  # noqa: E402
from titan_phases.data.datasets import register_datasets  # noqa: E402

JOB = REPO / "tests" / "fixtures" / "badam" / "job.toml"
PHASED_SPEC = "llama3_phases_test"
FLAVOR = "tiny"
SWITCH_BLOCK_EVERY = 2
BLOCKS = ["layers.0.", "layers.1.", "layers.2.", "layers.3."]


@dataclasses.dataclass(frozen=True)
class Case:
    description: str
    # BlockOptimizer arguments besides the base optimizer and the params
    block_kwargs: dict[str, Any]
    # torchtitan's training.dtype: the dtype the model's weights are built and stored in
    dtype: str = "float32"

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"


def _case(mode: str, dtype: str) -> Case:
    description = (f"BAdam {mode}, one layers.<N>. block per {SWITCH_BLOCK_EVERY} steps, "
                   "embeddings, final norm and head frozen (BAdam's defaults)")
    if dtype == "bfloat16":
        description += ("; weights stored and computed in bf16, fp32 masters and state for the "
                        "active block (BAdam's bf16 mode), from bf16-valued initial weights")
    return Case(description, {"switch_mode": mode, "switch_block_every": SWITCH_BLOCK_EVERY},
                dtype)


CASES: dict[str, Case] = {
    **{mode: _case(mode, "float32") for mode in ("descending", "ascending")},
    **{f"{mode}_bf16": _case(mode, "bfloat16") for mode in ("descending", "ascending")},
}


class StepLog:
    """What the base optimizer of one BlockOptimizer did at each step, read from its hooks;
    ``with_masters``: also the bytes of the params and of BAdam's fp32 masters."""

    def __init__(self, block_optimizer: badam.BlockOptimizer, with_masters: bool) -> None:
        self.block_optimizer = block_optimizer
        self.with_masters = with_masters
        self.steps: list[dict[str, Any]] = []
        base = block_optimizer.base_optimizer
        base.register_step_pre_hook(self._before_step)
        base.register_step_post_hook(self._after_step)

    def _before_step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
        prefixes = list(self.block_optimizer.active_param_prefixs)
        self.steps.append({
            "active_block": prefixes[0] if len(prefixes) == 1 else prefixes,
            "param_groups": [
                {"lr": float(group["lr"]), "weight_decay": float(group["weight_decay"]),
                 "params": len(group["params"])}
                for group in optimizer.param_groups
            ],
        })

    def _after_step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> None:
        self.steps[-1]["optimizer_state_bytes"] = sum(
            value.numel() * value.element_size()
            for state in optimizer.state.values()
            for value in state.values()
            if isinstance(value, torch.Tensor)
        )
        if self.with_masters:
            self.steps[-1]["param_bytes"] = _nbytes(
                p for _, p in self.block_optimizer.named_parameters_list
            )
            self.steps[-1]["master_bytes"] = _nbytes(self.block_optimizer.param_idx2hp.values())


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class BlockOptimizersContainer(OptimizersContainer):
    """torchtitan's optimizer container over ``badam.BlockOptimizer``s, one per model part,
    each wrapping the base optimizer torchtitan built for that part."""

    def __init__(self, stock: OptimizersContainer, case: Case) -> None:
        self.model_parts = stock.model_parts
        self.optimizers = [
            badam.BlockOptimizer(base, list(model.named_parameters()), verbose=0,
                                 **case.block_kwargs)
            for model, base in zip(stock.model_parts, stock.optimizers)
        ]
        self.step_logs = [StepLog(optimizer, case.bf16) for optimizer in self.optimizers]
        self._validate_length(len(self.model_parts))
        self._post_init(
            [p for model in self.model_parts for p in model.parameters()], stock.defaults
        )


def build_block_optimizers(case: Case, initial: Path, built: list[BlockOptimizersContainer],
                           model_parts, optimizer_config, parallel_dims, ft_manager=None):
    """TrainSpec ``build_optimizers_fn``: torchtitan's container, its optimizers wrapped.

    A BlockOptimizer copies the first block's weights into its fp32 masters when it is built,
    and steps those masters; torchtitan loads ``--checkpoint.initial_load_path`` only later,
    when training starts. So the initial weights are loaded here first (DCP converts them to
    the weights' dtype): otherwise the first step would write the trainer's random
    initialisation, minus one update, into that block. torchtitan's own load then writes the
    same values again.
    """
    for model in model_parts:
        dcp.load(model.state_dict(), checkpoint_id=str(initial))
    stock = build_optimizers(model_parts, optimizer_config, parallel_dims, ft_manager)
    container = BlockOptimizersContainer(stock, case)
    built.append(container)
    return container


def initial_weights() -> dict[str, torch.Tensor]:
    """The tiny model's initial weights, made as the trainer tests' ``initial_weights`` fixture
    makes them."""
    spec = get_train_spec(PHASED_SPEC)
    torch.manual_seed(0)
    model = spec.model_cls(spec.model_args[FLAVOR])
    with torch.no_grad():
        model.init_weights()
    return model.state_dict()


def round_initial_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` rounded to bf16 (to nearest, ties to even, as any fp32 to bf16 cast), kept in
    fp32: the values a bf16 model loads, which fp32 masters then hold exactly."""
    return {name: tensor.to(torch.bfloat16).to(tensor.dtype) for name, tensor in state.items()}


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors in name order, each as its name, then its bytes (contiguous)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_rank_env() -> None:
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))


def dtype_args(case: Case) -> list[str]:
    """Arguments a run of ``job.toml`` adds for the case's dtype (either side)."""
    return ["--training.dtype", case.dtype] if case.bf16 else []


def job_args(cache: Path, initial: Path) -> list[str]:
    """Arguments a run of ``job.toml`` adds besides its dump folder (either side)."""
    return ["--job.config_file", str(JOB), "--model.hf_assets_path", str(tokenizer_dir(cache)),
            "--checkpoint.initial_load_path", str(initial)]


def _run(name: str, cache: Path, initial: Path, dump: Path) -> tuple[dict[int, dict], StepLog]:
    case = CASES[name]
    built: list[BlockOptimizersContainer] = []
    phased = get_train_spec(PHASED_SPEC)
    spec_name = f"llama3_badam_{name}"
    register_train_spec(spec_name, dataclasses.replace(
        get_train_spec("llama3"),
        model_args={FLAVOR: phased.model_args[FLAVOR]},
        build_optimizers_fn=functools.partial(build_block_optimizers, case, initial, built),
        build_metrics_processor_fn=build_phase_metrics_processor,
    ))
    config = ConfigManager().parse_args([
        *job_args(cache, initial), *dtype_args(case), "--job.dump_folder", str(dump),
        "--model.name", spec_name,
    ])
    _single_rank_env()
    trainer = Trainer(config)
    try:
        trainer.train()
    finally:
        trainer.close()
        torch.distributed.destroy_process_group()
    (container,) = built
    (log,) = container.step_logs
    found = [prefix for block in log.block_optimizer.block_prefix_list for prefix in block]
    if found != BLOCKS:
        raise RuntimeError(f"{name}: BAdam found blocks {found}, expected {BLOCKS}")
    train = read_metrics(dump).train
    if len(train) != config.training.steps or len(log.steps) != config.training.steps:
        raise RuntimeError(f"{name}: {len(train)} steps logged, {len(log.steps)} optimizer "
                           f"steps, expected {config.training.steps}")
    # A clipping factor below 1 would make the numbers depend on which grads the norm covers.
    clipped = [step for step, r in train.items() if r["grad_norm"] >= config.training.max_norm]
    if clipped:
        raise RuntimeError(f"{name}: gradient clipping bit at steps {clipped}")
    return train, log


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record(name: str, out: Path, cache: Path, initial: dict[str, Path], workdir: Path) -> Path:
    """Run case ``name`` from ``initial[<its dtype>]`` and write its fixture into ``out``."""
    case = CASES[name]
    train, log = _run(name, cache, initial[case.dtype], workdir / name)
    steps = [
        {"step": step, "loss": train[step]["loss"], "grad_norm": train[step]["grad_norm"],
         **logged}
        for step, logged in zip(sorted(train), log.steps)
    ]
    args = ["--model.hf_assets_path <cache>/tokenizer",
            "--checkpoint.initial_load_path <initial weights>"]
    made = f"torch.manual_seed(0); {PHASED_SPEC} '{FLAVOR}' model built on CPU; init_weights(); "
    bf16_settings: dict[str, Any] = {}
    if case.bf16:
        args.append(" ".join(dtype_args(case)))
        made += "rounded to bf16 (to nearest, ties to even) and kept in fp32; "
        # The fp32 fixtures predate these keys; they stay as they were recorded.
        bf16_settings["initial_weights_sha256"] = weights_sha256(
            round_initial_weights(initial_weights())
        )
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps({
        "case": name,
        "description": case.description,
        "recorded_with": {
            "badam": version("badam"),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "torchtitan": torchtitan.__version__,
            "python": platform.python_version(),
        },
        "job": JOB.name,
        "job_args": args,
        "initial_weights": made + "saved with DCP",
        **bf16_settings,
        "tokenizer_sha256": _sha256(tokenizer_dir(cache) / "tokenizer.json"),
        "block_optimizer": {**case.block_kwargs, "start_block": None, "active_modules": [],
                            "include_embedding": False, "include_lm_head": False},
        "blocks": BLOCKS,
        "steps": steps,
    }, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", metavar="CASE",
                        help=f"cases to record (default: all of {', '.join(CASES)})")
    parser.add_argument("--out", type=Path, default=JOB.parent)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; cases: {', '.join(CASES)}")
    init_logger()
    cache = ensure_assets()
    register_datasets()
    import tests.trainer.tiny_spec  # noqa: F401  (registers llama3_phases_test)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # Per training.dtype: the initial weights its cases start from.
        initial = {"float32": workdir / "initial" / "step-0",
                   "bfloat16": workdir / "initial_bf16" / "step-0"}
        dcp.save(initial_weights(), checkpoint_id=str(initial["float32"]))
        dcp.save(round_initial_weights(initial_weights()), checkpoint_id=str(initial["bfloat16"]))
        for name in args.cases or CASES:
            print(f"wrote {record(name, args.out, cache, initial, workdir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
