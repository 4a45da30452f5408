#!/usr/bin/env bash
# Bootstrap the project virtualenv (see scripts/bootstrap.sh), then run the whole test suite.
# Extra arguments go to pytest, e.g. ./run_tests.sh tests/schedule -x, or the quick tier, which
# launches no torchrun, job or rank (tests/launches.py): ./run_tests.sh -m "not e2e"
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
# Distributed tests run several single-threaded ranks on a small machine.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$PYTHON" -m pytest "$@"
