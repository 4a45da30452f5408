"""The 1F1B makespan model of a pipeline step, checked against schedules worked out by hand."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.pipeline_ideal import (
    ideal_ratio,
    makespan_1f1b,
    Pipeline,
    pipeline_of,
    single_stage,
    stage_costs,
    StageCost,
)
from titan_phases.plan.flops import ideal_phase_ratio

# Two blocks of 10 elements, a head of 5, a norm of 1; embeddings are lookups (no FLOPs).
NUMELS = {"tok_embeddings.weight": 50, "layers.0.w": 10, "layers.1.w": 10, "norm.weight": 1,
          "output.weight": 5}
TWO_STAGES = (("tok_embeddings", "layers.0"), ("layers.1", "norm", "output"))
TOP = {"layers.1.w", "norm.weight", "output.weight"}


def test_stock_two_balanced_stages_by_hand() -> None:
    # stage 0: F0 [0,1] F1 [1,2] .......... B0 [4,6] .. B1 [7,9]
    # stage 1: ...... F0 [1,2] B0 [2,4] F1 [4,5] B1 [5,7]
    assert makespan_1f1b([StageCost(1, 2), StageCost(1, 2)], 2) == 9


def test_a_frozen_first_stage_runs_no_backward() -> None:
    # stage 0 only forwards: F0 [0,1] F1 [1,2]; stage 1: F0 [1,2] B0 [2,3] F1 [3,4] B1 [4,5]
    costs = [StageCost(1, 0, runs_backward=False), StageCost(1, 1)]
    assert makespan_1f1b(costs, 2) == 5
    # stage 0 alone bounds the step when stage 1 is light: 4 forwards back to back, then the
    # last microbatch's forward and backward on stage 1
    assert makespan_1f1b([StageCost(2, 0, runs_backward=False), StageCost(1, 1)], 4) == 10


def test_more_microbatches_fill_the_pipeline() -> None:
    # balanced stages, 4 microbatches: stage 0's forwards and backwards take 12, plus the
    # bubble of one stage-1 forward and backward (3) while stage 0 waits for its first gradient
    assert makespan_1f1b([StageCost(1, 2), StageCost(1, 2)], 4) == 15
    with pytest.raises(ValueError, match="at least as many microbatches"):
        makespan_1f1b([StageCost(1, 2), StageCost(1, 2)], 1)


def test_stage_costs() -> None:
    attention = 3.0
    stock = stage_costs(NUMELS, TWO_STAGES, set(NUMELS), attention)
    # stage 0: layer 0's weights (20) + its attention (3) forward; backward: weight input grads
    # 20 + attention 2 x 3 + weight grads 20 (the embeddings cost nothing)
    assert stock[0] == StageCost(23, 46)
    # stage 1: layer 1, norm and head: 20 + 3 + 2 + 10 forward, twice that backward
    assert stock[1] == StageCost(35, 70)
    top = stage_costs(NUMELS, TWO_STAGES, TOP, attention)
    assert top[0] == StageCost(23, 0, runs_backward=False)
    assert top[1] == stock[1]
    # only the head trains: input and weight grads of the head alone, none for layer 1 or norm
    head = stage_costs(NUMELS, TWO_STAGES, {"output.weight"}, attention)
    assert head[1] == StageCost(35, 20)


def test_ideal_ratio_of_a_phase() -> None:
    pipeline = Pipeline("1F1B", 2, 1, TWO_STAGES)
    # stock: stage 0 F 23 B 46, stage 1 F 35 B 70, two microbatches:
    # s0 F0 [0,23] F1 [23,46]; s1 F0 [23,58] B0 [58,128] F1 [128,163] B1 [163,233];
    # s0 B0 [128,174] B1 [233,279]
    # top phase: s0 F0 [0,23] F1 [23,46]; s1 F0 [23,58] B0 [58,128] F1 [128,163] B1 [163,233]
    assert ideal_ratio(NUMELS, pipeline, TOP, 3.0) == pytest.approx(233 / 279)
    assert ideal_ratio(NUMELS, pipeline, NUMELS, 3.0) == 1.0


def test_one_stage_is_the_flop_ratio() -> None:
    # a single stage has no bubble: its ratio is the whole-model FLOP ratio (top-down phases)
    one = Pipeline("1F1B", 1, 1, (tuple(m for stage in TWO_STAGES for m in stage),))
    for trainable in (TOP, set(NUMELS)):
        assert ideal_ratio(NUMELS, one, trainable, 3.0) == pytest.approx(
            ideal_phase_ratio(NUMELS, trainable, attention_flops=3.0)
        )


def _job(**parallelism: object) -> SimpleNamespace:
    defaults = {"pipeline_parallel_schedule": "1F1B", "pipeline_parallel_degree": 2,
                "module_fqns_per_model_part": None, "pipeline_parallel_microbatch_size": 1,
                "pipeline_parallel_first_stage_less_layers": 1,
                "pipeline_parallel_last_stage_less_layers": 1}
    return SimpleNamespace(parallelism=SimpleNamespace(**{**defaults, **parallelism}),
                           training=SimpleNamespace(local_batch_size=4))


def test_pipeline_of_splits_as_torchtitan() -> None:
    pipeline = pipeline_of(_job(), n_layers=6)
    assert pipeline.microbatches == 4 and pipeline.microbatch_size == 1
    assert pipeline.stages == (("tok_embeddings", "layers.0", "layers.1", "layers.2"),
                               ("layers.3", "layers.4", "layers.5", "norm", "output"))
    assert pipeline_of(_job(pipeline_parallel_microbatch_size=2), 6).microbatches == 2
    with pytest.raises(ValueError, match="only the 1F1B schedule"):
        pipeline_of(_job(pipeline_parallel_schedule="GPipe"), 6)


def test_single_stage_counts_weight_gradients_of_trainable_params_only() -> None:
    attention = 3.0
    one = single_stage(2, local_batch_size=4)
    assert one.stages == (("tok_embeddings", "layers.0", "layers.1", "norm", "output"),)
    assert (one.microbatches, one.microbatch_size) == (1, 4)
    # every param in the span trains: the plan's FLOP ratio, (58 + 2 x 35) / (3 x 58)
    top = ideal_ratio(NUMELS, one, TOP, attention)
    assert top == pytest.approx(128 / 174)
    assert top == pytest.approx(ideal_phase_ratio(NUMELS, TOP, attention_flops=attention))
    # block 0 and the head train, block 1 is frozen in between: forward 58, input gradients
    # 26 + 26 + 2 + 10, weight gradients 20 + 2 + 10 (none for block 1); the plan charges
    # block 1's weight gradients too and gets a full step
    low = {"layers.0.w", "norm.weight", "output.weight"}
    assert ideal_ratio(NUMELS, one, low, attention) == pytest.approx(154 / 174)
    assert ideal_phase_ratio(NUMELS, low, attention_flops=attention) == pytest.approx(1.0)
