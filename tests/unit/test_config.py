from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from arproxy.config import ConfigError, HostPort, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_is_valid_and_equals_the_embedded_default() -> None:
    shipped = load_config(REPO / "config" / "arproxy.toml")
    embedded = load_config(None)
    assert shipped.server == embedded.server
    assert shipped.relay == embedded.relay
    assert shipped.domains == embedded.domains
    assert shipped.server.listen == HostPort("127.0.0.1", 2525)
    assert shipped.relay.downstream.scheme == "maildir"
    assert shipped.relay.downstream.maildir == Path("var/maildir").absolute()


def test_downstream_forms() -> None:
    def downstream(text: str) -> str:
        return str(parse_config(f'[relay]\ndownstream = "{text}"', "t.toml").relay.downstream)

    assert downstream("smtp://127.0.0.1:2526") == "smtp://127.0.0.1:2526"
    assert downstream("lmtp://[::1]:24") == "lmtp://[::1]:24"
    assert downstream("maildir:/srv/mail") == "maildir:/srv/mail"


def test_listen_ipv6() -> None:
    config = parse_config('[server]\nlisten = "[::1]:2525"', "t.toml")
    assert config.server.listen == HostPort("::1", 2525)


def test_nameservers() -> None:
    config = parse_config('[dns]\nnameservers = ["127.0.0.1:5353", "192.0.2.1", "::1"]', "t")
    assert config.dns.nameservers == (
        HostPort("127.0.0.1", 5353),
        HostPort("192.0.2.1", 53),
        HostPort("::1", 53),
    )


def test_trusted_ids_normalised() -> None:
    config = parse_config('[headers]\ntrusted_authserv_ids = [".Example.COM", "mx.test."]', "t")
    assert config.headers.trusted_authserv_ids == (".example.com", "mx.test")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[relay]\ndownstream = "http://x:1"',
            "t.toml: [relay] downstream: 'http://x:1': use smtp://host:port",
        ),
        ('[relay]\ndownstream = "smtp://x"', "t.toml: [relay] downstream: 'smtp://x': a port"),
        ('[server]\nlisten = "127.0.0.1:99999"', "[server] listen: '127.0.0.1:99999': port"),
        (
            '[server]\nadvertise_authserv = "sometimes"',
            "[server] advertise_authserv: 'sometimes' is not one of 'always', 'never'",
        ),
        ('[server]\nauthserv_id = "exa mple"', "[server] authserv_id: 'exa mple' is not a domain"),
        ("[dns]\ntimeout = true", "[dns] timeout: must be a number, not bool True"),
        ("[dns]\ntimeout = -1", "[dns] timeout: -1 is below the minimum"),
        ('[dns]\nnameservers = ["resolver"]', "[dns] nameservers: 'resolver' is not"),
        ("[headers]\ntrusted_authserv_id = []", "[headers] trusted_authserv_id: unknown option"),
        ('[headers]\nforged = "keep"', "[headers] forged: 'keep' is not one of"),
        ('[sever]\nlisten = "x:1"', "t.toml: sever: unknown option"),
        ("server = 1", "t.toml: server: must be a table"),
        ("[server\n", "t.toml: not valid TOML"),
        ("[limits]\nmax_recipients = 0", "[limits] max_recipients: 0 is below the minimum 1"),
    ],
)
def test_errors_name_file_key_and_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "t.toml")
    assert message in str(caught.value)


def test_check_config_command_reports_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[relay]\ndownstream = "ftp://x:1"\n')
    result = subprocess.run(
        [sys.executable, "-m", "arproxy", "check-config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"arproxy: configuration error: {bad}: [relay] downstream: 'ftp://x:1': "
        "use smtp://host:port, lmtp://host:port or maildir:PATH"
    ]
    good = subprocess.run(
        [sys.executable, "-m", "arproxy", "check-config", str(REPO / "config" / "arproxy.toml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0
    assert "OK" in good.stdout


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_per_address_limit_has_headroom_over_a_sending_postfix() -> None:
    # Postfix sends up to default_destination_concurrency_limit = 20 sessions to one
    # destination (plus idle cached ones) and allows 50 per client as an MX
    # (smtpd_client_connection_count_limit): the default must not refuse it.
    limits = parse_config("", "t").limits
    assert limits.max_connections_per_ip == 50
    assert load_config(REPO / "config" / "arproxy.toml").limits == limits


def test_max_line_length() -> None:
    # RFC 5321 section 4.5.3.1.6: 998 octets of text, the default and the minimum.
    assert parse_config("", "t").limits.max_line_length == 998
    assert parse_config("[limits]\nmax_line_length = 2048", "t").limits.max_line_length == 2048
    for bad, words in (("997", "below the minimum 998"), ("100001", "above the maximum")):
        with pytest.raises(ConfigError, match=words):
            parse_config(f"[limits]\nmax_line_length = {bad}", "t")


def test_workers_default_to_the_usable_cores() -> None:
    """server.workers: default and "auto" are the cores this process may run on (its
    affinity mask), 1 serves in-process; anything else is one clear error."""
    cores = len(os.sched_getaffinity(0))
    assert parse_config("", "t").server.workers == cores
    assert parse_config('[server]\nworkers = "auto"', "t").server.workers == cores
    assert parse_config("[server]\nworkers = 1", "t").server.workers == 1
    assert parse_config("[server]\nworkers = 7", "t").server.workers == 7
    for bad, problem in (
        ("0", "0 is below the minimum 1"),
        ("257", "257 is above the maximum 256"),
        ('"many"', """must be an integer or "auto", not 'many'"""),
        ("2.5", 'must be an integer or "auto", not 2.5'),
        ("true", 'must be an integer or "auto", not True'),
    ):
        with pytest.raises(ConfigError, match=f"t: \\[server\\] workers: {re.escape(problem)}"):
            parse_config(f"[server]\nworkers = {bad}", "t")
