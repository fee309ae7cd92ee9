"""``phasewatch serve``: the daemon, its web page and API, and its systemd manners.

SIGTERM (and SIGINT) stop taking files, finish the fields in hand and exit 0; SIGHUP
reloads the model between batches. READY=1, watchdog pings (only while healthy) and
STOPPING=1 go to the systemd notify socket when there is one.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from phasewatch.runtime import sdnotify
from phasewatch.runtime.backends import BackendError
from phasewatch.runtime.bundle import BundleError
from phasewatch.runtime.config import ConfigError, load_config
from phasewatch.runtime.daemon import Daemon
from phasewatch.runtime.logs import fields as log_fields
from phasewatch.runtime.logs import setup_logging
from phasewatch.runtime.segment_cli import BACKENDS
from phasewatch.webui.app import AppContext, create_app
from phasewatch.webui.events import EventBroker
from phasewatch.webui.server import serve_in_thread

log = logging.getLogger("phasewatch.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML file (default /etc/phasewatch/phasewatch.toml when it exists)")
    parser.add_argument("--watch", type=Path, help="folder the microscope writes into (only read)")
    parser.add_argument("--data", type=Path, help="folder for the database and results")
    parser.add_argument("--model", help="bundle folder or bundled model name")
    parser.add_argument("--backend", choices=BACKENDS)
    parser.add_argument("--host", help="address the web page listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port of the web page (default 8650)")


def run(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in ("watch", "data", "model", "backend", "host", "port")}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    setup_logging(config.logging.level)
    events = EventBroker()
    try:
        daemon = Daemon(config, publish=events.publish)
    except (BundleError, BackendError, OSError) as exc:
        log.error("cannot start: %s", exc)
        return 1
    app = create_app(AppContext(store=daemon.store, events=events, status=daemon.status,
                                health=lambda: _health(daemon), metrics=daemon.metrics.render,
                                target_ra=config.specimen.target_ra, data_dir=config.data.dir))
    server = serve_in_thread(app, config.server.host, config.server.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: _reload(daemon))
    daemon.start()
    # Only a wedged worker should make systemd restart us; a missing folder or full disk is retried here.
    watchdog = sdnotify.Watchdog(healthy=lambda: "worker" not in daemon.health()[1])
    watchdog.start()
    log.info("serving", extra=log_fields(url=server.url, watch=str(config.watch.dir), data=str(config.data.dir),
                                          model=daemon.bundle.name, backend=daemon.backend.name))
    sdnotify.ready()
    sdnotify.status(f"watching {config.watch.dir}; page at {server.url}")
    stop.wait()
    log.info("stopping: finishing the fields in hand")
    sdnotify.stopping()
    watchdog.stop()
    daemon.stop()
    events.close()
    server.stop()
    log.info("stopped")
    return 0


def _reload(daemon: Daemon) -> None:
    sdnotify.reloading()
    daemon.reload_model()
    sdnotify.ready()


def _health(daemon: Daemon) -> tuple[bool, dict]:
    ok, problems = daemon.health()
    return ok, {"reasons": list(problems.values()), "problems": problems}
