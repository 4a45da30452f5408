"""Offline install (TITAN_PHASES_WHEELS): scripts/bootstrap.sh without a package index.

SLOW-ISH INSTALL TEST (about 30-60 s; downloads ~5 MiB of wheels from the configured package
index once, into a temporary folder). It simulates an air-gapped GPU node:

- the node's Python is a venv (as on many clusters) holding only the packages such a node has,
  torch, triton, tokenizers, safetensors, tensorboard, pyyaml, numpy, pandas, pyarrow,
  huggingface-hub, fsspec, einops, pillow and what they need, linked in from this project's venv;
- the wheelhouse is made by scripts/build_wheelhouse.sh (for this Python version only);
- bootstrap.sh then runs with every pip index pointed at a local HTTP server that records
  each request, and pip's configuration files switched off: the install must succeed from the
  wheelhouse alone, and the server must see no request at all.
"""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
import time
from importlib.metadata import distribution, PackageNotFoundError
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests import launches

REPO = Path(__file__).resolve().parents[1]
BOOTSTRAP = REPO / "scripts" / "bootstrap.sh"
BUILD_WHEELHOUSE = REPO / "scripts" / "build_wheelhouse.sh"

# What the air-gapped GPU node's Python already has.
NODE_PACKAGES = (
    "torch triton tokenizers safetensors tensorboard pyyaml numpy pandas pyarrow huggingface-hub "
    "fsspec einops pillow"
).split()
# What it lacks, and so what the wheelhouse must bring.
MISSING_ON_NODE = ["torchtitan", "torchdata", "tyro", "datasets", "tomli", "xxhash", "pytest"]

