"""``phasewatch serve``: the daemon, its web page and API, and its systemd manners.

SIGTERM (and SIGINT) stop taking files, finish the fields in hand and exit 0; SIGHUP
reloads the model between batches. READY=1, watchdog pings (only while healthy) and
STOPPING=1 go to the systemd notify socket when there is one.

The page is reachable only from this machine unless a token is set: ``serve`` refuses
to listen on any other address without one (``[web]`` keys, ``webui.security``).

:func:`start_service` and :func:`stop_service` are the service itself (store, daemon,
event broker, web server), shared with ``phasewatch demo``; ``run`` adds the signals,
the notify protocol and the watchdog.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

from phasewatch.errors import PhasewatchError
from phasewatch.service import sdnotify
from phasewatch.service.config import TOKEN_ENV, Config, add_service_arguments, config_from_args
from phasewatch.service.daemon import Daemon, model_factory
from phasewatch.service.logs import fields as log_fields
from phasewatch.service.logs import setup_logging
from phasewatch.store import Store
from phasewatch.webui.access import Access, exposure_problem
from phasewatch.webui.app import AppContext, create_app, image_json
from phasewatch.webui.events import EventBroker
from phasewatch.webui.server import ServerHandle, ServerLimits, serve_in_thread

log = logging.getLogger("phasewatch.serve")


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
    log.info("stopped")
    return 0


class ServiceError(PhasewatchError):
    """The service cannot start; the message is one line for the log."""


@dataclass(frozen=True)
class Service:
    """A running service: its store, daemon, event broker and web server."""

    store: Store
    daemon: Daemon
    events: EventBroker
    server: ServerHandle

    @property
    def url(self) -> str:
        return self.server.url


def start_service(config: Config) -> Service:
    """Open the store, load the model, start the web page and then the daemon (so that
    the page is up before the first field is taken); raises :class:`ServiceError`, with
    the store closed again, when one of them cannot start."""
    events = EventBroker(max_subscribers=config.web.max_streams, max_per_client=config.web.max_streams_per_client)
    try:
        store, daemon = _open_service(config, events)
    except (PhasewatchError, OSError) as exc:
        raise ServiceError(f"cannot start: {exc}") from exc
    try:
        server = _serve_web(config, store, daemon, events)
    except (OSError, ValueError) as exc:  # the port is taken, the address is not ours, ...
        store.close()
        raise ServiceError(f"cannot start the web page on {config.server.host}:{config.server.port}: {exc}") from exc
    daemon.start()
    return Service(store, daemon, events, server)


def stop_service(service: Service) -> None:
    """Finish the fields in hand and stop, in the order that loses nothing: the daemon
    (its last fields still publish events), the event streams (they free the server's
    threads), the web server, and the store last, as a request in flight may still read it."""
    service.daemon.stop()
    service.events.close()
    service.server.stop()
    service.store.close()


def _serve_web(config: Config, store: Store, daemon: Daemon, events: EventBroker) -> ServerHandle:
    web = config.web
    app = create_app(AppContext(store=store, events=events, status=daemon.status,
                                health=daemon.health_report, metrics=daemon.metrics.render,
                                target_ra=config.specimen.target_ra, data_dir=config.data.dir,
                                count_flagged=config.specimen.count_flagged,
                                access=Access.for_service(web.token, config.server.host, web.allowed_hosts)))
    limits = ServerLimits(streams=web.max_streams, connection_limit=web.max_connections,
                          idle_timeout_s=web.idle_timeout_s)
    return serve_in_thread(app, config.server.host, config.server.port, limits)


def _open_service(config: Config, events: EventBroker) -> tuple[Store, Daemon]:
    """The store and the daemon on it; the store is closed again if the daemon cannot start."""
    config.data.dir.mkdir(parents=True, exist_ok=True)
    store = Store(config.data.database, max_attempts=config.queue.max_attempts)
    try:
        return store, Daemon(config, store, model_factory(config),
                             publish=lambda event, image: _publish(events, event, image))
    except BaseException:
        store.close()
        raise


def _reload(daemon: Daemon) -> None:
    sdnotify.reloading()
    daemon.reload_model()
    sdnotify.ready()


def _publish(events: EventBroker, event: str, image: dict[str, Any]) -> None:
    events.publish(event, image_json(image))
