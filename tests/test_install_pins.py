"""Install ranges a Jetson on JetPack 6 can take (issue 26, defect 10), read from pyproject.toml,
and the Python 3.10 / NumPy 1.x runtime step in CI (.ci/py310, run by .ci/run)."""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement(name: str, group: str = "") -> Requirement:
    lines = PROJECT["optional-dependencies"][group] if group else PROJECT["dependencies"]
    found = [r for r in map(Requirement, lines) if r.name == name]
    assert len(found) == 1, f"{name}: {len(found)} requirement(s)"
    return found[0]


def test_numpy_1x_and_2x_both_admitted_with_an_upper_bound():
    spec = requirement("numpy").specifier
    assert spec.contains("1.26.4") and spec.contains("2.2.6")
    assert not spec.contains("3.0.0")  # a major version nobody has run is not let in unseen


def test_opencv_admits_the_last_wheel_built_for_numpy_1x():
    spec = requirement("opencv-python-headless").specifier
    assert spec.contains("4.11.0.86")  # the last taking numpy 1.x on Python 3.10 (its METADATA)
    assert spec.contains("4.13.0.92") and not spec.contains("6.0.0.0")


def test_cuda_bindings_stay_on_cuda_12_as_tensorrt_cu12_and_jetpack_6():
    spec = requirement("cuda-bindings", "tensorrt").specifier
    assert spec.contains("12.6.0") and spec.contains("12.9.2")
    assert not spec.contains("13.3.1")  # the CUDA 13 runtime needs an R580+ driver (pyproject's comment)


def test_python_310_is_supported_and_ci_runs_the_py310_runtime_step():
    assert Requirement(f"x{PROJECT['requires-python']}").specifier.contains("3.10.12")
    steps = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ".ci/py310" in steps and steps.index(".ci/py310") < steps.index("python -m pytest -q")
    py310 = (ROOT / ".ci" / "py310").read_text()
    assert '".[cpu]" "numpy<2"' in py310 and "test_runtime_without_torch.py" in py310
