"""``phasewatch serve``: the daemon, its web page and API, and its systemd manners.

SIGTERM (and SIGINT) stop taking files, finish the fields in hand and exit 0; SIGHUP
reloads the model between batches. A sticky CUDA error (``Daemon.fatal``: the GPU context is
lost until the process ends) stops the service the same way and exits 1, so that systemd
(``Restart=on-failure``) starts a fresh process. READY=1, watchdog pings (only while healthy) and
STOPPING=1 go to the systemd notify socket when there is one.

The page is reachable only from this machine unless a token is set: ``serve`` refuses
to listen on any other address without one (``[web]`` keys, ``webui.security``).

The service itself (store, daemon, event broker, web server) is started and stopped by
``app/wiring.py``, which ``phasewatch demo`` shares; ``run`` adds the signals, the notify
protocol and the watchdog.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from phasewatch.app.wiring import ServiceError, start_service, stop_service
from phasewatch.errors import PhasewatchError
from phasewatch.service import sdnotify
from phasewatch.service.config import TOKEN_ENV, add_service_arguments, config_from_args
from phasewatch.service.daemon import Daemon
from phasewatch.service.logs import fields as log_fields
from phasewatch.service.logs import setup_logging
from phasewatch.webui.access import exposure_problem

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_service_arguments(parser)
    parser.add_argument("--token", help=f"token the page and API require ([web] token; default ${TOKEN_ENV}); "
                                         "visible to other users in the process list: prefer the variable")


def run(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
    except PhasewatchError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    problem = exposure_problem(config.server.host, config.web.token)
    if problem is not None:
        print(f"phasewatch serve: {problem}", file=sys.stderr)
        return 2
    setup_logging(config.logging.level)
    try:
        service = start_service(config)
    except ServiceError as exc:
        log.error("%s", exc)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: _reload(service.daemon))
    threading.Thread(target=_stop_when_lost, args=(service.daemon, stop), name="gpu-lost", daemon=True).start()
    watchdog = sdnotify.Watchdog(healthy=service.daemon.alive)
    watchdog.start()
    log.info("serving", extra=log_fields(url=service.url, watch=str(config.watch.dir), data=str(config.data.dir),
                                          model=service.daemon.model.bundle.name,
                                          backend=service.daemon.model.backend.name))
    sdnotify.ready()
    sdnotify.status(f"watching {config.watch.dir}; page at {service.url}")
    stop.wait()
    log.info("stopping: finishing the fields in hand")
    sdnotify.stopping()
    watchdog.stop()
    stop_service(service)
    if service.daemon.fatal.is_set():
        log.critical("stopped: %s", service.daemon.lost)
        return 1
    log.info("stopped")
    return 0


def _stop_when_lost(daemon: Daemon, stop: threading.Event) -> None:
    daemon.fatal.wait()
    stop.set()


def _reload(daemon: Daemon) -> None:
    sdnotify.reloading()
    daemon.reload_model()
    sdnotify.ready()
