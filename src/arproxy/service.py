"""The running service: listeners, signals, reload, drain.

`serve` builds one worker's resources (arproxy.resources), pipeline and security
objects inside its event loop,
opens the listeners (plain with STARTTLS, and optionally implicit TLS), reloads the
configuration file, certificate and users file on SIGHUP (`Reloader`), and on SIGTERM
stops accepting and drains.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from arproxy import metrics, sdnotify
from arproxy.admission import SessionRegistry
from arproxy.config import Config, ConfigError, HostPort, for_reload, load_config, parse_config
from arproxy.pipeline import Pipeline
from arproxy.resources import WorkerResources
from arproxy.server import SessionHandler, make_protocol_factory
from arproxy.shared import WorkerShare
from arproxy.signing import SigningKeyError, load_signing
from arproxy.smtpauth import Authenticator
from arproxy.streams import serve_tls
from arproxy.tls import ReloadableContext, TlsError, ensure_self_signed
from arproxy.users import UsersFile, UsersFileError

log = logging.getLogger("arproxy.service")

TLS_HANDSHAKE_TIMEOUT = 10.0
# Seconds after server.shutdown_grace for the clean-up of a stop: closing the
# sessions' sockets and the downstream transactions they leave (RSET/QUIT).
STOP_CLEANUP = 2.0
# Connections the kernel completes and queues on each listening socket before a worker
# accepts them (capped by net.core.somaxconn): room for a burst while every worker is busy.
LISTEN_BACKLOG = 128


class StartupError(Exception):
    """A file named by the configuration cannot be used; the message says which."""


def load_security(
    config: Config, resources: WorkerResources
) -> tuple[Authenticator | None, ReloadableContext | None]:
    """The authenticator and TLS context of one worker (StartupError when a file is bad)."""
    users, tls = load_files(config)
    authenticator = (
        Authenticator(users, resources.auth_limiter, resources.hash_pool) if users else None
    )
    return authenticator, tls


def load_files(config: Config) -> tuple[UsersFile | None, ReloadableContext | None]:
    """Read the users file and the TLS pair (making the throwaway self-signed pair first
    when configured). The supervisor calls this before forking, so that a bad file is
    one clear error, not N failing workers. Raises StartupError naming the file."""
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
    return users, tls


def check_files(config: Config) -> None:
    """Every file `config` names that a worker reads when it starts: the TLS pair, the
    users file (`load_files`) and the `[dkim_sign]` / `[arc]` signing keys
    (`signing.load_signing`). The supervisor runs it at start-up and on SIGHUP before
    any worker is forked or signalled, so a bad file is one error line, not one per
    worker, and never becomes the configuration of a worker started later. Raises
    StartupError (one line naming the file)."""
    load_files(config)
    try:
        load_signing(config)
    except SigningKeyError as exc:
        raise StartupError(str(exc)) from exc


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


def reload_log_level(config: Config) -> None:
    """`log.level` for every line from now on (aiosmtpd's own stay at errors, cli)."""
    logging.getLogger().setLevel(getattr(logging, config.log.level.upper()))
    logging.getLogger("mail.log").setLevel(max(logging.ERROR, logging.root.level))


def reconfigured(pipeline: Pipeline, config: Config) -> Pipeline:
    """A pipeline for new sessions under `config`, on the same worker resources; open
    sessions keep theirs. The relay is kept unless `[relay]` or the HELO name changed
    (new transactions then go to the new downstream). Observers (metrics) and the
    background clean-up set are shared, so the drain still waits for every session's."""
    same_relay = (
        config.relay == pipeline.config.relay
        and config.server.hostname == pipeline.config.server.hostname
    )
    fresh = Pipeline(config, pipeline.relay if same_relay else None, resources=pipeline.resources)
    if not same_relay:
        fresh.relay.prepare()
    fresh.observers = pipeline.observers
    fresh.session_observers = pipeline.session_observers
    fresh.auth_failure_observers = pipeline.auth_failure_observers
    fresh._background = pipeline._background  # one set: finish_background sees all
    return fresh


@dataclass
class Reloader:
    """SIGHUP: reread `path` (the --config file; None: the embedded default, which
    cannot change) and apply it to new sessions, then reload the TLS pair and users.

    An invalid file is one error line and nothing changes (the TLS pair and users
    are not reloaded either). Keys that cannot change without a restart
    (config.RESTART_KEYS) keep their old values, named in one warning line -- by the
    supervisor for its workers (`supervised`), which already checked the file and
    hands its text over (`checked_text`).
    """

    path: Path | None
    handler: SessionHandler
    supervised: bool = False
    # A worker's source of the text the supervisor checked (supervisor.ConfigText.read;
    # None until its first SIGHUP): never the file itself, which may have changed since.
    checked_text: Callable[[], str | None] | None = None

    def __call__(self) -> None:
        handler = self.handler
        if self.path is not None:
            try:
                new = self._load(self.path)
            except ConfigError as exc:
                log.error("reload: keeping the old configuration: %s", exc)
                return
            config, restart = for_reload(handler.config, new)
            if restart and not self.supervised:
                log.warning(
                    "reload: %s need(s) a restart; keeping the old value(s)", ", ".join(restart)
                )
            try:
                handler.pipeline = reconfigured(handler.pipeline, config)
            except SigningKeyError as exc:  # [arc] / [dkim_sign] keys are read here
                log.error("reload: keeping the old configuration: %s", exc)
                return
            handler.config = config
            reload_log_level(config)
            log.info("reload: configuration %s loaded for new sessions", self.path)
        reload_security(handler.config, handler)

    def _load(self, path: Path) -> Config:
        text = self.checked_text() if self.checked_text is not None else None
        return load_config(path) if text is None else parse_config(text, str(path))


@dataclass(frozen=True)
class Listeners:
    """Sockets bound and listening before the workers were forked (arproxy.supervisor):
    `main` for `server.listen`, `implicit` for `tls.implicit_listen` (one per address the
    host name gave)."""

    main: tuple[socket.socket, ...]
    implicit: tuple[socket.socket, ...] = ()


async def serve(
    config: Config,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    listeners: Listeners | None = None,
    share: WorkerShare | None = None,
    supervised: bool = False,
    config_path: Path | None = None,
    checked_text: Callable[[], str | None] | None = None,
) -> None:
    """Listen until `stop` is set (SIGTERM/SIGINT by default), then drain.

    `supervised`: a worker of arproxy.supervisor, which serves `metrics.listen` and
    talks to systemd itself: this process only counts its metrics into the
    multiprocess directory and never notifies. `config_path`: the file SIGHUP
    rereads (`Reloader`; None: only the TLS pair and users file are reloaded);
    `checked_text`: a supervised worker's source of the text the supervisor checked,
    applied on SIGHUP instead of the file (`Reloader.checked_text`).

    One worker: on `listeners` when given (inherited from the supervisor), else on
    sockets of its own; with `share`, the per-client session counts and the AUTH
    failures are the ones every worker of the instance sees (arproxy.shared).
    Raises StartupError (a named file is unusable) and OSError (cannot listen).
    """
    loop = asyncio.get_running_loop()
    resources = WorkerResources.build(
        config, auth_limiter=share.auth_limiter() if share is not None else None
    )
    try:
        authenticator, tls = load_security(config, resources)
    except StartupError:
        await resources.close()
        raise
    try:
        pipeline = Pipeline(config, resources=resources)  # reads the signing keys
    except SigningKeyError as exc:  # a key gone since it was checked: one line, no trace
        await resources.close()
        raise StartupError(str(exc)) from exc
    pipeline.relay.prepare()
    try:
        endpoint = _start_metrics(config, pipeline, supervised)
    except StartupError:
        await resources.close()
        raise
    handler = SessionHandler(pipeline, authenticator, tls)
    remote = resources.state.session_counts() if resources.state is not None else None
    registry = SessionRegistry(share, remote)
    servers = await _listen(config, handler, registry, config.server.listen, False, listeners)
    if config.tls.implicit_listen is not None:
        servers += await _listen(
            config, handler, registry, config.tls.implicit_listen, True, listeners
        )
    if stop is None:
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        reloader = Reloader(config_path, handler, supervised, checked_text)
        loop.add_signal_handler(signal.SIGHUP, reloader)
    _log_start(config, authenticator, tls)
    if not supervised:
        sdnotify.notify(
            f"READY=1\nSTATUS=listening on {config.server.listen}\nMAINPID={os.getpid()}"
        )
    if ready is not None:
        ready.set()
    await stop.wait()
    if not supervised:
        sdnotify.notify("STOPPING=1")
    log.info("shutting down: no new connections, draining %d open session(s)", len(registry.open))
    for server in servers:
        server.close()
    # The whole stop fits in shutdown_grace plus STOP_CLEANUP: the clean-up after
    # the drain (RSET/QUIT to a downstream that may never answer) gets what is left.
    end = loop.time() + config.server.shutdown_grace + STOP_CLEANUP
    await registry.drain(config.server.shutdown_grace)
    await registry.wait_closed(timeout=max(0.0, end - loop.time()))
    for server in servers:
        await server.wait_closed()
    # RSET/QUIT to the downstream for sessions that ended in the drain (each bounded
    # by relay.CLOSE_TIMEOUT, and all by `end`); what still runs is cancelled.
    await pipeline.finish_background(timeout=max(0.0, end - loop.time()))
    await resources.close()
    if endpoint is not None:
        endpoint.close()
    log.info("stopped")


def _start_metrics(config: Config, pipeline: Pipeline, supervised: bool) -> metrics.Endpoint | None:
    """The Prometheus endpoint on `metrics.listen` (arproxy.metrics), if configured;
    a supervised worker only counts (its supervisor serves the sum)."""
    if supervised:
        metrics.attach_worker(config.metrics, pipeline)
        return None
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
    implicit: bool,
    inherited: Listeners | None,
) -> list[asyncio.Server]:
    loop = asyncio.get_running_loop()
    factory = make_protocol_factory(handler, registry, implicit_tls=implicit, loop=loop)
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

    if inherited is None:
        return [
            await loop.create_server(
                factory, host=address.host, port=address.port, backlog=LISTEN_BACKLOG
            )
        ]
    sockets = inherited.implicit if implicit else inherited.main
    # create_server calls listen() again on an inherited socket, with its own default
    # (100) unless told: the backlog is set here for both paths.
    return [
        await loop.create_server(factory, sock=sock, backlog=LISTEN_BACKLOG) for sock in sockets
    ]


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
