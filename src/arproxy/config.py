"""Configuration: a TOML file, validated completely before anything starts.

Every mistake is reported as one `ConfigError` naming the file, the key and what is
wrong, so an administrator never has to read a traceback to fix a typo. Unknown
keys are errors too: a misspelt option silently ignored is a security hole waiting
to happen (think `trusted_authserv_id` without the "s").
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from arproxy.names import idna2003_host_name, is_host_name

EMBEDDED_DEFAULT = "<embedded default>"


class ConfigError(Exception):
    """A configuration file that cannot be used; `str()` is the whole message."""

    def __init__(self, source: str, key: str | None, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + problem)


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Downstream:
    """Where accepted mail goes: an SMTP or LMTP server, or a local Maildir."""

    scheme: Literal["smtp", "lmtp", "maildir"]
    address: HostPort | None = None
    maildir: Path | None = None

    def __str__(self) -> str:
        if self.scheme == "maildir":
            return f"maildir:{self.maildir}"
        return f"{self.scheme}://{self.address}"


@dataclass(frozen=True)
class ServerConfig:
    listen: HostPort
    hostname: str
    authserv_id: str
    advertise_authserv: Literal["always", "never", "after-auth"]
    authserv_form: Literal["space", "equals"]
    shutdown_grace: float
    proxy_protocol: bool
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    workers: int = 1  # worker processes; 1: no supervisor, serve in this process


@dataclass(frozen=True)
class RelayConfig:
    downstream: Downstream
    connect_timeout: float
    timeout: float
    pool_size: int = 100  # idle SMTP connections kept open per worker (0: one per message)
    pool_idle: float = 5.0  # seconds an idle pooled connection is kept


@dataclass(frozen=True)
class DomainsConfig:
    local: tuple[str, ...]


@dataclass(frozen=True)
class DnsConfig:
    nameservers: tuple[HostPort, ...]
    timeout: float
    message_budget: float


@dataclass(frozen=True)
class ChecksConfig:
    iprev_max_names: int
    dkim_max_signatures: int
    spf_threads: int  # pyspf evaluations at once per worker (they mostly wait on DNS)
    dkim_threads: int  # DKIM hashing and RSA at once per worker (CPU)
    skip_clients: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    arc: bool = True  # ARC verification (RFC 8617): one arc= result per message


@dataclass(frozen=True)
class PolicyConfig:
    """Local policy on results; every switch is off by default (annotate only)."""

    reject_dmarc: bool
    reject_spf_fail: bool
    reject_iprev_fail: bool
    tempfail_on_temperror: bool
    # ARC sealers (the d= of the ARC-Seal, lower-case A-labels) whose chain lets a DMARC
    # failure through when their hop recorded an authenticated author (arproxy.policy).
    trusted_arc_sealers: tuple[str, ...] = ()


@dataclass(frozen=True)
class HeadersConfig:
    trusted_authserv_ids: tuple[str, ...]
    forged: Literal["remove", "rename"]


@dataclass(frozen=True)
class LimitsConfig:
    max_message_size: int
    max_recipients: int
    command_timeout: float
    max_connections: int
    max_connections_per_ip: int
    max_header_size: int
    max_header_fields: int
    max_line_length: int
    bare_newline: Literal["reject", "normalize"]
    eight_bit_header: Literal["reject", "accept"]
    data_timeout: float


@dataclass(frozen=True)
class TlsConfig:
    cert: Path | None
    key: Path | None
    implicit_listen: HostPort | None  # a second listener speaking TLS from the first byte
    self_signed_if_missing: bool  # demo and test set-ups: make a throwaway pair at start

    @property
    def enabled(self) -> bool:
        return self.cert is not None


@dataclass(frozen=True)
class AuthConfig:
    users_file: Path | None  # None: SMTP AUTH is not offered
    allow_plaintext: bool
    max_failures: int
    hash_threads: int  # argon2 checks at once per worker (64 MiB each)


@dataclass(frozen=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"]
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True)
class MetricsConfig:
    """`listen`: where the Prometheus endpoint is served (None: no endpoint);
    `multiprocess_dir`: prometheus-client's multiprocess directory (None: one process)."""

    listen: HostPort | None = None
    multiprocess_dir: Path | None = None


