"""Each seed's data order: a permutation of B's training split, the same for the same seed."""

from __future__ import annotations

import json
from pathlib import Path

from studies.forgetting.corpus import CORPUS_B, shuffled_split
from titan_phases.data.assets import split_path


def test_shuffled_split(tmp_path: Path) -> None:
    source = split_path(tmp_path, CORPUS_B, "train")
    source.parent.mkdir(parents=True)
    lines = [json.dumps({"text": f"recipe {i}"}) for i in range(50)]
    source.write_text("\n".join(lines) + "\n")
    first = shuffled_split(tmp_path, 0, tmp_path / "out").read_text().splitlines()
    again = shuffled_split(tmp_path, 0, tmp_path / "again").read_text().splitlines()
    other = shuffled_split(tmp_path, 1, tmp_path / "out").read_text().splitlines()
    assert sorted(first) == sorted(lines) == sorted(other)
    assert first == again
    assert first != lines and first != other
