# Sourced by run_train.sh and run_tests.sh: create or reuse the project virtualenv, install
# titan_phases into it when pyproject.toml changed, and export PYTHON.
#
#   TITAN_PHASES_VENV   virtualenv to use (default: ./.venv). An existing one is reused as is.
#   TITAN_PHASES_TORCH  pip requirement for torch when the venv has none (default: a CPU build
#                       of 2.13.0 without an accelerator, torch>=2.9,<2.15 from PyPI with one).
#   TITAN_PHASES_TORCH_INDEX  where CPU builds come from when the configured pip indexes lack
#                       them (default: PyTorch's CPU wheel index).
#
# torch already importable in the venv is never replaced. A new venv sees the system Python's
# packages when that Python already has torch, so a user's own torch build is respected.

_tp_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TITAN_PHASES_VENV="${TITAN_PHASES_VENV:-$_tp_root/.venv}"

_tp_log() { echo "[titan_phases bootstrap] $*" >&2; }

_tp_pick_python() {
    local candidate
    for candidate in python3.11 python3.12 python3.13 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    _tp_log "no Python >= 3.11 found on PATH; install one and retry"
    return 1
}

_tp_has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

_tp_bootstrap() {
    local base_python venv_python stamp want
    if [ ! -x "$TITAN_PHASES_VENV/bin/python" ]; then
        base_python="$(_tp_pick_python)" || return 1
        if "$base_python" -c 'import torch' >/dev/null 2>&1; then
            _tp_log "creating $TITAN_PHASES_VENV on top of $base_python's own torch"
            "$base_python" -m venv --system-site-packages "$TITAN_PHASES_VENV" || return 1
        else
            _tp_log "creating $TITAN_PHASES_VENV"
            "$base_python" -m venv "$TITAN_PHASES_VENV" || return 1
        fi
    fi
    venv_python="$TITAN_PHASES_VENV/bin/python"

    if ! "$venv_python" -c 'import torch' >/dev/null 2>&1; then
        if [ -n "${TITAN_PHASES_TORCH:-}" ]; then
            want="$TITAN_PHASES_TORCH"
        elif _tp_has_gpu; then
            want="torch>=2.9,<2.15"
        else
            # The +cpu local version only exists as a CPU build, so this can never pull CUDA.
            want="torch==2.13.0+cpu"
        fi
        _tp_log "installing $want"
        if ! "$venv_python" -m pip install --quiet "$want"; then
            # Not on the configured indexes (PyPI has no +cpu builds): take the wheel alone from
            # PyTorch's CPU index, then its dependencies from the configured indexes.
            _tp_log "retrying $want from ${TITAN_PHASES_TORCH_INDEX:=https://download.pytorch.org/whl/cpu}"
            "$venv_python" -m pip install --quiet --no-deps --index-url "$TITAN_PHASES_TORCH_INDEX" \
                "$want" && "$venv_python" -m pip install --quiet "$want" || return 1
        fi
    fi

    stamp="$TITAN_PHASES_VENV/.titan_phases-installed"
    want="$(cat "$_tp_root/pyproject.toml" | cksum)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        _tp_log "installing titan_phases (editable) with test extras"
        "$venv_python" -m pip install --quiet -e "$_tp_root[dev]" || return 1
        echo "$want" >"$stamp"
    fi
    PYTHON="$venv_python"
    export PYTHON
}

_tp_bootstrap || { _tp_log "bootstrap failed"; exit 1; }
