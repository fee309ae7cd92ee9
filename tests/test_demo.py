"""``phasewatch demo``: the real service, page and model on drawn micrographs of known truth,
run as the user runs it (a process, stopped with Ctrl-C or SIGTERM)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from chromium import CHROMIUM

from phasewatch.app.commands.demo import _workspace
from phasewatch.bundle import resolve_bundle_path

TOLERANCE = 0.03  # measured main-phase fraction against the truth (measured: within 0.3 points)


class Demo:
    """A ``phasewatch demo`` process whose output is read line by line as it comes."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        env = {**os.environ, "TMPDIR": str(tmp_path)}  # its temporary workspace lands in tmp_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "phasewatch.app.cli", "demo", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.search(pattern, line)
                if found:
                    return found
            assert self.process.poll() is None, f"the demo ended ({self.process.returncode}):\n{self.output}"
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n{self.output}")

    def stop(self, sig: int = signal.SIGINT) -> int:
        self.process.send_signal(sig)
        code = self.process.wait(60)
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def finished_fields(url: str, count: int, timeout: float = 90.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        images = get_json(f"{url}/api/images")
        if sum(i["state"] in ("done", "failed") for i in images) >= count:
            return images
        time.sleep(0.5)
    raise AssertionError(f"{count} fields not finished in {timeout} s: {images}")


def test_the_demo_serves_drawn_fields_measured_against_their_truth_and_cleans_up(tmp_path):
    bundled = (resolve_bundle_path("superalloy") / "manifest.json").read_bytes()
    demo = Demo(tmp_path, "--fields", "3", "--interval", "1", "--port", "0")
    try:
        workspace = Path(demo.wait_for(r"^workspace: (.+) \(removed at exit\)$", 10).group(1))
        assert workspace.parent == tmp_path
        demo.wait_for(r"agrees with their truth on (9\d|100)\.\d % of the pixels")
        url = demo.wait_for(r"open (http://127\.0\.0\.1:\d+)$").group(1)
        images = finished_fields(url, 3)
        assert [i["file"] for i in images] == ["field-0003.tif", "field-0002.tif", "field-0001.tif"]
        truths = [json.loads((workspace / "truth" / i["file"].replace(".tif", ".json")).read_text()) for i in images]
        for image, truth in zip(images, truths, strict=True):
            assert image["state"] == "done" and image["trust"]["ok"], image
            measured, true = (f["secondary gamma prime"] for f in (image["fractions"], truth["fractions"]))
            assert abs(measured - true) < TOLERANCE, (image["file"], measured, true)
        # the page has statistics: the trusted fields count
        stats = get_json(f"{url}/api/specimens/{images[0]['specimen_id']}/stats")
        assert stats["fields"] == 3 and stats["main_phase"] == "secondary gamma prime"
        # ... and the truth beside them, in the specimen's notes
        assert stats["specimen"]["name"] == "demo microscope: drawn superalloy fields"
        true_mean = sum(t["fractions"]["secondary gamma prime"] for t in truths) / 3
        assert stats["specimen"]["notes"].startswith(
            f"known truth: secondary gamma prime {100 * true_mean:.1f} % on average over the 3 fields drawn "
            "(field-0003 ")
        # the served copy says what its trust was calibrated on; the bundled model is untouched
        copy = json.loads((workspace / "model" / "manifest.json").read_text())
        assert copy["trust"]["calibration"]["source"].startswith("demo microscope: 4 drawn superalloy")
        assert get_json(f"{url}/api/status")["model"] == "superalloy (demo calibration)"
        assert (resolve_bundle_path("superalloy") / "manifest.json").read_bytes() == bundled
        demo.wait_for(r"^3 fields done: measured - true secondary gamma prime fraction")
        assert len(re.findall(r"field-000\d\.tif  secondary gamma prime: measured .* trusted", demo.output)) == 3
        assert demo.stop(signal.SIGINT) == 0, demo.output
    finally:
        demo.kill()
    assert demo.lines[-1] == f"removed {workspace}"
    assert not workspace.exists()


def test_sigterm_stops_the_demo_and_removes_its_workspace(tmp_path):
    demo = Demo(tmp_path, "--model", "ebc", "--port", "0")
    try:
        workspace = Path(demo.wait_for(r"^workspace: (.+) \(removed at exit\)$", 10).group(1))
        demo.wait_for(r"segmenting 4 drawn ebc micrographs")
        assert demo.stop(signal.SIGTERM) == 0, demo.output
    finally:
        demo.kill()
    assert not workspace.exists()


def test_a_model_whose_material_the_demo_cannot_draw_is_refused_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "phasewatch.app.cli", "demo", "--model", "uhcs-carbide"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "phasewatch demo: the demo draws superalloy or ebc micrographs; uhcs-carbide's classes (ferrite matrix, "
        "cementite network, spheroidite particles, widmanstatten) are none of them"]


def test_a_given_workspace_is_kept_and_a_temporary_one_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with _workspace(tmp_path / "mine") as kept:
        (kept / "x").write_text("kept")
    assert (tmp_path / "mine" / "x").read_text() == "kept"
    with _workspace(None) as temporary:
        (temporary / "x").write_text("gone")
    assert temporary.parent == tmp_path and not temporary.exists()


def test_the_demo_fills_the_page_with_five_fields_and_their_legend(tmp_path):
    """As a newcomer sees it: ``phasewatch demo --fields 5 --interval 1`` in Debian's chromium."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium)")
    demo = Demo(tmp_path, "--fields", "5", "--interval", "1", "--port", "0")
    try:
        url = demo.wait_for(r"open (http://127\.0\.0\.1:\d+)$").group(1)
        images = finished_fields(url, 5)
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            cards = page.locator("#strip li")
            sync_api.expect(cards).to_have_count(5, timeout=30_000)
            assert sorted(page.locator("#strip li a").evaluate_all("as => as.map(a => +a.dataset.id)")) == sorted(
                i["id"] for i in images)
            newest = images[0]
            sync_api.expect(page.locator("#field-title")).to_have_text(f"{newest['file']} (#{newest['id']})")
            legend = page.locator("#legend li")
            sync_api.expect(legend).to_have_count(3)
            assert [t.split("\n")[0] for t in legend.locator(".name").all_inner_texts()] == [
                "γ matrix", "secondary γ′", "tertiary γ′"]
            assert page.locator("#picture").evaluate("c => c.width > 0 && c.height > 0")
            browser.close()
        assert demo.stop(signal.SIGINT) == 0, demo.output
    finally:
        demo.kill()
