"""The worker's resources: built inside the loop from the configuration, passed down to
the checks and the authenticator, released by `close`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from arproxy.checks.base import CheckContext, Stage
from arproxy.checks.runner import configured_checks
from arproxy.config import ConfigError, HostPort, parse_config
from arproxy.dns import Resolver
from arproxy.resources import WorkerResources
from arproxy.smtpauth import Authenticator
from arproxy.users import UsersFile, set_password

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def test_pool_sizes_default_to_the_former_fixed_sizes() -> None:
    config = parse_config("", "t.toml")
    assert (config.checks.spf_threads, config.checks.dkim_threads) == (32, 4)
    assert config.auth.hash_threads == 4


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[checks]\nspf_threads = 0", r"\[checks\] spf_threads: 0 is below"),
        ("[checks]\ndkim_threads = 0", r"\[checks\] dkim_threads: 0 is below"),
        ("[auth]\nhash_threads = 0", r"\[auth\] hash_threads: 0 is below"),
        ("[checks]\nspf_threads = 5000", r"\[checks\] spf_threads: 5000 is above"),
    ],
)
def test_pool_sizes_are_validated(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text, "t.toml")


def test_build_needs_the_running_loop() -> None:
    with pytest.raises(RuntimeError):
        WorkerResources.build(parse_config("", "t.toml"))


def test_build_sizes_the_pools_from_the_config_and_close_releases_them() -> None:
    config = parse_config(
        "[checks]\nspf_threads = 3\ndkim_threads = 2\n[auth]\nhash_threads = 1\nmax_failures = 7",
        "t.toml",
    )

    async def go() -> WorkerResources:
        resources = WorkerResources.build(config)
        await resources.close()
        return resources

    resources = asyncio.run(go())
    assert resources.spf_pool._max_workers == 3
    assert resources.dkim_pool._max_workers == 2
    assert resources.hash_pool._max_workers == 1
    assert resources.auth_limiter._max_failures == 7
    with pytest.raises(RuntimeError):  # shut down: refuses new work
        resources.spf_pool.submit(print)


def test_checks_run_in_the_workers_pools() -> None:
    """The runner binds the worker's pools into the checks: SPF evaluates in spf_pool's
    threads (a name no check can reach without a resolver answering: port 9 is closed)."""
    config = parse_config("[dns]\ntimeout = 0.1", "t.toml")
    seen: list[str] = []

    async def go() -> None:
        resolver = Resolver([HostPort("127.0.0.1", 9)], timeout=0.1)
        resources = WorkerResources.build(config, resolver=resolver)
        original = resources.spf_pool.submit

        def submit(fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(getattr(fn, "__name__", repr(fn)))
            return original(fn, *args, **kwargs)

        resources.spf_pool.submit = submit  # type: ignore[method-assign]
        by_stage = {c.stage: c for c in configured_checks(config.checks, resources)}
        ctx = CheckContext(client_ip="192.0.2.1", helo="mail.example.org")
        try:
            await by_stage[Stage.HELO].run(ctx, resources.resolver)
        finally:
            await resources.close()

    asyncio.run(go())
    assert seen == ["evaluate_blocking"]


def test_authenticator_hashes_in_the_given_pool(tmp_path: Path) -> None:
    path = tmp_path / "users"
    set_password(path, "alice", "secret", hasher=CHEAP)
    threads: list[str] = []

    async def go() -> bool:
        resources = WorkerResources.build(parse_config("", "t.toml"))
        original = resources.hash_pool.submit

        def submit(fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            threads.append("submitted")
            return original(fn, *args, **kwargs)

        resources.hash_pool.submit = submit  # type: ignore[method-assign]
        auth = Authenticator(UsersFile.load(path), resources.auth_limiter, resources.hash_pool)
        try:
            outcome = await auth.authenticate("192.0.2.1", b"alice", b"secret")
        finally:
            await resources.close()
        return outcome.success

    assert asyncio.run(go())
    assert threads == ["submitted"]
