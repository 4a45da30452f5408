from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def embedded_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded corpora + tokenizer, built once per session into a temporary cache.

    Sets ``TITAN_PHASES_CACHE`` so spawned ranks and subprocesses find the same files.
    """
    from titan_phases.data.assets import ensure_assets

    root = tmp_path_factory.mktemp("titan_phases_cache") / "cache"
    os.environ["TITAN_PHASES_CACHE"] = str(root)
    return ensure_assets(root)
