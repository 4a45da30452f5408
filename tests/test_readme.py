"""The README's quick-start job config is valid."""

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_schedule_example_validates(tmp_path: Path, capsys, monkeypatch):
    from titan_phases.cli import main

    # As the README runs it: from the repository, the embedded assets in their default place
    # (./.cache/titan_phases, built by the job when missing).
    monkeypatch.delenv("TITAN_PHASES_CACHE", raising=False)
    monkeypatch.chdir(REPO)

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Quick start"):]
    example = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    job = tmp_path / "job.toml"
    job.write_text(example)
    assert main(["validate", "--job.config_file", str(job)]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "3 phase(s)" in out


def test_readme_block_cyclic_plan_lines_are_what_plan_prints(capsys, monkeypatch):
    from titan_phases.cli import main

    monkeypatch.delenv("TITAN_PHASES_CACHE", raising=False)  # as above
    monkeypatch.chdir(REPO)

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Block-cyclic fine-tuning"):]
    # The first fenced block without a language: the plan output.
    blocks = section.split("```")[1::2]
    shown = next(b for b in blocks if b.startswith("\n")).strip("\n").splitlines()
    config = REPO / "train_configs" / "debug_block_cyclic.toml"
    assert main(["plan", "--world-size", "2", "--job.config_file", str(config)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert shown and all(line in printed for line in shown), shown
    assert main(["validate", "--job.config_file", str(config)]) == 0
    assert "12 phase(s), generated schedule" in capsys.readouterr().out


def test_readme_bf16_plan_lines_are_what_plan_prints(capsys):
    from titan_phases.cli import main

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## bf16 storage, fp32 masters"):]
    blocks = section.split("```")[1::2]
    shown = next(b for b in blocks if b.startswith("\n")).strip("\n").splitlines()
    printed = []
    for world_size, config in (("1", "llama3_8b_block_cyclic.toml"),
                               ("8", "llama3_70b_block_cyclic.toml")):
        path = REPO / "train_configs" / config
        assert main(["plan", "--world-size", world_size, "--job.config_file", str(path)]) == 0
        printed += capsys.readouterr().out.splitlines()
    assert all(line in printed for line in shown), shown
    # The budgets, in GB: params + masters + grads + optimizer state per rank.
    assert main(["plan", "--json", "--world-size", "1", "--job.config_file",
                 str(REPO / "train_configs" / "llama3_8b_block_cyclic.toml")]) == 0
    assert max(json.loads(capsys.readouterr().out)["peak_total"]) <= 20.1e9
    assert main(["plan", "--json", "--world-size", "8", "--job.config_file",
                 str(REPO / "train_configs" / "llama3_70b_block_cyclic.toml")]) == 0
    assert max(json.loads(capsys.readouterr().out)["peak_total"]) <= 19.6e9
