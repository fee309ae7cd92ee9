"""Issue 24: the training commands refuse a missing or broken config, a missing folder or
file before they import torch (seconds), with one line naming it. Run in a fresh interpreter,
so that torch can be seen not to have been imported."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

# Each case in the child: main(args) -> its exit status, stderr and whether torch got imported.
CHILD = """
import contextlib, io, json, sys
from phasewatch.app.cli import main
out = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(args)
    out.append([rc, err.getvalue(), "torch" in sys.modules])
print(json.dumps(out))
"""


def test_training_commands_check_their_arguments_before_importing_torch(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[data\nroot = 1\n")
    config = Path("src/phasewatch/export/configs").resolve()
    good = sorted(config.glob("*.toml"))[0]
    cases = {
        "train --config /missing.toml": (["train", "--config", "/missing.toml"],
                                         "phasewatch train: /missing.toml: [Errno 2] No such file or directory"),
        "train broken TOML": (["train", "--config", str(broken)], f"phasewatch train: {broken}: Expected ']'"),
        "train --data-root missing": (["train", "--config", str(good), "--data-root", "/no/data"],
                                      "phasewatch train: /no/data: no such folder"),
        "cross-validate --config missing": (["cross-validate", "--config", "/missing.toml", "--folds", "3"],
                                            "phasewatch cross-validate: /missing.toml: [Errno 2]"),
        "cross-validate --folds 1": (["cross-validate", "--config", str(good), "--folds", "1"],
                                     "phasewatch cross-validate: --folds 1: needs at least 2"),
        "synth train missing": (["synth", "train", "--config", "/missing.toml", "--out", str(tmp_path / "g")],
                                "phasewatch synth train: /missing.toml: [Errno 2]"),
        "synth generate missing": (["synth", "generate", "/missing.pt", "--out", str(tmp_path / "p")],
                                   "phasewatch synth generate: /missing.pt: no such file"),
    }
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps([args for args, _ in cases.values()])],
                          capture_output=True, text=True, timeout=120, check=True)
    seconds = time.monotonic() - start
    for (name, (_, message)), (rc, err, torch) in zip(cases.items(), json.loads(done.stdout), strict=True):
        assert rc == 1 and err.startswith(message) and err.count("\n") == 1, (name, err)
        assert not torch, f"{name}: torch was imported"
    assert seconds < 30  # 7 refusals; torch alone took 7 s to import here before (issue 24)