@dataclass(frozen=True)
class StateConfig:
    """`[state]`: where the state shared across instances lives (arproxy.redisstate).

    `redis_url` None: in-process (one worker) or shared memory (the workers of one
    instance); else the AUTH failure limiter and per-client session counts are kept in
    that Redis database for every instance pointing at it. `timeout`: seconds for one
    Redis round trip (connect included) before the backend counts as down;
    `session_ttl`: seconds a session's count lives without its worker's heartbeat
    (a crashed instance's sessions stop counting after this)."""

    redis_url: str | None = None
    key_prefix: str = "arproxy:"
    timeout: float = 0.5
    session_ttl: float = 60.0


@dataclass(frozen=True)
class ArcConfig:
    """`[arc]`: ARC sealing (RFC 8617) of every relayed message when `seal`; `key` is a
    PEM private key (RSA or Ed25519) published at `selector`._domainkey.`domain`."""

    seal: bool = False
    domain: str = ""
    selector: str = ""
    key: Path | None = None


# RFC 6376 section 5.4.1: the fields a signer should sign (From is also over-signed).
DKIM_SIGN_HEADERS = (
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Resent-Date",
    "Resent-From",
    "Resent-To",
    "Resent-Cc",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Message-ID",
    "Sender",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
)
_CANONICALIZATIONS = ("relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple")


@dataclass(frozen=True)
class DkimSignConfig:
    """`[dkim_sign]`: DKIM signing (RFC 6376) of authenticated sessions' mail whose From
    domain is in `domains` (empty: no signing), with `key` at `selector`."""

    domains: tuple[str, ...] = ()
    selector: str = ""
    key: Path | None = None
    headers: tuple[str, ...] = DKIM_SIGN_HEADERS
    canonicalization: str = "relaxed/relaxed"


@dataclass(frozen=True)
class Config:
    source: str
    server: ServerConfig
    relay: RelayConfig
    domains: DomainsConfig
    dns: DnsConfig
    checks: ChecksConfig
    policy: PolicyConfig
    headers: HeadersConfig
    limits: LimitsConfig
    tls: TlsConfig
    auth: AuthConfig
    log: LogConfig
    metrics: MetricsConfig = MetricsConfig()
    state: StateConfig = StateConfig()
    arc: ArcConfig = ArcConfig()
    dkim_sign: DkimSignConfig = DkimSignConfig()


# --- reloading (SIGHUP) ------------------------------------------------------

# What a SIGHUP cannot change: each is bound at start (sockets, processes, pools, the
# resolver, shared tables sized by it, the metrics endpoint, the Redis client, the log
# handler) or decides what exists at all (a users file, a TLS pair). A section name
# stands for all of its keys. README, "Reload and stop", lists them.
RESTART_KEYS = (
    "server.listen",
    "server.workers",
    "server.proxy_protocol",
    "tls.implicit_listen",
    "tls.cert",
    "tls.key",
    "tls.self_signed_if_missing",
    "auth.users_file",
    "auth.max_failures",
    "auth.hash_threads",
    "checks.spf_threads",
    "checks.dkim_threads",
    "limits.max_connections",
    "log.format",
    "dns",
    "metrics",
    "state",
)


def for_reload(old: Config, new: Config) -> tuple[Config, list[str]]:
    """What a reload applies: `new` with the old value of every RESTART_KEYS entry
    that differs, and the list of those entries (the keys that need a restart)."""
    effective = new
    changed: list[str] = []
    for key in RESTART_KEYS:
        section, _, name = key.partition(".")
        before, after = getattr(old, section), getattr(effective, section)
        if name:
            if getattr(before, name) == getattr(after, name):
                continue
            kept = replace(after, **{name: getattr(before, name)})
        elif before == after:
            continue
        else:
            kept = before
        changed.append(key)
        effective = replace(effective, **{section: kept})
    return effective, changed


# --- loading -----------------------------------------------------------------


def load_config(path: str | Path | None) -> Config:
    """Read and validate `path`, or the embedded default when `path` is None."""
    if path is None:
        text = resources.files("arproxy").joinpath("default.toml").read_text("utf-8")
        return parse_config(text, EMBEDDED_DEFAULT)
    return parse_config(read_config_text(path), str(path))


