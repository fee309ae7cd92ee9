"""The service wired together: store, daemon, event broker and web server, started and
stopped in the order that loses nothing. The one module that joins ``service`` and ``webui``;
``phasewatch serve`` and ``phasewatch demo`` both run the service through it."""

from __future__ import annotations

from dataclasses import dataclass

from phasewatch.errors import PhasewatchError
from phasewatch.service.config import Config
from phasewatch.service.daemon import Daemon, model_factory
from phasewatch.service.teach_jobs import TeachJobs
from phasewatch.store import Store
from phasewatch.store.rows import ImageRow
from phasewatch.webui.access import Access
from phasewatch.webui.app import AppContext, create_app, image_json
from phasewatch.webui.events import EventBroker
from phasewatch.webui.server import ServerHandle, ServerLimits, serve_in_thread


class ServiceError(PhasewatchError):
    """The service cannot start; the message is one line for the log."""


@dataclass(frozen=True)
class Service:
    """A running service: its store, daemon, event broker and web server."""

    store: Store
    daemon: Daemon
    events: EventBroker
    server: ServerHandle
    teach: TeachJobs | None = None

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
    teach = TeachJobs(config.data.dir, store, on_change=lambda job: events.publish("teach", job),
                      reload_model=daemon.reload_model)
    try:
        server = _serve_web(config, store, daemon, events, teach)
    except (OSError, ValueError) as exc:  # the port is taken, the address is not ours, ...
        store.close()
        raise ServiceError(f"cannot start the web page on {config.server.host}:{config.server.port}: {exc}") from exc
    daemon.start()
    return Service(store, daemon, events, server, teach)


def stop_service(service: Service) -> None:
    """Finish the fields in hand and stop, in the order that loses nothing: the daemon
    (its last fields still publish events), the event streams (they free the server's
    threads), the web server, and the store last, as a request in flight may still read it.
    Teach jobs are cancelled first: a model half taught is not kept."""
    if service.teach is not None:
        service.teach.close()
    service.daemon.stop()
    service.events.close()
    service.server.stop()
    service.store.close()


def _serve_web(config: Config, store: Store, daemon: Daemon, events: EventBroker, teach: TeachJobs) -> ServerHandle:
    web = config.web
    app = create_app(AppContext(store=store, events=events, status=daemon.status,
                                health=daemon.health_report, metrics=daemon.metrics.render,
                                target_ra=config.specimen.target_ra, data_dir=config.data.dir,
                                count_flagged=config.specimen.count_flagged, teach=teach,
                                access=Access.for_service(web.token, config.server.host, web.allowed_hosts,
                                                          session_lifetime_s=web.session_hours * 3600.0)))
    limits = ServerLimits(streams=web.max_streams, connection_limit=web.max_connections,
                          idle_timeout_s=web.idle_timeout_s)
    return serve_in_thread(app, config.server.host, config.server.port, limits)


def _open_service(config: Config, events: EventBroker) -> tuple[Store, Daemon]:
    """The store and the daemon on it; the store is closed again if the daemon cannot start."""
    config.data.dir.mkdir(parents=True, exist_ok=True)
    store = Store(config.data.database, max_attempts=config.queue.max_attempts)
    try:
        active = store.active_model
        return store, Daemon(config, store, model_factory(config, lambda: (active() or {}).get("name")),
                             publish=lambda event, image: _publish(events, event, image))
    except BaseException:
        store.close()
        raise


def _publish(events: EventBroker, event: str, image: ImageRow) -> None:
    events.publish(event, image_json(image))
