"""Peak memory of the real service for the largest field it allows, and what it keeps after.

Starts ``phasewatch serve`` (bundled model, CPU backend, default ``[limits]``: the largest
field allowed is ``max_megapixels`` = 50 MP), drops one textured 8-bit field of that size
into its watch folder, waits until it is done, and reads ``/proc/PID/status`` of the service
process: ``VmRSS`` idle before, ``VmHWM`` (its peak RSS) and ``VmRSS`` after the field.
The decoder children are separate processes (bounded by ``[limits] decode_memory_mb``) and
are not counted.

Run: ``python bench/field_memory.py [--megapixels 50] [--model superalloy]`` (Linux).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile


def status_kib(pid: int, key: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
    assert found, f"no {key} in /proc/{pid}/status"
    return int(found.group(1))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def field(megapixels: float) -> np.ndarray:
    """A square 8-bit field of ``megapixels``, blobs of 32 px over noise (not a flat image)."""
    side = int(math.sqrt(megapixels * 1e6))
    rng = np.random.default_rng(0)
    blobs = rng.integers(40, 220, (side // 32 + 1, side // 32 + 1), np.uint8)
    image = np.kron(blobs, np.ones((32, 32), np.uint8))[:side, :side]
    return image + rng.integers(0, 30, image.shape, np.uint8)


def wait_for(condition, what: str, timeout_s: float, proc: subprocess.Popen) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"phasewatch serve exited with {proc.returncode} while waiting for {what}")
        if condition():
            return
        time.sleep(0.2)
    sys.exit(f"timed out after {timeout_s:.0f} s waiting for {what}")


def state_of(database: Path) -> str | None:
    try:
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        row = conn.execute("SELECT state FROM files ORDER BY id DESC LIMIT 1").fetchone()
    except sqlite3.Error:
        return None
    finally:
        conn.close()
    return row[0] if row else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--megapixels", type=float, default=50.0, help="the field's size (default: the limit)")
    parser.add_argument("--model", default="superalloy")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="field-memory-") as tmp:
        root = Path(tmp)
        (root / "watch").mkdir()
        config = root / "phasewatch.toml"
        config.write_text(f"[watch]\nsettle_s = 0.5\n\n[limits]\nmax_megapixels = {max(50.0, args.megapixels)}\n")
        log = open(root / "serve.log", "wb")  # noqa: SIM115 - the service writes to it until it ends
        proc = subprocess.Popen([sys.executable, "-m", "phasewatch.app.cli", "serve", "--config", str(config),
                                 "--watch", str(root / "watch"), "--data", str(root / "data"), "--model", args.model,
                                 "--backend", "cpu", "--port", str(free_port())], stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for(lambda: b"serving" in (root / "serve.log").read_bytes(), "the service to serve", 300, proc)
            time.sleep(2)
            idle = status_kib(proc.pid, "VmRSS")
            image = field(args.megapixels)
            staged = root / "field.tif"
            tifffile.imwrite(staged, image)
            pixels = image.size
            del image
            started = time.monotonic()
            staged.replace(root / "watch" / "field.tif")
            wait_for(lambda: state_of(root / "data" / "phasewatch.sqlite3") in ("done", "failed"), "the field",
                     3600, proc)
            seconds = time.monotonic() - started
            time.sleep(1)
            peak, after = status_kib(proc.pid, "VmHWM"), status_kib(proc.pid, "VmRSS")
            state = state_of(root / "data" / "phasewatch.sqlite3")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            log.close()
        print(f"field {pixels / 1e6:.1f} MP ({state} in {seconds:.0f} s, model {args.model}, CPU backend, "
              f"{os.cpu_count()} CPUs): service RSS idle {idle / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB, "
              f"after {after / 1024:.0f} MiB")
    return 0 if state == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
