"""The package as users get it: ``pip wheel .`` builds without setuptools warnings, the wheel
holds every tracked file of src/phasewatch (each package, the bundled models, the page's
templates and static files, the training configs, py.typed), and installed alone into a fresh
venv it segments a real micrograph with ``phasewatch segment``.

The fresh venv gets only the wheel (``--no-deps``); its dependencies come from this venv's
site-packages through PYTHONPATH, where nothing named phasewatch lies (this venv's install
is editable: a path finder, not a folder), so the run proves the wheel's own files suffice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(*args: str | Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    assert done.returncode == 0, f"{args[:4]}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[Path, str]:
    """The wheel pip builds from this tree (this venv's setuptools: no download), and pip's
    verbose output, where setuptools prints its warnings."""
    out = tmp_path_factory.mktemp("wheel")
    log = run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-v", "-w", out)
    (path,) = out.glob("phasewatch-*.whl")
    return path, log


def test_the_build_prints_no_setuptools_package_warnings(wheel):
    _, log = wheel
    lines = [line for line in log.splitlines() if "would be ignored" in line or "SetuptoolsDeprecationWarning" in line]
    assert lines == []


def test_the_wheel_holds_every_tracked_file_of_the_package(wheel):
    path, _ = wheel
    names = set(zipfile.ZipFile(path).namelist())
    tracked = run("git", "ls-files", "src/phasewatch").split()
    if not tracked:
        pytest.skip("not a git checkout: the tracked files are unknown")
    missing = [name for name in (t.removeprefix("src/") for t in tracked) if name not in names]
    assert missing == []
    for needed in ("phasewatch/py.typed", "phasewatch/models/superalloy/model.onnx",
                   "phasewatch/webui/templates/base.html", "phasewatch/webui/static/app.js",
                   "phasewatch/export/configs/superalloy.toml", "phasewatch/app/commands/segment.py"):
        assert needed in names


def test_the_installed_wheel_segments_a_real_micrograph(wheel, shared_data, tmp_path):
    path, _ = wheel
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # no system site-packages
    python = env_dir / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet", path)
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    where = run(python, "-c", "import phasewatch, sys; print(phasewatch.__file__)", env=env, cwd=tmp_path)
    assert where.strip().startswith(str(env_dir))
    image = shared_data / "superalloy" / "val" / "images" / "spot1_0d_0.tif"
    run(env_dir / "bin" / "phasewatch", "segment", image, "--model", "superalloy", "--backend", "cpu",
        "--out", tmp_path / "out", env=env, cwd=tmp_path)
    record = json.loads((tmp_path / "out" / "spot1_0d_0.json").read_text())
    assert record["model"] == "superalloy" and record["valid_area_px"] == 512 * 512
    assert sum(record["fractions"].values()) == pytest.approx(1.0)
