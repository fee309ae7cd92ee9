"""``phasewatch teach``: fine-tune a model on a material's labelled fields, gate it, and keep
it as ``DATA/models/NAME@N`` (``src/phasewatch/export/teach.py``; needs torch).

The HTTP API's teach jobs run this very command in a process of their own
(``service/teach_jobs.py``) with ``--json``: progress as one JSON object per line on stdout,
the result last; a failure is one line on stderr and exit status 1. ``--nice``/``--idle``
lower the process's priority (``--idle``: Linux's idle scheduling class, CPU time only when
nothing else wants it) and ``--threads`` the CPUs it trains on, so that the daemon's
inference keeps its own (``bench/teach_load.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

TORCH_MISSING = "teaching needs PyTorch, which is not installed: pip install 'phasewatch[export]'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="the service's data folder (its store and models)")
    parser.add_argument("--material", required=True, help="the material whose labelled fields to learn")
    parser.add_argument("--base", required=True, help="model to start from: bundled, taught here, or a bundle folder")
    parser.add_argument("--fields", default="", help="image ids, comma-separated (default: every labelled field)")
    parser.add_argument("--budget-min", type=float, default=10.0, help="minutes of training (default 10)")
    parser.add_argument("--name", default=None, help="the model's name before @N (default: the material's)")
    parser.add_argument("--who", default=os.environ.get("USER", "phasewatch"), help="who teaches, for the audit")
    parser.add_argument("--threads", type=int, default=max(1, len(os.sched_getaffinity(0)) // 2),
                        help="CPUs to train on (default half of them)")
    parser.add_argument("--nice", type=int, default=0, help="lower this process's priority by N (0..19)")
    parser.add_argument("--idle", action="store_true",
                        help="run only on CPU time nothing else wants (Linux SCHED_IDLE): the service's teach jobs")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="progress and result as JSON lines on stdout")


def _fields(text: str) -> list[int] | None:
    if not text.strip():
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ValueError(f"--fields must be image ids separated by commas, got {text!r}") from exc


def _limit_cpus(threads: int) -> None:
    """Train on ``threads`` CPUs: the training loop sizes its thread pool by the CPUs it may use."""
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[-max(1, min(threads, len(allowed))):])


def run(args: argparse.Namespace) -> int:
    def say(record: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(record), flush=True)
        elif "stage" in record:
            print(f"{record['stage']:<9} {100 * record['progress']:5.1f} %  {record['message']}", file=sys.stderr)

    try:
        fields = _fields(args.fields)
        import torch  # noqa: F401  - here, so that its absence is the one line below, not a traceback later

        from phasewatch.export.teach import TeachRequest, teach

        if args.nice:
            os.nice(args.nice)
        if args.idle:  # a niced thread still takes a slice of a busy CPU; an idle-class one waits
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        _limit_cpus(args.threads)
    except ModuleNotFoundError as exc:
        if exc.name == "torch":
            print(f"phasewatch teach: {TORCH_MISSING}", file=sys.stderr)
            return 1
        raise
    except (ValueError, OSError) as exc:
        print(f"phasewatch teach: {exc}", file=sys.stderr)
        return 2
    from phasewatch.errors import PhasewatchError

    # A cancel (SIGTERM from the service's job runner) unwinds, so the half-made model is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.time()
    request = TeachRequest(args.data, args.material, args.base, args.who, args.budget_min, fields, args.name,
                           args.threads, args.device, args.seed)
    try:
        result = teach(request, lambda stage, fraction, message: say(
            {"stage": stage, "progress": round(fraction, 4), "message": message,
             "elapsed_s": round(time.time() - started, 1)}))
    except PhasewatchError as exc:
        print(f"phasewatch teach: {exc}", file=sys.stderr)
        return 1
    say({"result": result})
    if not args.json:
        gate = result["gate"]
        verdict = "passed" if gate["passed"] else "failed: " + "; ".join(gate["reasons"])
        print(f"{result['model']}: gate {verdict} (held-out mIoU "
              f"{gate['held_out']['candidate']['mean_iou']}); {result['path']}", file=sys.stderr)
    return 0