def read_config_text(path: str | Path) -> str:
    """The text of the configuration file `path`; ConfigError (one line) when it cannot
    be read or is not UTF-8."""
    source = str(path)
    try:
        return Path(path).read_text("utf-8")
    except OSError as exc:
        raise ConfigError(source, None, f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(source, None, f"not UTF-8 text: {exc.reason}") from exc


def parse_config(text: str, source: str) -> Config:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, None, f"not valid TOML: {exc}") from exc
    root = _Table(source, "", document)
    sections = {name: root.table(name) for name in _SECTIONS}
    root.finish()
    server = _server(sections["server"])
    config = Config(
        source=source,
        server=server,
        relay=_relay(sections["relay"]),
        domains=DomainsConfig(local=sections["domains"].domain_list("local", ())),
        dns=_dns(sections["dns"]),
        checks=_checks(sections["checks"]),
        policy=_policy(sections["policy"]),
        headers=_headers(sections["headers"]),
        limits=_limits(sections["limits"]),
        tls=_tls(sections["tls"]),
        auth=_auth(sections["auth"]),
        log=LogConfig(
            level=sections["log"].choice("level", "info", _LOG_LEVELS),
            format=sections["log"].choice("format", "text", ("text", "json")),
        ),
        metrics=_metrics(sections["metrics"]),
        state=_state(sections["state"]),
        arc=_arc(sections["arc"]),
        dkim_sign=_dkim_sign(sections["dkim_sign"]),
    )
    for table in sections.values():
        table.finish()
    if config.limits.data_timeout <= config.relay.timeout + config.dns.message_budget:
        # The client must still be there to hear the downstream's answer.
        raise ConfigError(
            source,
            "[limits] data_timeout",
            f"{config.limits.data_timeout} must exceed relay.timeout + dns.message_budget "
            f"({config.relay.timeout + config.dns.message_budget})",
        )
    return config


_SECTIONS = (
    "server",
    "relay",
    "domains",
    "dns",
    "checks",
    "policy",
    "headers",
    "limits",
    "tls",
    "auth",
    "log",
    "metrics",
    "state",
    "arc",
    "dkim_sign",
)
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _server(t: _Table) -> ServerConfig:
    hostname = t.domain("hostname", None) or socket.getfqdn()
    authserv_id = t.domain("authserv_id", hostname)
    proxy_protocol = t.boolean("proxy_protocol", False)
    trusted_proxies = t.networks("trusted_proxies")
    if proxy_protocol and not trusted_proxies:
        raise t.error("trusted_proxies", "proxy_protocol = true needs the proxies' CIDRs here")
    return ServerConfig(
        listen=t.host_port("listen", "127.0.0.1:2525"),
        hostname=hostname,
        authserv_id=authserv_id,
        advertise_authserv=t.choice(
            "advertise_authserv", "always", ("always", "never", "after-auth")
        ),
        authserv_form=t.choice("authserv_form", "space", ("space", "equals")),
        shutdown_grace=t.number("shutdown_grace", 30.0, minimum=0.0),
        proxy_protocol=proxy_protocol,
        trusted_proxies=trusted_proxies,
        workers=_workers(t),
    )


