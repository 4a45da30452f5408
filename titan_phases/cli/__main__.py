"""``python -m titan_phases.cli``: the ``titan-phases`` command without its console script."""

import sys

from titan_phases.cli import main

sys.exit(main())
