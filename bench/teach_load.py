"""The daemon's copy-to-result time for a superalloy field, idle and while a teach job trains.

Issue 22 asks that a teach job leave inference its threads: a field's time from landing in
the watch folder to its result stays within 2x of idle. This runs the real service (bundled
superalloy model, CPU backend) on a temporary data folder, copies superalloy micrographs in
one at a time and times each from the rename into the watch folder to ``done`` in the API;
then starts a teach job through the API (three tomography slices labelled as a new
material, superalloy as the base: the same job as ``tests/test_teach_e2e.py``, niced, on
half the CPUs), waits until it is training, and times the same number of fields again
(other files, so that none is a duplicate). Prints the median of each and their ratio.

    python bench/teach_load.py [--fields 6] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import requests

from phasewatch.app.wiring import start_service, stop_service
from phasewatch.service.config import load_config

CLASSES = [{"name": "matrix", "colour": "#6e6e6e", "role": "phase"},
           {"name": "second phase", "colour": "#ff7800", "role": "phase"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ended(url: str, name: str) -> dict | None:
    for image in requests.get(f"{url}/api/images", params={"limit": 50, "q": name}, timeout=10).json():
        if Path(image["path"]).name == name and image["state"] in ("done", "failed"):
            return image
    return None


def copy_to_result(url: str, source: Path, watch: Path) -> float:
    """Seconds from the file appearing whole in the watch folder to its result in the API."""
    shutil.copy(source, watch / f".{source.name}.part")
    started = time.perf_counter()
    (watch / f".{source.name}.part").rename(watch / source.name)
    while (image := ended(url, source.name)) is None:
        time.sleep(0.02)
    assert image["state"] == "done", image["error"]
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fields", type=int, default=6, help="fields timed in each condition")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PHASEWATCH_DATA", "../shared/data")))
    parser.add_argument("--budget-min", type=float, default=30.0, help="the teach job's budget (it is cancelled)")
    args = parser.parse_args()
    superalloy = sorted((args.data / "superalloy").glob("*/images/*.tif"))
    if len(superalloy) < 2 * args.fields:
        print(f"need {2 * args.fields} superalloy micrographs under {args.data}/superalloy", file=sys.stderr)
        return 2
    tomography = args.data / "tomography" / "train"
    with tempfile.TemporaryDirectory(prefix="teach-load-") as tmp:
        watch, data = Path(tmp) / "watch", Path(tmp) / "data"
        watch.mkdir()
        config = load_config(None, {"watch": str(watch), "data": str(data), "model": "superalloy",
                                    "port": free_port(), "backend": "cpu"})
        service = start_service(config)
        url = service.url
        try:
            slices = sorted((tomography / "images").glob("*.png"))[:3]
            for source in slices:
                copy_to_result(url, source, watch)
            copy_to_result(url, superalloy[-1], watch)  # warm-up: the first field pays for loading
            idle = [copy_to_result(url, s, watch) for s in superalloy[:args.fields]]

            requests.post(f"{url}/api/materials", json={"name": "al-si", "classes": CLASSES, "who": "bench"},
                          timeout=10).raise_for_status()
            ids = []
            for source in slices:
                image = ended(url, source.name)
                assert image is not None
                png = cv2.imencode(".png", np.load(tomography / "labels" / f"{source.stem}.npy").astype(np.uint8))[1]
                requests.put(f"{url}/api/images/{image['id']}/labels", timeout=30, json={
                    "material": "al-si", "who": "bench", "png": base64.b64encode(png.tobytes()).decode()},
                ).raise_for_status()
                ids.append(image["id"])
            answer = requests.post(f"{url}/api/teach", timeout=10, json={
                "material": "al-si", "base": "superalloy", "fields": ids, "budget_min": args.budget_min,
                "who": "bench"})
            answer.raise_for_status()
            job = answer.json()["job"]
            while (state := requests.get(f"{url}/api/teach/{job}", timeout=10).json())["stage"] != "train":
                assert state["state"] in ("queued", "running"), state
                time.sleep(0.5)
            time.sleep(5)  # into its training steps
            busy = [copy_to_result(url, s, watch) for s in superalloy[args.fields:2 * args.fields]]
            still = requests.get(f"{url}/api/teach/{job}", timeout=10).json()
            requests.delete(f"{url}/api/teach/{job}", json={"who": "bench"}, timeout=10)
        finally:
            stop_service(service)
    print(f"copy-to-result, superalloy field (512 x 512), CPU backend, {os.cpu_count()} CPUs:")
    print(f"  idle:              median {statistics.median(idle):.3f} s  ({', '.join(f'{t:.2f}' for t in idle)})")
    print(f"  teach job running: median {statistics.median(busy):.3f} s  ({', '.join(f'{t:.2f}' for t in busy)})"
          f"  [job {still['state']}, stage {still['stage']}, progress {still['progress']:.2f}]")
    print(f"  ratio (teach / idle): {statistics.median(busy) / statistics.median(idle):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
