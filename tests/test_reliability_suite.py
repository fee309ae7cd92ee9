"""Issue 9's reliability suite in CI: ``bench/reliability.py --short`` against the real
``phasewatch serve`` (a malformed-input corpus, kill -9 during a feed, the faults this
machine lets it inject, a soak and the fuzzers), and the counts its table must show.

The suite runs in its own process, as an operator would run it; its JSON result is what is
asserted. Faults that need a mount (a full or read-only results tmpfs) say "skipped: why"
where the runner may not mount; the read-only fault then takes write permission away
instead, which binds a service that does not run as root.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "bench" / "reliability.py"
# The short profile takes about 65 s on the shared 2-core machine; the rest is slack for a slow runner,
# not a budget: the suite bounds every wait itself.
TIMEOUT_S = 600
FAULTS = ("disk-full", "read-only", "db-lock", "watch-folder-deleted", "watch-folder-replaced")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str, float]:
    workdir = tmp_path_factory.mktemp("reliability") / "run"
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(SUITE), "--short", "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    seconds = time.monotonic() - started
    output = done.stdout + done.stderr
    print(output)  # the table, with -s
    result = workdir / "reliability.json"
    assert result.is_file(), f"no result (exit {done.returncode}):\n{output[-4000:]}"
    return json.loads(result.read_text()), output, seconds


@pytest.mark.slow
def test_nothing_is_lost_duplicated_or_failed_and_nothing_dies(short_run: tuple[dict, str, float]) -> None:
    report, output, seconds = short_run
    details = "\n".join(report["details"])
    assert report["lost"] == 0, details
    assert report["duplicated"] == 0, details
    assert report["good_failed"] == 0, details
    assert report["threads_died"] == 0, details
    assert report["restarts_needed"] == 0, details
    assert report["not_finished"] == 0, details
    assert report["reasons_not_one_line"] == 0, details
    assert report["faults_not_recovered"] == 0, details
    assert report["must_be_zero"] == dict.fromkeys(report["must_be_zero"], 0)
    assert "lost" in output and "restarts needed" in output  # the table was printed
    print(f"short suite: {seconds:.0f} s")


@pytest.mark.slow
def test_the_suite_really_ran_every_part(short_run: tuple[dict, str, float]) -> None:
    report, _, _ = short_run
    assert report["inputs_tried"] >= 150
    assert report["kills"] >= 4
    assert report["unexpected_outcomes"] == 0, report["details"]  # the corpus's expectations held
    assert report["ignored_without_log_line"] == 0, report["details"]
    assert report["shell_injection"] == 0
    assert set(FAULTS) <= set(report["faults"])
    for name in FAULTS:
        verdict = report["faults"][name]
        assert verdict.startswith(("recovered", "skipped:", "2 of 2")), f"{name}: {verdict}"
    assert report["soak"].get("rss_growth_mib") is not None, report["soak"]
    assert report["stop"].startswith("SIGTERM: exit 0"), report["stop"]
    assert report["waits"]["good_files"] > 0, report["waits"]  # wedges were looked for
    assert report["peak_service_mib"] > 0


@pytest.mark.slow
def test_under_a_memory_cap_every_bomb_fails_in_the_decoder_and_the_service_lives_on(
        short_run: tuple[dict, str, float]) -> None:
    cap = short_run[0]["memory_cap"]
    assert cap["bombs"] >= 10 and cap["bombs_failed"] == cap["bombs"], cap
    in_the_child = f"decoding needs more memory than the limit of {cap['decode_memory_mb']} MiB"
    assert cap["reasons"].get(in_the_child, 0) >= 4, cap  # the stack bombs and the RGB 16-bit ones
    assert cap["good_files"] == cap["bombs"] and cap["good_done"] == cap["good_files"], cap
    assert cap["service_deaths"] == 0 and cap["stop"] == 0, cap


@pytest.mark.slow
def test_the_fuzzers_found_no_server_error_and_no_reader_defect(short_run: tuple[dict, str, float]) -> None:
    report, _, _ = short_run
    api, image, audit = report["api_fuzz"], report["image_fuzz"], report["pip_audit"]
    assert api.get("test_cases", 0) > 0, api
    assert api["server_errors"] == 0, api
    assert image.get("examples", 0) > 0, image
    assert image["defects"] == [], image
    # Offline runners cannot reach the vulnerability database: that is a skip, not a failure.
    assert audit["summary"].startswith(("skipped:", "0 known vulnerabilities")), audit
