"""Prometheus metrics: one `Metrics` per worker, fed by the pipeline's observers.

`Metrics.attach(pipeline)` subscribes to the typed outcomes (`Pipeline.observers`),
session opens and refused AUTHs; the DNS counters are read from the worker's resolver
at each event. Nothing here talks to the network except `serve_endpoint`.

Families (all prefixed `arproxy_`):

=================================  =========  =======================================
name                               type       labels
=================================  =========  =======================================
sessions_total                     counter    --
transactions_total                 counter    outcome (accepted/tempfail/rejected),
                                              stage (intake/policy/downstream/local)
recipients_total                   counter    outcome, stage
results_total                      counter    method, value (RFC 8601 result)
check_duration_seconds             histogram  method
relay_duration_seconds             histogram  -- (the downstream's DATA answer)
dns_queries_total                  counter    -- (sent to the resolver)
dns_lookups_total                  counter    -- (asked of our cache)
dns_cache_hits_total               counter    -- (hit ratio = hits / lookups)
downstream_errors_total            counter    kind (unavailable/timeout/protocol/
                                              refused_temporary/refused_permanent)
forged_fields_removed_total        counter    -- (Authentication-Results removed)
auth_failures_total                counter    --
policy_rejections_total            counter    code (RFC 7372 / RFC 3463 enhanced code)
=================================  =========  =======================================

Several processes (`metrics.multiprocess_dir`, or PROMETHEUS_MULTIPROC_DIR): each
process writes its values to files in that directory (prometheus-client's
multiprocess mode) and ONE process -- the supervisor when there are workers, else the
only process -- serves `metrics.listen`, summing the files (`MultiProcessCollector`).
The directory must be emptied before the processes start (`clear_multiprocess_dir`),
and a worker that exits is marked dead by its parent (`worker_exited`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from arproxy.config import HostPort, MetricsConfig
from arproxy.outcome import (
    ClientFacts,
    Decider,
    Outcome,
    RecipientOutcome,
    TransactionOutcome,
)
from arproxy.replies import DOWNSTREAM_TIMEOUT, DOWNSTREAM_UNAVAILABLE, Reply

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from arproxy.dns import Resolver
    from arproxy.pipeline import Pipeline

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Check and relay latencies: DNS-bound, from a cache hit (ms) to dns.message_budget.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def use_multiprocess_dir(directory: Path | None) -> Path | None:
    """Put prometheus-client in multiprocess mode for `directory` (or the one already
    in PROMETHEUS_MULTIPROC_DIR); None: single-process mode. Call before any metric
    is made: the mode is chosen when a metric is created."""
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.environ[MULTIPROC_ENV] = str(directory)
    text = os.environ.get(MULTIPROC_ENV)
    from prometheus_client import values  # noqa: PLC0415  # the mode is read from the env

    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return Path(text) if text else None


def clear_multiprocess_dir(directory: Path) -> None:
    """Remove the values files of earlier runs: once, before any process starts."""
    for path in directory.glob("*.db"):
        path.unlink(missing_ok=True)


def worker_exited(pid: int) -> None:
    """The supervisor's call when worker `pid` is gone (its live gauges are dropped)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess  # noqa: PLC0415

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def transaction_label(reply: Reply) -> str:
    """`accepted` (2xx), `tempfail` (4xx) or `rejected` (5xx), RFC 5321 section 4.2.1."""
    if reply.is_success:
        return "accepted"
    return "tempfail" if reply.is_transient else "rejected"


# Every label value these two families can take is made at start, at 0, so each family
# is in the first scrape (and in multiprocess mode, where a family with no sample is
# not written at all) and rate() has a start point.
DOWNSTREAM_ERROR_KINDS = (
    "unavailable",
    "timeout",
    "protocol",
    "refused_temporary",
    "refused_permanent",
)
# The [policy] replies (arproxy.policy): RFC 7372 5.7.23/5.7.25, 5.7.1 for DMARC, and the
# 4.7.x of tempfail_on_temperror.
POLICY_CODES = ("5.7.1", "5.7.23", "5.7.25", "4.7.1", "4.7.20", "4.7.24", "4.7.25", "4.7.0")


def downstream_error_kind(reply: Reply) -> str | None:
    """What went wrong with the downstream for a non-2xx reply it decided, else None."""
    if reply.is_success:
        return None
    if reply == DOWNSTREAM_UNAVAILABLE:
        return "unavailable"
    if reply == DOWNSTREAM_TIMEOUT:
        return "timeout"
    if reply.code < 400:
        return "protocol"  # an unexpected code, answered as our local error
    return "refused_temporary" if reply.is_transient else "refused_permanent"


