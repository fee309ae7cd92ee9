"""The unit file, checked by the real systemd-analyze (skipped where systemd is not installed).

`systemd-analyze verify` insists that ExecStart's binary exists, so the unit is checked as a
copy in tmp_path whose ExecStart names this checkout's own `phasewatch` entry point (the
arguments stay). Unknown or misspelt keys only print a warning and exit 0, so any output
at all counts as a failure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "phasewatch.service"
INSTALLED_BINARY = "/opt/phasewatch/.venv/bin/phasewatch"
MAX_EXPOSURE = 2.5

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)"
)


def _unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _checkable_copy(tmp_path: Path) -> Path:
    entry_point = Path(sys.executable).parent / "phasewatch"
    if not entry_point.is_file():
        pytest.skip(f"{entry_point}: phasewatch entry point not installed in this environment")
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED_BINARY} " in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(f"ExecStart={INSTALLED_BINARY} ", f"ExecStart={entry_point} "))
    return copy


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_daemon_contract():
    """What src/phasewatch/service/sdnotify.py and the serve command rely on."""
    s = _unit_settings(UNIT.read_text())
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["WatchdogSec"] == ["30"]
    assert s["ExecStart"] == [f"{INSTALLED_BINARY} serve --config /etc/phasewatch/phasewatch.toml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert s["StateDirectory"] == ["phasewatch"]
    assert s["DevicePolicy"] == ["closed"]
    assert s["CapabilityBoundingSet"] == [""]


@needs_systemd
def test_verify_is_clean(tmp_path):
    result = _analyze("verify", "--man=no", str(_checkable_copy(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == ""


@needs_systemd
def test_verify_catches_a_misspelt_key(tmp_path):
    """The check above can fail: a typo in a hardening key is reported, not silently kept."""
    copy = _checkable_copy(tmp_path)
    copy.write_text(copy.read_text().replace("ProtectKernelTunables=", "ProtectKernelTunable="))
    result = _analyze("verify", "--man=no", str(copy))
    assert "Unknown key" in result.stdout + result.stderr


@needs_systemd
def test_security_exposure(tmp_path):
    if "--offline" not in _analyze("security", "--help").stdout:
        pytest.skip("this systemd-analyze has no 'security --offline' (systemd < 252)")
    result = _analyze("security", "--offline=true", "--no-pager", str(_checkable_copy(tmp_path)))
    assert result.returncode == 0, result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout[-2000:]
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout
