"""The running service: listeners, signals, reload, drain.

`serve` builds one worker's resources (arproxy.resources), pipeline and security
objects inside its event loop,
opens the listeners (plain with STARTTLS, and optionally implicit TLS), reloads the
certificate and users file on SIGHUP, and on SIGTERM stops accepting and drains.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from arproxy import metrics, sdnotify
from arproxy.admission import SessionRegistry
from arproxy.config import Config, HostPort
from arproxy.pipeline import Pipeline
from arproxy.relay import CLOSE_TIMEOUT
from arproxy.resources import WorkerResources
from arproxy.server import SessionHandler, make_protocol_factory
from arproxy.smtpauth import Authenticator
from arproxy.streams import serve_tls
from arproxy.tls import ReloadableContext, TlsError, ensure_self_signed
from arproxy.users import UsersFile, UsersFileError

log = logging.getLogger("arproxy.service")

TLS_HANDSHAKE_TIMEOUT = 10.0


class StartupError(Exception):
    """A file named by the configuration cannot be used; the message says which."""


def load_security(
    config: Config, resources: WorkerResources
) -> tuple[Authenticator | None, ReloadableContext | None]:
    cert, key = config.tls.cert, config.tls.key
    fresh = (
        cert is not None
        and key is not None
        and config.tls.self_signed_if_missing
        and ensure_self_signed(cert, key, config.server.hostname)
    )
    if fresh:
        log.warning(
            "created a throwaway self-signed certificate %s for %s: replace it for production",
            cert,
            config.server.hostname,
        )
    try:
        tls = None
        if config.tls.cert is not None and config.tls.key is not None:
            tls = ReloadableContext(config.tls.cert, config.tls.key)
        users = UsersFile.load(config.auth.users_file) if config.auth.users_file else None
    except (TlsError, UsersFileError) as exc:
        raise StartupError(str(exc)) from exc
    authenticator = (
        Authenticator(users, resources.auth_limiter, resources.hash_pool) if users else None
    )
    return authenticator, tls


def reload_security(config: Config, handler: SessionHandler) -> None:
    """SIGHUP: new certificate and users file for new sessions; keep the old on error."""
    if handler.tls is not None:
        if handler.tls.reload():
            log.info("reload: TLS certificate %s loaded", config.tls.cert)
        else:
            log.error("reload: keeping the old TLS certificate: %s", handler.tls.last_error)
    if handler.authenticator is not None and config.auth.users_file is not None:
        try:
            handler.authenticator.users = UsersFile.load(config.auth.users_file)
            log.info("reload: users file %s loaded", config.auth.users_file)
        except UsersFileError as exc:
            log.error("reload: keeping the old users: %s", exc)


async def serve(
    config: Config, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None
) -> None:
    """Listen until `stop` is set (SIGTERM/SIGINT by default), then drain."""
    loop = asyncio.get_running_loop()
    resources = WorkerResources.build(config)
    try:
        authenticator, tls = load_security(config, resources)
    except StartupError:
        await resources.close()
        raise
    pipeline = Pipeline(config, resources=resources)
    pipeline.relay.prepare()
    try:
        endpoint = _start_metrics(config, pipeline)
    except StartupError:
        await resources.close()
        raise
    handler = SessionHandler(pipeline, authenticator, tls)
    registry = SessionRegistry()
    listeners = [await _listen(config, handler, registry, config.server.listen, implicit=False)]
    if config.tls.implicit_listen is not None:
        listeners.append(
            await _listen(config, handler, registry, config.tls.implicit_listen, implicit=True)
        )
    if stop is None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reload_security, config, handler)
    _log_start(config, authenticator, tls)
    sdnotify.notify(f"READY=1\nSTATUS=listening on {config.server.listen}\nMAINPID={os.getpid()}")
    if ready is not None:
        ready.set()
    await stop.wait()
    sdnotify.notify("STOPPING=1")
    log.info("shutting down: no new connections, draining %d open session(s)", len(registry.open))
    for listener in listeners:
        listener.close()
    await registry.drain(config.server.shutdown_grace)
    await registry.wait_closed(timeout=5.0)
    for listener in listeners:
        await listener.wait_closed()
    # RSET/QUIT to the downstream (each bounded by relay.CLOSE_TIMEOUT) for sessions
    # that ended in the drain; what is still running after that is cancelled.
    await pipeline.finish_background(timeout=3 * CLOSE_TIMEOUT)
    await resources.close()
    if endpoint is not None:
        endpoint.close()
    log.info("stopped")


def _start_metrics(config: Config, pipeline: Pipeline) -> metrics.Endpoint | None:
    """The Prometheus endpoint on `metrics.listen` (arproxy.metrics), if configured."""
    try:
        endpoint = metrics.start(config.metrics, pipeline)
    except OSError as exc:
        raise StartupError(
            f"cannot serve metrics on {config.metrics.listen}: {exc.strerror or exc}"
        ) from exc
    if endpoint is not None:
        log.info("metrics on http://%s/metrics", config.metrics.listen)
    return endpoint


async def _listen(
    config: Config,
    handler: SessionHandler,
    registry: SessionRegistry,
    address: HostPort,
    *,
    implicit: bool,
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    factory = make_protocol_factory(config, handler, registry, implicit_tls=implicit)
    if implicit:
        assert handler.tls is not None
        ssl_context = handler.tls.front_context()
        smtp_factory = factory

        def factory() -> asyncio.BaseProtocol:
            # TLS wrapped by hand rather than create_server(ssl=...): asyncio's own
            # TLS layer drops the replies owed when the client closes its side
            # (arproxy.streams). Connection limits apply once the handshake is done:
            # keep the time a silent client can hold a socket before that short.
            return serve_tls(loop, smtp_factory(), ssl_context, TLS_HANDSHAKE_TIMEOUT)

    return await loop.create_server(factory, host=address.host, port=address.port)


def _log_start(
    config: Config, authenticator: Authenticator | None, tls: ReloadableContext | None
) -> None:
    downstream = config.relay.downstream
    log.info(
        "arproxy listening on %s%s as %s, authserv-id %s, delivering to %s%s; STARTTLS %s, AUTH %s",
        config.server.listen,
        f" and {config.tls.implicit_listen} (implicit TLS)" if config.tls.implicit_listen else "",
        config.server.hostname,
        config.server.authserv_id,
        downstream,
        " (no downstream configured: embedded Maildir)" if downstream.scheme == "maildir" else "",
        "on" if tls else "off",
        "off"
        if authenticator is None
        else ("on (plaintext allowed)" if config.auth.allow_plaintext else "on (after STARTTLS)"),
    )
