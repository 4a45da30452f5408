# Sourced by run_train.sh and run_tests.sh: create or reuse the project virtualenv, install
# titan_phases into it when pyproject.toml changed, and export PYTHON.
#
#   TITAN_PHASES_VENV   virtualenv to use (default: ./.venv). An existing one is reused as is.
#   TITAN_PHASES_TORCH  pip requirement for torch when the venv has none (default: a CPU build
#                       of 2.13.0 without an accelerator, torch>=2.9,<2.15 from PyPI with one).
#   TITAN_PHASES_TORCH_INDEX  where CPU builds come from when the configured pip indexes lack
#                       them (default: PyTorch's CPU wheel index).
#   TITAN_PHASES_WHEELS offline mode: a wheelhouse folder (scripts/build_wheelhouse.sh makes one;
#                       relative to the repository root). Everything is installed from it with
#                       pip --no-index on top of the torch already there; no index is ever
#                       contacted and torch is never installed (no torch: the bootstrap fails).
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

# A venv that sees $1's packages (its torch). A venv made from a venv sees the bottom Python's
# packages only, so when $1 is itself a venv (as on many clusters) its site-packages are chained in.
_tp_venv_over() {
    local chain purelib
    "$1" -m venv --system-site-packages "$TITAN_PHASES_VENV" || return 1
    chain="$("$1" -c 'import site, sys
if sys.prefix != sys.base_prefix:
    for p in site.getsitepackages():
        if p.startswith(sys.prefix):
            print("import site; site.addsitedir(%r)" % p)')" || return 1
    if [ -n "$chain" ]; then
        purelib="$("$TITAN_PHASES_VENV/bin/python" -c \
            'import sysconfig; print(sysconfig.get_paths()["purelib"])')" || return 1
        echo "$chain" >"$purelib/_titan_phases_base_venv.pth"
    fi
}

_tp_bootstrap() {
    local base_python venv_python stamp want
    if [ -n "${TITAN_PHASES_WHEELS:-}" ]; then
        _tp_bootstrap_offline
        return
    fi
    if [ ! -x "$TITAN_PHASES_VENV/bin/python" ]; then
        base_python="$(_tp_pick_python)" || return 1
        if "$base_python" -c 'import torch' >/dev/null 2>&1; then
            _tp_log "creating $TITAN_PHASES_VENV on top of $base_python's own torch"
            _tp_venv_over "$base_python" || return 1
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
        _tp_log "installing titan_phases (editable) with test and plot extras"
        "$venv_python" -m pip install --quiet -e "$_tp_root[dev,plot]" || return 1
        echo "$want" >"$stamp"
    fi
    PYTHON="$venv_python"
    export PYTHON
}

# Offline mode (TITAN_PHASES_WHEELS): the first Python >= 3.11 on PATH that imports torch.
_tp_pick_torch_python() {
    local candidate
    for candidate in python3.11 python3.12 python3.13 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null &&
            "$candidate" -c 'import torch' >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

_tp_bootstrap_offline() {
    local wheels base_python venv_python stamp want
    wheels="$TITAN_PHASES_WHEELS"
    if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
        _tp_log "TITAN_PHASES_WHEELS=$wheels holds no wheels: build it with" \
            "scripts/build_wheelhouse.sh on a machine that reaches PyPI"
        return 1
    fi
    wheels="$(cd "$wheels" && pwd)"
    if [ ! -x "$TITAN_PHASES_VENV/bin/python" ]; then
        if ! base_python="$(_tp_pick_torch_python)"; then
            _tp_log "offline mode (TITAN_PHASES_WHEELS) installs on top of an existing torch," \
                "and no Python >= 3.11 on PATH can import torch; torch is never downloaded in" \
                "offline mode: install it, or put a Python that has it first on PATH"
            return 1
        fi
        _tp_log "creating $TITAN_PHASES_VENV on top of $base_python's own torch (offline)"
        _tp_venv_over "$base_python" || return 1
    fi
    venv_python="$TITAN_PHASES_VENV/bin/python"

    if ! "$venv_python" -c 'import torch' >/dev/null 2>&1; then
        _tp_log "$venv_python cannot import torch, and offline mode (TITAN_PHASES_WHEELS) never" \
            "downloads it: install torch there, or remove $TITAN_PHASES_VENV to recreate it" \
            "over a Python that has torch"
        return 1
    fi

    stamp="$TITAN_PHASES_VENV/.titan_phases-installed"
    want="$(cat "$_tp_root/pyproject.toml" | cksum)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        _tp_log "installing titan_phases (editable) with test extras from $wheels," \
            "without a package index"
        "$venv_python" -m pip install --quiet --disable-pip-version-check --no-index \
            --find-links "$wheels" -e "$_tp_root[dev]" || return 1
        echo "$want" >"$stamp"
    fi
    PYTHON="$venv_python"
    export PYTHON
}

_tp_bootstrap || { _tp_log "bootstrap failed"; exit 1; }