class Metrics:
    """The metric families of one process (see the module docstring's table)."""

    def __init__(self) -> None:
        from prometheus_client import (  # noqa: PLC0415  # after use_multiprocess_dir
            CollectorRegistry,
            Counter,
            Histogram,
        )

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sessions = Counter("arproxy_sessions", "SMTP sessions opened", registry=r)
        self.transactions = Counter(
            "arproxy_transactions",
            "Mail transactions by outcome and deciding stage",
            ["outcome", "stage"],
            registry=r,
        )
        self.recipients = Counter(
            "arproxy_recipients",
            "RCPT commands by outcome and deciding stage",
            ["outcome", "stage"],
            registry=r,
        )
        self.results = Counter(
            "arproxy_results",
            "Authentication results written, by method and value",
            ["method", "value"],
            registry=r,
        )
        self.check_seconds = Histogram(
            "arproxy_check_duration_seconds",
            "Time from a check's start to its result",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.relay_seconds = Histogram(
            "arproxy_relay_duration_seconds",
            "Time the downstream took to answer the message (DATA)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dns_queries = Counter("arproxy_dns_queries", "DNS queries sent", registry=r)
        self.dns_lookups = Counter("arproxy_dns_lookups", "DNS lookups by the checks", registry=r)
        self.dns_cache_hits = Counter(
            "arproxy_dns_cache_hits", "DNS lookups answered from the cache", registry=r
        )
        self.downstream_errors = Counter(
            "arproxy_downstream_errors", "Downstream failures and refusals", ["kind"], registry=r
        )
        self.forged = Counter(
            "arproxy_forged_fields_removed",
            "Forged Authentication-Results fields removed or renamed",
            registry=r,
        )
        self.auth_failures = Counter("arproxy_auth_failures", "Refused SMTP AUTH", registry=r)
        self.policy_rejections = Counter(
            "arproxy_policy_rejections",
            "Messages refused by [policy], by enhanced status code (RFC 7372)",
            ["code"],
            registry=r,
        )
        for kind in DOWNSTREAM_ERROR_KINDS:
            self.downstream_errors.labels(kind=kind)
        for code in POLICY_CODES:
            self.policy_rejections.labels(code=code)
        self._resolver: Resolver | None = None
        self._dns_seen = (0, 0, 0)

    def attach(self, pipeline: Pipeline) -> None:
        """Subscribe to `pipeline`'s events and read its resolver's counters."""
        self._resolver = pipeline.resolver
        pipeline.observers.append(self.observe)
        pipeline.session_observers.append(self.session_opened)
        pipeline.auth_failure_observers.append(self.auth_failed)

    def session_opened(self, facts: ClientFacts) -> None:
        self.sessions.inc()
        self.sync_dns()

    def auth_failed(self, facts: ClientFacts) -> None:
        self.auth_failures.inc()

    def observe(self, outcome: Outcome) -> None:
        """Count one RCPT or DATA outcome."""
        stage = str(outcome.decided_by)
        label = transaction_label(outcome.reply)
        if outcome.decided_by is Decider.DOWNSTREAM:
            kind = downstream_error_kind(outcome.reply)
            if kind is not None:
                self.downstream_errors.labels(kind).inc()
        if isinstance(outcome, RecipientOutcome):
            self.recipients.labels(label, stage).inc()
        else:
            self._transaction(outcome, label, stage)
        self.sync_dns()

    def _transaction(self, outcome: TransactionOutcome, label: str, stage: str) -> None:
        self.transactions.labels(label, stage).inc()
        for result in outcome.results:
            self.results.labels(result.method, result.value.value).inc()
        for method, seconds in outcome.check_times:
            self.check_seconds.labels(method).observe(seconds)
        if outcome.relay_time > 0:
            self.relay_seconds.observe(outcome.relay_time)
        if outcome.forged:
            self.forged.inc(len(outcome.forged))
        if outcome.decided_by is Decider.POLICY and not outcome.reply.is_success:
            self.policy_rejections.labels(outcome.reply.enhanced or str(outcome.reply.code)).inc()

    def sync_dns(self) -> None:
        """Add what the resolver counted since the last call (counters only grow)."""
        resolver = self._resolver
        if resolver is None:
            return
        now = (resolver.queries_sent, resolver.lookups, resolver.cache_hits)
        queries, lookups, hits = (a - b for a, b in zip(now, self._dns_seen, strict=True))
        self._dns_seen = now
        for counter, delta in (
            (self.dns_queries, queries),
            (self.dns_lookups, lookups),
            (self.dns_cache_hits, hits),
        ):
            if delta > 0:
                counter.inc(delta)


class Endpoint:
    """The HTTP endpoint serving /metrics in a thread of its own; `close` stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5.0)


def serve_endpoint(address: HostPort, metrics: Metrics | None, multiprocess: bool) -> Endpoint:
    """Serve `metrics` (or, `multiprocess`, the sum of every process's files: then
    `metrics` may be None, as in the supervisor, which counts nothing itself) on
    `address`. Raises OSError when the address cannot be bound."""
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

    if metrics is None and not multiprocess:
        raise ValueError("nothing to serve: no metrics and not multiprocess")
    registry = metrics.registry if metrics is not None else CollectorRegistry()
    if multiprocess:
        from prometheus_client import multiprocess as mp  # noqa: PLC0415

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, thread = start_http_server(address.port, addr=address.host, registry=registry)
    return Endpoint(server, thread)


def attach_worker(config: MetricsConfig, pipeline: Pipeline) -> Metrics | None:
    """A supervised worker's metrics: counted into the multiprocess directory the
    supervisor chose before forking (inherited in the environment and in
    prometheus-client's value class), never served here; None without `listen`."""
    if config.listen is None:
        return None
    metrics = Metrics()
    metrics.attach(pipeline)
    return metrics


def start(config: MetricsConfig, pipeline: Pipeline) -> Endpoint | None:
    """What `service.serve` runs: nothing when `config.listen` is unset (no endpoint,
    nothing counted), else this process's metrics attached to `pipeline` and served.

    In multiprocess mode (`multiprocess_dir`, or PROMETHEUS_MULTIPROC_DIR) this single
    process owns the directory, emptied first; a supervisor of several workers calls
    `use_multiprocess_dir` and `clear_multiprocess_dir` before forking and serves with
    `serve_endpoint` itself, its workers only making `Metrics` and attaching them.
    Raises OSError when the address cannot be bound.
    """
    if config.listen is None:
        return None
    directory = use_multiprocess_dir(config.multiprocess_dir)
    if directory is not None:
        clear_multiprocess_dir(directory)
    metrics = Metrics()
    metrics.attach(pipeline)
    return serve_endpoint(config.listen, metrics, multiprocess=directory is not None)