MAX_WORKERS = 256


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask, which a container or
    `taskset` narrows; os.cpu_count would count the whole machine)."""
    return max(1, len(os.sched_getaffinity(0)))


def _workers(t: _Table) -> int:
    """`server.workers`: an integer from 1 to MAX_WORKERS, or "auto" (the default):
    one per usable core."""
    if t.data.get("workers") == "auto":
        t.used.add("workers")
        return min(usable_cores(), MAX_WORKERS)
    value = t.data.get("workers")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise t.error("workers", f'must be an integer or "auto", not {value!r}')
    return t.integer("workers", min(usable_cores(), MAX_WORKERS), minimum=1, maximum=MAX_WORKERS)


def _relay(t: _Table) -> RelayConfig:
    return RelayConfig(
        downstream=t.downstream("downstream", "maildir:var/maildir"),
        connect_timeout=t.number("connect_timeout", 30.0, minimum=0.1),
        timeout=t.number("timeout", 300.0, minimum=0.1),
        pool_size=t.integer("pool_size", 100, minimum=0, maximum=10000),
        pool_idle=t.number("pool_idle", 5.0, minimum=0.1),
    )


def _dns(t: _Table) -> DnsConfig:
    servers = tuple(_parse_nameserver(t, entry) for entry in t.str_list("nameservers", ()))
    return DnsConfig(
        nameservers=servers,
        timeout=t.number("timeout", 2.0, minimum=0.05),
        message_budget=t.number("message_budget", 15.0, minimum=0.1),
    )


def _checks(t: _Table) -> ChecksConfig:
    return ChecksConfig(
        iprev_max_names=t.integer("iprev_max_names", 10, minimum=1),
        dkim_max_signatures=t.integer("dkim_max_signatures", 5, minimum=1),
        spf_threads=t.integer("spf_threads", 32, minimum=1, maximum=1024),
        dkim_threads=t.integer("dkim_threads", 4, minimum=1, maximum=256),
        skip_clients=t.networks("skip_clients"),
        arc=t.boolean("arc", True),
    )


def _policy(t: _Table) -> PolicyConfig:
    return PolicyConfig(
        reject_dmarc=t.boolean("reject_dmarc", False),
        reject_spf_fail=t.boolean("reject_spf_fail", False),
        reject_iprev_fail=t.boolean("reject_iprev_fail", False),
        tempfail_on_temperror=t.boolean("tempfail_on_temperror", False),
        trusted_arc_sealers=_a_labels(t, "trusted_arc_sealers"),
    )


def _a_labels(t: _Table, key: str) -> tuple[str, ...]:
    """A list of domains as lower-case A-labels (U-labels converted), for exact matching."""
    converted = []
    for name in t.str_list(key, ()):
        a_label = idna2003_host_name(name.rstrip("."), min_labels=2)
        if a_label is None:
            raise t.error(key, f"{name!r} is not a domain name")
        converted.append(a_label)
    return tuple(converted)


def _headers(t: _Table) -> HeadersConfig:
    return HeadersConfig(
        trusted_authserv_ids=t.domain_list("trusted_authserv_ids", (), allow_leading_dot=True),
        forged=t.choice("forged", "remove", ("remove", "rename")),
    )


def _limits(t: _Table) -> LimitsConfig:
    return LimitsConfig(
        max_message_size=t.integer("max_message_size", 10_240_000, minimum=1024),
        max_recipients=t.integer("max_recipients", 1000, minimum=1),
        command_timeout=t.number("command_timeout", 300.0, minimum=1.0),
        max_connections=t.integer("max_connections", 1000, minimum=1),
        # Headroom over what one sending MTA opens: Postfix's
        # default_destination_concurrency_limit is 20; Postfix as an MX allows 50
        # (smtpd_client_connection_count_limit).
        max_connections_per_ip=t.integer("max_connections_per_ip", 50, minimum=1),
        max_header_size=t.integer("max_header_size", 102_400, minimum=1024),
        max_header_fields=t.integer("max_header_fields", 1000, minimum=10),
        # RFC 5321 section 4.5.3.1.6 / RFC 5322 section 2.1.1: 998 octets of text.
        max_line_length=t.integer("max_line_length", 998, minimum=998, maximum=100_000),
        bare_newline=t.choice("bare_newline", "reject", ("reject", "normalize")),
        eight_bit_header=t.choice("eight_bit_header", "accept", ("accept", "reject")),
        data_timeout=t.number("data_timeout", 600.0, minimum=1.0),
    )


def _metrics(t: _Table) -> MetricsConfig:
    listen = t.string("listen", None)
    directory = t.path("multiprocess_dir")
    if directory is not None and listen is None:
        raise t.error("multiprocess_dir", "needs listen: the endpoint that reads it")
    return MetricsConfig(
        listen=t.host_port("listen", "") if listen else None, multiprocess_dir=directory
    )


REDIS_SCHEMES = ("redis", "rediss", "unix")


def _state(t: _Table) -> StateConfig:
    url = t.string("redis_url", None) or None
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in REDIS_SCHEMES or not (parts.netloc or parts.path):
            raise t.error("redis_url", f"{url!r}: use redis://host:port/db, rediss:// or unix://")
    prefix = t.string("key_prefix", "arproxy:")
    if not prefix or any(ord(c) < 33 or ord(c) > 126 for c in prefix):
        raise t.error("key_prefix", f"{prefix!r} must be printable ASCII without spaces")
    timeout = t.number("timeout", 0.5, minimum=0.01)
    ttl = t.number("session_ttl", 60.0, minimum=3.0)
    return StateConfig(redis_url=url, key_prefix=prefix, timeout=timeout, session_ttl=ttl)


def _selector(t: _Table) -> str:
    """A selector: one or more DNS labels (RFC 6376 section 3.1), under _domainkey."""
    value = t.string("selector", "")
    if not _is_domain(value) or value.endswith("."):
        raise t.error("selector", f"{value!r} is not a selector (DNS labels, e.g. s2026)")
    return value.lower()


def _arc(t: _Table) -> ArcConfig:
    if not t.boolean("seal", False):
        for key in ("domain", "selector", "key"):
            t.string(key, None)  # allowed while sealing is off
        return ArcConfig()
    for key in ("domain", "selector", "key"):
        if t.string(key, None) is None:
            raise t.error(key, "required when seal = true")
    return ArcConfig(
        seal=True,
        domain=t.domain("domain", "").lower().rstrip("."),
        selector=_selector(t),
        key=t.path("key"),
    )


def _dkim_sign(t: _Table) -> DkimSignConfig:
    domains = t.domain_list("domains", ())
    headers = t.str_list("headers", DKIM_SIGN_HEADERS)
    canonicalization = t.choice("canonicalization", "relaxed/relaxed", _CANONICALIZATIONS)
    if not domains:
        for key in ("selector", "key"):
            t.string(key, None)
        return DkimSignConfig(headers=headers, canonicalization=canonicalization)
    for key in ("selector", "key"):
        if t.string(key, None) is None:
            raise t.error(key, "required when domains is set")
    for name in headers:
        if not re.fullmatch(r"[\x21-\x39\x3b-\x7e]+", name):
            raise t.error("headers", f"{name!r} is not a field name")
    if "from" not in {name.lower() for name in headers}:
        raise t.error("headers", "must include From (RFC 6376 section 5.4)")
    return DkimSignConfig(
        domains=domains,
        selector=_selector(t),
        key=t.path("key"),
        headers=headers,
        canonicalization=canonicalization,
    )


def _tls(t: _Table) -> TlsConfig:
    cert, key = t.path("cert"), t.path("key")
    if (cert is None) != (key is None):
        raise t.error("key" if key is None else "cert", "cert and key go together: set both")
    implicit = t.string("implicit_listen", None)
    if implicit is not None and cert is None:
        raise t.error("implicit_listen", "implicit TLS needs cert and key")
    return TlsConfig(
        cert=cert,
        key=key,
        implicit_listen=t.host_port("implicit_listen", "") if implicit else None,
        self_signed_if_missing=t.boolean("self_signed_if_missing", False),
    )


def _auth(t: _Table) -> AuthConfig:
    return AuthConfig(
        users_file=t.path("users_file"),
        allow_plaintext=t.boolean("allow_plaintext", False),
        max_failures=t.integer("max_failures", 5, minimum=1),
        hash_threads=t.integer("hash_threads", 4, minimum=1, maximum=256),
    )


def _parse_nameserver(t: _Table, entry: str) -> HostPort:
    """ "IP" or "IP:PORT" ("[v6]:PORT" for IPv6 with a port)."""
    text = entry if _looks_like_bare_ipv6(entry) else None
    if text is not None:
        return HostPort(str(ipaddress.ip_address(text)), 53)
    try:
        hp = split_host_port(entry, default_port=53)
        ipaddress.ip_address(hp.host)
    except ValueError as exc:
        raise t.error("nameservers", f'{entry!r} is not "IP" or "IP:PORT" ({exc})') from exc
    return hp


def _looks_like_bare_ipv6(text: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def split_host_port(text: str, default_port: int | None = None) -> HostPort:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", text)
    if not match:
        raise ValueError("expected host:port or [ipv6]:port")
    host = match.group(1) or match.group(3)
    port_text = match.group(2) or match.group(4)
    if port_text is None:
        if default_port is None:
            raise ValueError("a port is required")
        return HostPort(host, default_port)
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1-65535")
    return HostPort(host, port)


def _is_domain(text: str) -> bool:
    """A DNS name as RFC 1123 allows it (arproxy.names), a trailing dot allowed."""
    return is_host_name(text.removesuffix("."))


T = TypeVar("T")


class _Table:
    """One TOML table being read: typed getters that remember what was used."""

    def __init__(self, source: str, name: str, data: Mapping[str, Any]) -> None:
        self.source = source
        self.name = name
        self.data = dict(data)
        self.used: set[str] = set()

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.source, f"[{self.name}] {key}" if self.name else key, problem)

    def _get(self, key: str, kind: type | tuple[type, ...], kind_name: str) -> Any:
        self.used.add(key)
        if key not in self.data:
            return None
        value = self.data[key]
        # TOML booleans are Python ints: `timeout = true` must not read as 1.
        is_stray_bool = isinstance(value, bool) and bool not in _as_tuple(kind)
        if is_stray_bool or not isinstance(value, kind):
            raise self.error(key, f"must be {kind_name}, not {type(value).__name__} {value!r}")
        return value

    def table(self, key: str) -> _Table:
        value = self._get(key, dict, "a table")
        return _Table(self.source, key, value or {})

    def string(self, key: str, default: T) -> str | T:
        value = self._get(key, str, "a string")
        return default if value is None else value

    def choice(self, key: str, default: T, choices: tuple[str, ...]) -> T:
        value = self._get(key, str, "a string")
        if value is None:
            return default
        if value not in choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(map(repr, choices))}")
        return value  # type: ignore[no-any-return]  # checked against choices above

    def number(self, key: str, default: float, *, minimum: float) -> float:
        value = self._get(key, (int, float), "a number")
        if value is None:
            return default
        if not math.isfinite(value):
            raise self.error(key, f"must be a finite number, not {value}")
        if value < minimum:
            raise self.error(key, f"{value} is below the minimum {minimum}")
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
        value = self._get(key, int, "an integer")
        if value is None:
            return default
        if value < minimum:
            raise self.error(key, f"{value} is below the minimum {minimum}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"{value} is above the maximum {maximum}")
        return int(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._get(key, bool, "true or false")
        return default if value is None else bool(value)

    def networks(self, key: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        networks = []
        for text in self.str_list(key, ()):
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError as exc:
                raise self.error(key, f"{text!r} is not an address or CIDR network") from exc
        return tuple(networks)

    def str_list(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, list, "a list of strings")
        if value is None:
            return default
        for item in value:
            if not isinstance(item, str):
                raise self.error(key, f"must be a list of strings; {item!r} is not a string")
        return tuple(value)

    def domain(self, key: str, default: T) -> str | T:
        value = self.string(key, None)
        if value is None:
            return default
        if not _is_domain(value):
            raise self.error(key, f"{value!r} is not a domain name")
        return value

    def domain_list(
        self, key: str, default: tuple[str, ...], *, allow_leading_dot: bool = False
    ) -> tuple[str, ...]:
        names = self.str_list(key, default)
        for name in names:
            bare = name[1:] if allow_leading_dot and name.startswith(".") else name
            if not _is_domain(bare):
                raise self.error(key, f"{name!r} is not a domain name")
        return tuple(name.lower().rstrip(".") for name in names)

    def host_port(self, key: str, default: str) -> HostPort:
        text = self.string(key, default)
        try:
            return split_host_port(text)
        except ValueError as exc:
            raise self.error(key, f"{text!r}: {exc}") from exc

    def downstream(self, key: str, default: str) -> Downstream:
        text = self.string(key, default)
        if text.startswith("maildir:"):
            path = text.removeprefix("maildir:")
            if not path:
                raise self.error(key, "maildir: needs a path, e.g. maildir:var/maildir")
            # Relative paths are taken from the working directory at start-up and
            # logged in absolute form, so the administrator sees where mail goes.
            return Downstream("maildir", maildir=Path(path).expanduser().absolute())
        parts = urlsplit(text)
        if parts.scheme not in ("smtp", "lmtp"):
            raise self.error(
                key, f"{text!r}: use smtp://host:port, lmtp://host:port or maildir:PATH"
            )
        if parts.path or parts.query or parts.fragment or parts.username:
            raise self.error(key, f"{text!r}: only scheme://host:port is allowed")
        try:
            address = split_host_port(parts.netloc)
        except ValueError as exc:
            raise self.error(key, f"{text!r}: {exc}") from exc
        return Downstream(parts.scheme, address=address)  # type: ignore[arg-type]

    def path(self, key: str) -> Path | None:
        """A file path; relative ones are taken from the working directory."""
        text = self.string(key, None)
        if not text:
            return None
        return Path(text).expanduser().absolute()

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown option (see the README for the options)")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)
