"""What one worker process owns: thread pools, the resolver, its cache and memo, the AUTH limiter.

Nothing in arproxy is created at import time: `WorkerResources.build` makes these objects
inside the running event loop (the resolver belongs to that loop), `serve` passes them
down (pipeline, runner, checks, authenticator), and `close` releases them at shutdown.
`arproxy check` and the benchmarks build the same object, so they run what the server runs.

State: per worker or shared
---------------------------
With N worker processes (and M instances behind a load balancer), each piece of state is
either private to one worker or must be the same for all of them. The table is also in
README.md ("State: per worker, shared").

=========================  ==========================  ==========  ==============================
State                      Lives in                    Scope       Why
=========================  ==========================  ==========  ==============================
DNS cache, in-flight       `resources.resolver`        per worker  a cache: a miss costs one
queries                    (dns.Resolver)                          query, never a wrong answer
SPF evaluation memo        `resources.resolver.memo`   per worker  valid only while the DNS cache
                           (dns.AnswerMemo)                        holds each answer it read
SPF / DKIM / argon2        `resources.spf_pool`,       per worker  CPU and threads are the
thread pools               `dkim_pool`, `hash_pool`                process's own
AUTH failure limiter       `resources.auth_limiter`    SHARED by   per worker, a guesser would
                           (shared.SharedAuthLimiter   the workers get N x max_failures tries;
                           with several workers)                   Redis across instances
per-IP connection counts   admission.SessionRegistry   SHARED by   per worker, one client would
                           + shared.WorkerShare        the workers get N x max_connections_per_ip
total connection count     server.SessionRegistry      per worker  protects this process's
                                                                   memory and descriptors
TLS context, users file    service (reloaded by each   per worker  read-only copies of files;
                           worker on SIGHUP)                       each worker reloads its own
queue-id generator         pipeline.new_queue_id       per worker  80 random bits: unique
                           (secrets, no state)                     without coordination
Maildir sequence           relay.MaildirRelay          per worker  the file name holds the pid
metrics                    metrics.Metrics (service)   per worker  each process writes its own;
                                                                   multiprocess_dir sums them
=========================  ==========================  ==========  ==============================

The two shared rows live in memory the supervisor maps before forking (arproxy.shared);
with `[state] redis_url` they live in Redis instead, shared by every instance
(arproxy.redisstate, `state` below).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from arproxy.config import Config
from arproxy.dns import Resolver
from arproxy.ratelimit import AsyncFailureLimiter, AuthFailureLimiter, FailureLimiter
from arproxy.redisstate import RedisState


@dataclass(frozen=True)
class WorkerResources:
    """The long-lived objects of one worker process; see the module docstring's table.

    `spf_pool` runs pyspf evaluations (blocking, DNS-bound: `checks.spf_threads`),
    `dkim_pool` DKIM hashing and RSA (CPU: `checks.dkim_threads`), `hash_pool` argon2
    password checks (CPU and 64 MiB each: `auth.hash_threads`). A pool starts its
    threads on first use, so a pool nobody uses costs nothing.
    """

    resolver: Resolver
    spf_pool: ThreadPoolExecutor
    dkim_pool: ThreadPoolExecutor
    hash_pool: ThreadPoolExecutor
    auth_limiter: FailureLimiter | AsyncFailureLimiter
    state: RedisState | None = None  # `[state] redis_url`: the state shared across instances

    @classmethod
    def build(
        cls,
        config: Config,
        *,
        resolver: Resolver | None = None,
        auth_limiter: FailureLimiter | None = None,
    ) -> WorkerResources:
        """Make the worker's resources; call inside the running event loop.

        `resolver` replaces the one `config.dns` describes (tests, `arproxy check
        --nameserver`); `auth_limiter` the in-process one (the limiter the workers of
        one instance share, arproxy.shared). With `state.redis_url`, the Redis client
        (arproxy.redisstate; it connects on first use) and its limiter replace both.
        Raises RuntimeError outside a running loop.
        """
        asyncio.get_running_loop()  # the resolver is bound to the loop that builds it
        state = None
        if config.state.redis_url is not None:
            state = RedisState.build(config.state, config.auth.max_failures)
        return cls(
            resolver=resolver or Resolver.from_config(config.dns),
            spf_pool=ThreadPoolExecutor(config.checks.spf_threads, "arproxy-spf"),
            dkim_pool=ThreadPoolExecutor(config.checks.dkim_threads, "arproxy-dkim"),
            hash_pool=ThreadPoolExecutor(config.auth.hash_threads, "arproxy-argon2"),
            auth_limiter=(
                state.auth_limiter()
                if state is not None
                else auth_limiter or AuthFailureLimiter(max_failures=config.auth.max_failures)
            ),
            state=state,
        )

    async def close(self) -> None:
        """Release everything: queued pool work is cancelled, the resolver closed.

        Running pool work is not waited for: a pyspf evaluation whose loop is gone ends
        at its next query (checks.spf.bridge), a hash or DKIM verification within
        seconds, and nobody awaits their results any more.
        """
        for pool in (self.spf_pool, self.dkim_pool, self.hash_pool):
            pool.shutdown(wait=False, cancel_futures=True)
        await self.resolver.close()
        if self.state is not None:
            await self.state.close()
