"""Pure parts of the reload and the Redis state: `config.for_reload`, `[state]`
parsing, the rate-limited outage line and the Redis key of a client."""

from __future__ import annotations

import logging

import pytest

from arproxy.config import ConfigError, for_reload, parse_config
from arproxy.redisstate import RateLimitedLog, client_text

BASE = '[server]\nlisten = "127.0.0.1:2525"\nhostname = "mx.example.com"\nworkers = 2\n'


def test_for_reload_keeps_restart_keys_and_names_them() -> None:
    old = parse_config(BASE + '[domains]\nlocal = ["a.example"]\n', "old")
    new = parse_config(
        BASE.replace("2525", "2526").replace("workers = 2", "workers = 3")
        + '[domains]\nlocal = ["b.example"]\n[dns]\ntimeout = 4.0\n'
        + '[state]\nredis_url = "redis://127.0.0.1:6379/0"\n',
        "new",
    )
    effective, restart = for_reload(old, new)
    assert restart == ["server.listen", "server.workers", "dns", "state"]
    assert effective.server.listen == old.server.listen
    assert effective.server.workers == 2
    assert effective.dns == old.dns and effective.state == old.state
    assert effective.domains.local == ("b.example",)  # applies to new sessions


def test_for_reload_of_the_same_file_changes_nothing() -> None:
    config = parse_config(BASE, "same")
    assert for_reload(config, parse_config(BASE, "same")) == (config, [])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('redis_url = "http://x"', "[state] redis_url: 'http://x': use redis://"),
        ('key_prefix = "a b"', "[state] key_prefix: 'a b' must be printable"),
        ("timeout = 0", "[state] timeout: 0 is below the minimum"),
        ("session_ttl = 1", "[state] session_ttl: 1 is below the minimum"),
        ("colour = 1", "[state] colour: unknown option"),
    ],
)
def test_state_errors_are_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"[state]\n{text}\n", "t.toml")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_state_defaults_are_in_process() -> None:
    state = parse_config("", "t.toml").state
    assert (state.redis_url, state.key_prefix, state.timeout, state.session_ttl) == (
        None,
        "arproxy:",
        0.5,
        60.0,
    )


def test_outage_lines_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    down = RateLimitedLog(every=60.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "arproxy.state")
    assert down.warning("down: %s", "x")
    for second in range(1, 60):
        now[0] = float(second)
        assert not down.warning("down: %s", "x")
    now[0] = 60.0
    assert down.warning("down: %s", "y")
    assert [r.getMessage() for r in caplog.records] == [
        "down: x",
        "down: y (59 more since the last line)",
    ]


def test_one_condition_never_silences_another(caplog: pytest.LogCaptureFixture) -> None:
    """The flaky redis-down test's cause: a lease's release failing just as Redis went
    down took the one line allowed, and "admitting connections uncounted" was never
    logged. Each message format is limited on its own."""
    now = [0.0]
    down = RateLimitedLog(every=60.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, "arproxy.state")
    assert down.warning("state: a session lease is left to expire: %s", "reset")
    now[0] = 0.5
    assert down.warning("state: admitting connections uncounted: %s", "refused")
    assert not down.warning("state: admitting connections uncounted: %s", "refused")
    now[0] = 61.0
    assert down.warning("state: admitting connections uncounted: %s", "refused")
    assert [r.getMessage() for r in caplog.records] == [
        "state: a session lease is left to expire: reset",
        "state: admitting connections uncounted: refused",
        "state: admitting connections uncounted: refused (1 more since the last line)",
    ]


def test_client_keys_follow_the_limiter() -> None:
    assert client_text("192.0.2.1") == "192.0.2.1"
    assert client_text("::ffff:192.0.2.1") == "192.0.2.1"  # RFC 4291 section 2.5.5.2
    assert client_text("2001:db8::1") == client_text("2001:db8::ffff") == "2001:db8::/64"
    name = client_text("unix:/run/x\r\nSET")
    assert name.startswith("name:") and len(name) == 5 + 64
