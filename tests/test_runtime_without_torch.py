"""The runtime imports and segments with PyTorch and TensorRT unavailable (DESIGN: only export imports torch)."""

from __future__ import annotations

import subprocess
import sys

BLOCK = "import sys\nfor name in ('torch', 'tensorrt', 'cuda'):\n    sys.modules[name] = None\n"


def test_runtime_and_webui_run_without_torch_or_tensorrt(tmp_path):
    script = BLOCK + f"""
import cv2
from phasewatch.core.synthetic import superalloy_micrograph
import phasewatch.app.commands.serve, phasewatch.app.commands.doctor, phasewatch.webui.app
from phasewatch.app.cli import main
image, _ = superalloy_micrograph(128, 160)
cv2.imwrite(r"{tmp_path}/a.png", image)
sys.exit(main(["segment", r"{tmp_path}/a.png", "--model", "superalloy", "--out", r"{tmp_path}/out"]))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "a.classes.png").is_file()
