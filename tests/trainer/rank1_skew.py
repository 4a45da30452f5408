"""``experimental.custom_import`` for tests of how ranks agree on bad input.

Registers the tiny test model, then on rank 1 only waits 3 s, so that rank 0 always finishes
its input check first; with ``TITAN_PHASES_TEST_RANK1_IMPORT_ERROR`` set, rank 1 then fails to
import, as on a node that lacks a file the others have.
"""

import os
import time

import tests.trainer.tiny_spec  # noqa: F401

if os.environ.get("RANK") == "1":
    time.sleep(3)
    if os.environ.get("TITAN_PHASES_TEST_RANK1_IMPORT_ERROR"):
        raise ImportError("rank 1 cannot import its model code (test)")
