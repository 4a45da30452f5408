#!/usr/bin/env bash
# Build the wheelhouse that scripts/bootstrap.sh installs from on a node without a package index
# (TITAN_PHASES_WHEELS=DIR). Run it on a machine that reaches PyPI, then copy DIR to the node:
#
#   scripts/build_wheelhouse.sh [DIR]          (default: ./wheelhouse)
#
# It downloads exactly what a node lacks whose Python already has torch, triton, tokenizers,
# safetensors, tensorboard, pyyaml, numpy, pandas, pyarrow, huggingface-hub, fsspec, einops and
# pillow (and what those need): torchtitan 0.2.2 and the rest of titan_phases' requirements,
# pytest for the test suite, and setuptools to build the editable install. Every wheel is
# fetched alone (--no-deps, --only-binary=:all:), so torch, triton and CUDA never enter it.
#
#   PYTHON                      the Python whose pip downloads (default: python3)
#   TITAN_PHASES_WHEEL_PYTHONS  the node's Python versions, for the two packages built per
#                               version (default: "3.11 3.12 3.13 3.14")
#   TITAN_PHASES_WHEEL_ARCH     the node's processor, x86_64 or aarch64 (default: x86_64)
#
# The versions are the ones tested together with torchtitan 0.2.2 in the project venv. The node
# also needs huggingface-hub>=1.31 and pyarrow>=24 (datasets 5.2.0), Python >= 3.11.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$root/wheelhouse}"
python="${PYTHON:-python3}"
pythons="${TITAN_PHASES_WHEEL_PYTHONS:-3.11 3.12 3.13 3.14}"
arch="${TITAN_PHASES_WHEEL_ARCH:-x86_64}"

# Pure-Python wheels (py3-none-any), the same for every Python version and processor.
pure=(
    # titan_phases and torchtitan 0.2.2's requirements missing on the node
    torchtitan==0.2.2
    torchdata==0.11.0
    tyro==1.0.17
    docstring-parser==0.18.0
    typeguard==4.6.1
    datasets==5.2.0
    dill==0.4.1
    tomli==2.5.0
    # torchdata needs requests
    requests==2.34.2
    urllib3==2.8.0
    charset-normalizer==3.5.3
    certifi==2026.10.19.post1
    idna==3.20
    # the dev extra (the test suite)
    pytest==9.2.0
    iniconfig==2.3.1
    pluggy==1.7.0
    pygments==2.21.0
    # the build backend of the editable install (pip builds it in an isolated environment)
    setuptools==84.2.1
    wheel==0.48.0
    # taken only where the node's own copy is outside the range required here (datasets:
    # fsspec<=2026.9.0, tqdm>=4.66.3; typeguard: typing-extensions>=4.14; pytest: packaging>=24)
    fsspec==2026.9.0
    tqdm==4.70.1
    typing-extensions==4.16.0
    packaging==26.4
)
# Wheels built per Python version: xxhash is compiled, multiprocess ships one per version.
per_python=(
    xxhash==4.1.0
    multiprocess==0.70.19
)
case "$arch" in
    x86_64 | aarch64) ;;
    *)
        echo "TITAN_PHASES_WHEEL_ARCH must be x86_64 or aarch64, not $arch" >&2
        exit 2
        ;;
esac
platforms=()
for tag in manylinux_2_28 manylinux_2_17 manylinux2014; do
    platforms+=(--platform "${tag}_$arch")
done

mkdir -p "$dest"
echo "[build_wheelhouse] pure-Python wheels -> $dest" >&2
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --implementation py --python-version 3.11 --abi none --platform any -d "$dest" "${pure[@]}"
for version in $pythons; do
    echo "[build_wheelhouse] Python $version ($arch) wheels -> $dest" >&2
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --implementation cp --python-version "$version" --abi "cp${version/./}" "${platforms[@]}" \
        -d "$dest" "${per_python[@]}"
done

log() { echo "[build_wheelhouse] $*" >&2; }
if ls "$dest" | grep -Ei '^(torch|triton|nvidia)[-_]' >&2; then
    log "torch, triton or CUDA wheels found in $dest (listed above): remove them"
    exit 1
fi
count="$(ls "$dest"/*.whl | wc -l)"
mib="$(cat "$dest"/*.whl | wc -c | awk '{ printf "%.1f", $1 / 1048576 }')"
log "$count wheels, $mib MiB in $dest"
log "on the offline node: TITAN_PHASES_WHEELS=$dest ./run_train.sh (or ./run_tests.sh)"
