import json

from titan_phases.components.metrics import JsonlLogger, to_jsonl_record


def test_train_record_translates_torchtitan_names_and_collects_group_lrs():
    record = to_jsonl_record(
        {
            "loss_metrics/global_avg_loss": 2.5,
            "loss_metrics/global_max_loss": 2.7,
            "grad_norm": 0.5,
            "throughput(tps)": 1000.0,
            "step_time_s": 0.25,
            "memory/max_active(GiB)": 1.0,
            "lr": 0.1,
            "lr/group_1": 0.01,
            "lr/group_0": 0.1,
            "trainable_params": 42,
            "optimizer_state_bytes/rank_1": 8,
            "optimizer_state_bytes/rank_0": 16,
            "phase": 1,
        },
        step=7,
    )
    assert record["type"] == "train" and record["step"] == 7
    assert record["loss"] == 2.5 and record["max_loss"] == 2.7
    assert record["lr"] == [0.1, 0.01]
    assert record["tokens_per_second"] == 1000.0 and record["step_time_s"] == 0.25
    assert record["trainable_params"] == 42 and record["phase"] == 1
    assert record["optimizer_state_bytes"] == [16, 8]
    assert "memory/max_active(GiB)" not in record


def test_validation_record():
    record = to_jsonl_record({"validation_metrics/loss": 3.0}, step=20)
    assert record["type"] == "validation" and record["loss"] == 3.0


def test_jsonl_logger_appends_flushed_lines(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    logger = JsonlLogger(str(path))
    logger.log({"loss_metrics/global_avg_loss": float("nan")}, step=1)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["run_start", "train"]
    assert lines[1]["loss"] is None
    logger.close()
    JsonlLogger(str(path)).close()
    assert len(path.read_text().splitlines()) == 3
