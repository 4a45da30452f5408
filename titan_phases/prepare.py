"""``python -m titan_phases.prepare``: set-up that must happen once, before torchrun starts ranks.

Builds the embedded corpora and tokenizer (:mod:`titan_phases.data.assets`) when the job uses
them, and prints the ``[pretrained] recipe`` to run first when the job's initial checkpoint is
missing (nothing when there is none). Exit code 2 on a bad job config.
"""

from __future__ import annotations

import sys

from titan_phases.data.assets import ensure_assets
from titan_phases.data.datasets import uses_embedded_assets
from titan_phases.pretrained import pending_recipe


def main(argv: list[str] | None = None) -> int:
    from torchtitan.config import ConfigManager

    from titan_phases.config.parsing import with_phases_section

    args = sys.argv[1:] if argv is None else argv
    try:
        job_config = ConfigManager().parse_args(with_phases_section(args))
    except (OSError, ValueError, TypeError) as exc:
        print(f"titan_phases.prepare: invalid job config: {exc}", file=sys.stderr)
        return 2
    if uses_embedded_assets(job_config):
        ensure_assets()
    try:
        recipe = pending_recipe(job_config.checkpoint.initial_load_path, job_config.pretrained)
    except FileNotFoundError as exc:
        print(f"titan_phases.prepare: {exc}", file=sys.stderr)
        return 2
    if recipe:
        print(recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