pytestmark = pytest.mark.e2e


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(names: list[str]) -> set[str]:
    """These distributions of the running environment and everything they need."""
    seen: set[str] = set()
    stack = list(names)
    while stack:
        name = _norm(stack.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(req.name)
    return seen


class _RecordingIndex(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        self.send_error(404)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def index_url():
    """A local 'package index' that answers 404 to everything and records each request."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingIndex)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _RecordingIndex.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    server.shutdown()
    server.server_close()


def _base_interpreter() -> str:
    return getattr(sys, "_base_executable", None) or sys.executable


@pytest.fixture(scope="module")
def node_python(tmp_path_factory) -> Path:
    """A venv with only the node's packages, symlinked from this project's venv."""
    root = tmp_path_factory.mktemp("node")
    launches.run("python -m venv (the simulated node)",
                 [_base_interpreter(), "-m", "venv", "--without-pip", str(root)], check=True)
    site = Path(
        subprocess.run(
            [str(root / "bin" / "python"), "-c",
             "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )
    for name in sorted(_closure(NODE_PACKAGES)):
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        tops = {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}
        for top in tops:
            target = Path(dist.locate_file(top))
            if target.exists() and not (site / top).exists():
                (site / top).symlink_to(target)
    python = root / "bin" / "python"
    # The simulation holds: torch is there, the wheelhouse's packages are not.
    subprocess.run([str(python), "-c", "import torch, tokenizers, tensorboard, huggingface_hub"],
                   check=True)
    for name in ("torchtitan", "tyro", "datasets", "torchdata", "tomli"):
        probe = subprocess.run([str(python), "-c", f"import {name}"], capture_output=True)
        assert probe.returncode != 0, f"{name} should be missing on the simulated node"
    return python


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("wheelhouse")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    env = dict(os.environ, PYTHON=sys.executable, TITAN_PHASES_WHEEL_PYTHONS=version)
    proc = launches.run("build_wheelhouse.sh", ["bash", str(BUILD_WHEELHOUSE), str(dest)],
                        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    names = {_norm(p.name.split("-")[0]) for p in dest.glob("*.whl")}
    assert set(map(_norm, MISSING_ON_NODE)) <= names, names
    assert not {"torch", "triton"} & names and not any(n.startswith("nvidia") for n in names)
    size = sum(p.stat().st_size for p in dest.glob("*.whl"))
    assert size < 64 * 2**20, size
    assert re.search(r"\d+ wheels, [\d.]+ MiB", proc.stderr), proc.stderr
    return dest


def _offline_env(tmp_path: Path, index_url: str, path_dirs: list[Path], **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "TITAN_PHASES_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(
        # No pip configuration file (their find-links, extra indexes, constraints) and every
        # index on the recording server: a request for an index would show there.
        PIP_CONFIG_FILE=os.devnull,
        PIP_INDEX_URL=index_url,
        PIP_RETRIES="0",
        PIP_DEFAULT_TIMEOUT="5",
        PATH=os.pathsep.join([*map(str, path_dirs), "/usr/local/bin", "/usr/bin", "/bin"]),
        HOME=str(tmp_path / "home"),
        TITAN_PHASES_VENV=str(tmp_path / "venv"),
    )
    env.update(extra)
    return env


def _python_dir(tmp_path: Path, python: str | Path) -> Path:
    """A PATH folder whose python3.11/.12/.13/python3 are all this (non-venv) interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python3.11", "python3.12", "python3.13", "python3"):
        (bin_dir / name).symlink_to(python)
    return bin_dir


def _bootstrap(env: dict, then: str) -> subprocess.CompletedProcess:
    script = f'source "{BOOTSTRAP}" && {then}'
    return launches.run(f"bootstrap.sh && {then}", ["bash", "-c", script], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_offline_bootstrap_installs_from_the_wheelhouse_alone(
    tmp_path, node_python, wheelhouse, index_url
):
    # The node venv's own bin/ (python3.11 there is that venv's; a link elsewhere would not be).
    env = _offline_env(tmp_path, index_url, [node_python.parent],
                       TITAN_PHASES_WHEELS=str(wheelhouse))
    check = (
        '"$PYTHON" -c "import sys, torch, torchtitan, torchdata, tyro, datasets, xxhash, tomli, '
        'pytest, titan_phases; print(torch.__file__); print(torchtitan.__file__); '
        'print(titan_phases.__file__); print(sys.prefix)"'
    )
    started = time.monotonic()
    proc = _bootstrap(env, check)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _RecordingIndex.requests == [], _RecordingIndex.requests
    torch_file, titan_file, phases_file, prefix = proc.stdout.split()[-4:]
    venv = tmp_path / "venv"
    assert Path(prefix) == venv
    # torch is the node's own, not installed into the venv; torchtitan came from the wheelhouse.
    assert not Path(torch_file).is_relative_to(venv), torch_file
    assert Path(titan_file).is_relative_to(venv), titan_file
    assert Path(phases_file).resolve().is_relative_to(REPO), phases_file
    assert (venv / ".titan_phases-installed").is_file()
    assert "without a package index" in proc.stderr
    print(f"offline bootstrap: {elapsed:.1f} s")

    # A second run reuses the venv and installs nothing.
    again = _bootstrap(env, 'echo "$PYTHON"')
    assert again.returncode == 0, again.stderr
    assert "installing" not in again.stderr and "creating" not in again.stderr
    assert _RecordingIndex.requests == []


def test_offline_bootstrap_without_torch_fails_clearly(tmp_path, wheelhouse, index_url):
    # Only a Python without torch on PATH: offline mode must stop, never fetch torch.
    env = _offline_env(tmp_path, index_url, [_python_dir(tmp_path, _base_interpreter())],
                       TITAN_PHASES_WHEELS=str(wheelhouse))
    probe = subprocess.run([_base_interpreter(), "-c", "import torch"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("the base interpreter has torch")
    proc = _bootstrap(env, "true")
    assert proc.returncode != 0
    assert "torch is never downloaded in offline mode" in proc.stderr, proc.stderr
    assert not (tmp_path / "venv").exists()
    assert _RecordingIndex.requests == []


def test_offline_bootstrap_rejects_an_empty_wheelhouse(tmp_path, index_url):
    (tmp_path / "empty").mkdir()
    env = _offline_env(tmp_path, index_url, [], TITAN_PHASES_WHEELS=str(tmp_path / "empty"))
    proc = _bootstrap(env, "true")
    assert proc.returncode != 0
    assert "holds no wheels" in proc.stderr and "build_wheelhouse.sh" in proc.stderr
    assert _RecordingIndex.requests == []
