"""Where the daemon's CPU goes per field: the service (store, daemon, web server) run in this
process on a burst of real micrographs, its CPU per thread and per step, against the network's.

On a CPU backend with one ONNX Runtime thread per core, whatever CPU the service spends outside
the network is taken from the network (issue 25: burst throughput >= 0.9 of the bare engine
means the rest must stay under ~10 % of the network's CPU). CPU, not wall time, so that the
numbers hold on a loaded machine:

* per thread: ``/proc/self/task/TID/schedstat`` (nanoseconds on a CPU), from after a warm-up
  file to the last result; threads are named by ``threading`` (the stages ``phasewatch-*``,
  waitress, the watcher); native threads that Python does not know are ONNX Runtime's pool;
* per step: ``time.thread_time`` around the functions the stages call (inclusive: a step's
  line includes the steps indented under it);
* the decoder child: its own ``schedstat``.

A bench poller thread asks ``/api/status`` every ``--poll`` seconds, as ``daemon_burst.py``
does from another process; its client side is shown apart and is not the service's.

Run: ``python bench/daemon_cpu.py --material ebc --copies 2 [--json]`` (needs the shared data).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_burst import MATERIALS, POLL_S, PROJECT_ROOT, _free_port, stage_files  # noqa: E402

from phasewatch.app.wiring import start_service, stop_service  # noqa: E402
from phasewatch.backends.onnxruntime import OrtBackend  # noqa: E402
from phasewatch.core.pipeline import open_model, segment_images  # noqa: E402
from phasewatch.imageio.formats import read_pages  # noqa: E402
from phasewatch.service.config import load_config  # noqa: E402

# Where the step accounting is hooked: (module, attribute, label). Labels with a dot are inside
# the step named before the dot (inclusive times).
STEPS = (
    ("phasewatch.service.daemon", "sha256_file", "intake.sha256"),
    ("phasewatch.service.daemon", "decode_file", "decode.decode_file"),
    ("phasewatch.imageio.isolated", "_receive_pages", "decode.decode_file.receive_pixels"),
    ("phasewatch.core.pipeline", "prepare", "infer.prepare"),
    ("phasewatch.core.pipeline", "input_features", "infer.input_features"),
    ("phasewatch.core.tiling", "_infer_and_stitch", "infer.infer_and_stitch"),
    ("cv2", "resize", "infer.cv2_resize"),  # back to the field's size (and a preview's)
    ("phasewatch.service.daemon", "measure_and_write", "write.measure_and_write"),
    ("phasewatch.core.pipeline", "assessed_record", "write.measure_and_write.record"),
    ("phasewatch.core.pipeline", "measure", "write.measure_and_write.record.measure"),
    ("phasewatch.core.pipeline", "assess", "write.measure_and_write.record.trust"),
    ("phasewatch.core.pipeline", "write_outputs", "write.measure_and_write.write_outputs"),
    ("phasewatch.core.outputs", "overlay", "write.measure_and_write.write_outputs.overlay"),
    ("phasewatch.core.outputs", "write_png_atomic", "write.measure_and_write.write_outputs.png"),
    ("phasewatch.core.outputs", "write_json_atomic", "write.measure_and_write.write_outputs.json"),
    ("phasewatch.core.outputs", "write_jpeg_atomic", "write.measure_and_write.jpeg_overlay_and_preview"),
    ("phasewatch.core.pipeline", "write_png_atomic", "write.measure_and_write.unsure_png"),
    ("phasewatch.core.pipeline", "write_preview", "write.measure_and_write.preview"),
    ("phasewatch.core.pipeline", "pixel_sha256", "write.measure_and_write.pixel_sha256"),
    ("phasewatch.service.daemon", "_return_free_memory", "write.malloc_trim"),
)
STORE_CALLS = ("enqueue", "claim_next", "set_stage", "mark_done", "get_image", "counts_by_state", "list_images")
NETWORK = "network.run"  # the calling thread's share of ONNX Runtime: model without, with the head
NETWORK_HEAD = "network.run_head"


class Ledger:
    """CPU seconds per label, and calls per label, from any thread."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)
        self._lock = threading.Lock()
        self.on = False

    @contextmanager
    def step(self, label: str) -> Iterator[None]:
        begun = time.thread_time()
        try:
            yield
        finally:
            if self.on:
                with self._lock:
                    self.cpu[label] += time.thread_time() - begun
                    self.calls[label] += 1

    def wrap(self, function: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.step(label):
                return function(*args, **kwargs)
        return timed


def hook(ledger: Ledger) -> None:
    import importlib

    for module_name, attribute, label in STEPS:
        module = importlib.import_module(module_name)
        setattr(module, attribute, ledger.wrap(getattr(module, attribute), label))
    for method, label in (("run", NETWORK), ("run_head", NETWORK_HEAD)):
        setattr(OrtBackend, method, ledger.wrap(getattr(OrtBackend, method), label))


def hook_store(ledger: Ledger, store: Any) -> None:
    for name in STORE_CALLS:
        setattr(store, name, ledger.wrap(getattr(store, name), f"store.{name}"))


def task_cpu(pid: int | str = "self") -> dict[int, float]:
    """CPU seconds of every thread of a process (schedstat: nanoseconds on a CPU)."""
    seconds = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            seconds[int(task.name)] = int((task / "schedstat").read_text().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
            continue
    return seconds


def thread_group(name: str) -> str:
    if name.startswith(("waitress", "phasewatch-web")):
        return "web server"
    if name.startswith("phasewatch-"):
        return name.removeprefix("phasewatch-")
    if name == "bench-poller":
        return "bench poller (client, not the service)"
    if name == "MainThread":
        return "main (bench)"
    return f"other python ({name.rstrip('0123456789-')})"


def thread_names() -> dict[int, str]:
    return {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}


def by_group(before: dict[int, float], after: dict[int, float], names: dict[int, str]) -> dict[str, float]:
    groups: dict[str, float] = collections.defaultdict(float)
    for tid, cpu in after.items():
        group = thread_group(names[tid]) if tid in names else "native (ONNX Runtime pool)"
        groups[group] += cpu - before.get(tid, 0.0)
    return dict(groups)


def poll(url: str, stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        with urllib.request.urlopen(f"{url}/api/status", timeout=30) as response:
            json.load(response)


def wait_done(store: Any, count: int, deadline_s: float = 900.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        counts = store.counts_by_state()
        if counts["done"] + counts["failed"] >= count:
            if counts["failed"]:
                raise SystemExit(f"{counts['failed']} file(s) failed")
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {count} results")


def child_cpu(service: Any) -> float:
    child = service.daemon.decoder._child  # the bounded decoder process of the page reads
    return sum(task_cpu(child.process.pid).values()) if child is not None else 0.0


def engine_cpu(paths: list[Path], args: argparse.Namespace, ledger: Ledger) -> dict[str, float]:
    """The bare engine's CPU seconds on the same files (decoded first, not counted): all of this
    process's threads, and the network's share as for the daemon (``segment_images`` with the
    daemon's model and batch, after a warm-up). ``ledger`` is left empty for the daemon."""
    opened = open_model(args.model, args.backend, args.batch)
    images = [read_pages(p)[0].image for p in paths]
    try:
        list(segment_images(images[:1], opened.bundle, opened.backend, batch=args.batch, plan=opened.plan))
        ledger.on = True
        before, names = task_cpu(), thread_names()
        for _ in segment_images(images, opened.bundle, opened.backend, batch=args.batch, plan=opened.plan):
            pass
        after = task_cpu()
    finally:
        ledger.on = False
        opened.close()
    pool = sum(cpu - before.get(tid, 0.0) for tid, cpu in after.items() if tid not in names)
    network = pool + ledger_network(ledger)
    ledger.cpu.clear()
    ledger.calls.clear()
    return {"total": sum(cpu - before.get(tid, 0.0) for tid, cpu in after.items()), "network": network}


def ledger_network(ledger: Ledger) -> float:
    return ledger.cpu[NETWORK] + ledger.cpu[NETWORK_HEAD]


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="phasewatch-cpu-") as tmp:
        work = Path(tmp)
        staged = stage_files(args.data, args.material, args.copies, 1, work / "staging")
        warm, burst = staged[-1], staged[:-1]
        ledger = Ledger()
        hook(ledger)
        engine = engine_cpu(burst, args, ledger)
        (work / "watch").mkdir()
        config = load_config(None, {"watch": work / "watch", "data": work / "data", "model": args.model,
                                    "backend": args.backend, "port": _free_port(), "model.batch": args.batch})
        service = start_service(config)
        hook_store(ledger, service.store)
        stop = threading.Event()
        poller = threading.Thread(target=poll, args=(service.url, stop, args.poll), name="bench-poller", daemon=True)
        try:
            shutil.copyfile(warm, work / "watch" / warm.name)
            wait_done(service.store, 1)
            poller.start()
            time.sleep(0.5)  # the stages back at their waits
            ledger.on = True
            threads_before, child_before = task_cpu(), child_cpu(service)
            wall_before = time.perf_counter()
            for path in burst:
                shutil.copyfile(path, work / "watch" / path.name)
            wait_done(service.store, 1 + len(burst))
            wall = time.perf_counter() - wall_before
            threads_after, child_after, names = task_cpu(), child_cpu(service), thread_names()
            ledger.on = False
        finally:
            stop.set()
            if poller.ident is not None:
                poller.join()
            stop_service(service)
    fields = len(burst)
    threads = by_group(threads_before, threads_after, names)
    network = threads.get("native (ONNX Runtime pool)", 0.0) + ledger_network(ledger)
    return {
        "material": args.material, "model": args.model, "fields": fields, "poll_s": args.poll,
        "wall_s": wall, "decoder_child_cpu_s": child_after - child_before,
        "threads_cpu_s": threads, "steps_cpu_s": dict(ledger.cpu), "steps_calls": dict(ledger.calls),
        "network_cpu_s": network, "engine_cpu_s": engine,
        "loadavg": os.getloadavg(), "cpu_count": os.cpu_count(),
    }


def ledger_share(result: dict[str, Any]) -> float:
    steps = result["steps_cpu_s"]
    return float(steps.get(NETWORK, 0.0) + steps.get(NETWORK_HEAD, 0.0))


def ms(seconds: float, fields: int) -> str:
    return f"{seconds * 1000 / fields:8.1f}"


def report(result: dict[str, Any]) -> None:
    n = result["fields"]
    network = result["network_cpu_s"]
    print(f"{result['material']} ({result['model']}): {n} fields, wall {result['wall_s']:.1f} s, "
          f"load average {result['loadavg'][0]:.1f} on {result['cpu_count']} CPUs")
    print("CPU ms per field, by thread:")
    threads = result["threads_cpu_s"]
    for group, seconds in sorted(threads.items(), key=lambda kv: -kv[1]):
        print(f"  {group:<44}{ms(seconds, n)}")
    print(f"  {'decoder child process':<44}{ms(result['decoder_child_cpu_s'], n)}")
    print("CPU ms per field, by step (inclusive; calls per field):")
    order = [label for _, _, label in STEPS] + [NETWORK, NETWORK_HEAD] + [f"store.{name}" for name in STORE_CALLS]
    for label in order:
        if label not in result["steps_cpu_s"]:
            continue
        seconds = result["steps_cpu_s"][label]
        depth = label.count(".")
        name = label.rsplit(".", 1)[-1] if depth > 1 else label
        print(f"  {'  ' * depth}{name:<{44 - 2 * depth}}{ms(seconds, n)}  "
              f"({result['steps_calls'].get(label, 0) / n:.1f})")
    service = sum(s for g, s in threads.items() if not g.startswith("bench") and not g.startswith("main"))
    outside = service - network + result["decoder_child_cpu_s"]
    print(f"network (ONNX Runtime pool + the infer thread inside session.run): {ms(network, n)} ms per field")
    glue = threads.get("infer", 0.0) - ledger_share(result)
    print(f"the infer thread outside session.run (the engine's own work too):  {ms(glue, n)} ms per field")
    print(f"the service outside the network (its threads + decoder child):    {ms(outside, n)} ms per field "
          f"= {outside / network:.1%} of the network's")
    engine = result["engine_cpu_s"]
    print(f"bare engine (segment_images, same files, this process): network {ms(engine['network'], n)} ms, "
          f"outside it {ms(engine['total'] - engine['network'], n)} ms per field "
          f"= {(engine['total'] - engine['network']) / engine['network']:.1%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("PHASEWATCH_DATA", PROJECT_ROOT.parent
                                                                         / "shared" / "data")))
    parser.add_argument("--material", choices=MATERIALS, default="ebc")
    parser.add_argument("--model", help="bundle folder or bundled name (default: the material's)")
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--poll", type=float, default=POLL_S, help="seconds between the bench's status polls")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.model = args.model or args.material
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
