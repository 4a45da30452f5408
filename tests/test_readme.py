"""The README's quick-start job config is valid."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_schedule_example_validates(tmp_path: Path, capsys):
    from titan_phases.cli import main

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Quick start"):]
    example = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    job = tmp_path / "job.toml"
    job.write_text(example)
    assert main(["validate", "--job.config_file", str(job)]) == 0, capsys.readouterr()
    out = capsys.readouterr().out
    assert "3 phase(s)" in out
